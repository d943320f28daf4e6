"""A collector restart on the same database (SQLite, PostgreSQL) keeps open incidents and
learned baselines."""

from __future__ import annotations

import asyncio

from tocsin.collector.app import assemble
from tocsin.collector.backends import Storage, open_storage
from tocsin.collector.baseline import BaselineConfig, HostBaselines
from tocsin.collector.features import feature_matrix, window_features
from tocsin.collector.score import ForestScorer
from tocsin.collector.server import Collector
from tocsin.collector.store import StoredWindow
from tocsin.collector.webhook import MemoryWebhookSink
from tocsin.v1 import telemetry_pb2 as pb

T0 = 1_740_981_600


def window(seq: int, t: float, **fields: object) -> pb.Window:
    w = pb.Window(seq=seq, **fields)  # type: ignore[arg-type]
    w.start.FromNanoseconds(int(t * 1e9))
    w.end.FromNanoseconds(int((t + 1) * 1e9))
    w.top_writers.add(
        pid=4242,
        name="chiffre",
        exe="/tmp/chiffre",
        tree_root_pid=4242,
        files_touched=12,
        files_type_destroyed=12,
    )
    return w


def attack(seq: int, t: float) -> pb.Window:
    return window(
        seq,
        t,
        files_modified=12,
        files_probed=12,
        files_type_destroyed=12,
        files_high_entropy=12,
        mean_entropy=7.99,
    )


def on_file(where: str, scorer: ForestScorer) -> tuple[Collector, Storage]:
    """A collector whose store and incident book are in the database at ``where``."""
    storage = open_storage(where)
    c = assemble(storage.store, scorer, MemoryWebhookSink(), mode="dry-run", book=storage.book)
    return c, storage


async def judge_one(c: Collector, host: str, w: pb.Window) -> list[str]:
    x = window_features(w)
    c.store.add_windows(host, "boot", [StoredWindow(int(w.seq), T0, T0, w.SerializeToString())])
    return [d.kind for d in await c.stage.judge_window(host, "boot", w, x)]


def test_open_incident_is_updated_after_restart_not_duplicated(db_location: str) -> None:
    db = db_location
    scorer = ForestScorer.load()

    async def first() -> str:
        c, storage = on_file(db, scorer)
        assert await judge_one(c, "srv", attack(1, T0)) == ["open"]
        (alert,) = c.store.list_alerts("srv")
        await c.responder.drain()
        storage.close()
        return alert.incident_id

    incident = asyncio.run(first())

    async def second() -> None:
        c, storage = on_file(db, scorer)
        assert c.judge.open_incidents("srv") == [("srv", 4242)]
        assert await judge_one(c, "srv", attack(2, T0 + 5)) == ["update"]
        alerts = c.store.list_alerts("srv")
        assert [a.incident_id for a in alerts] == [incident]
        assert alerts[0].open and alerts[0].window_end_s >= T0 + 6
        # Quiet long enough: the incident closes, and stays closed after another restart.
        kinds = await judge_one(c, "srv", window(3, T0 + 400, files_created=1))
        assert kinds == ["close"]
        await c.responder.drain()
        storage.close()

    asyncio.run(second())
    again, storage = on_file(db, scorer)
    assert again.judge.open_incidents() == []
    storage.close()


def test_host_learns_its_own_baseline_and_keeps_it_across_restart(db_location: str) -> None:
    storage = open_storage(db_location)
    db, store = storage.db, storage.store
    shipped = ForestScorer.load()
    windows, wire = [], []
    for i in range(700):  # a busy host: a backup every 50 s, saves in between
        busy = i % 50 < 5
        w = window(
            i + 1,
            T0 + i,
            files_created=300 if busy else 2,
            files_probed=64 if busy else 2,
            files_high_entropy=64 if busy else 1,
            mean_entropy=7.9,
            bytes_written=80_000_000 if busy else 40_000,
        )
        wire.append(w)
        windows.append(StoredWindow(i + 1, T0 + i, T0 + i + 1, w.SerializeToString()))
    store.add_windows("srv", "boot", windows)
    cfg = BaselineConfig(learning_s=600.0, min_windows=500, trees=30, check_every_s=0.0)
    base = HostBaselines(shipped, db, cfg)
    assert base.scorer_for("srv") is shipped
    assert not base.due("srv", T0 + 300, in_incident=False)  # still learning
    assert not base.due("srv", T0 + 700, in_incident=True)  # never during an incident
    assert base.due("srv", T0 + 700, in_incident=False)
    # The minute of a critical incident is left out of what is learned.
    assert base.learn("srv", T0 + 700, skip_spans=[(T0 + 100, T0 + 160)])
    own = base.scorer_for("srv")
    assert own is not shipped and own.card["training"]["windows"] < 700
    assert own.threshold >= shipped.threshold
    backup = feature_matrix(wire[:5])
    assert (own.score(backup) <= own.threshold).all()  # its own backups are its normal
    base.close()

    reloaded = HostBaselines(shipped, db, cfg)
    again = reloaded.scorer_for("srv")
    assert again is not shipped and again.threshold == own.threshold
    assert (again.score(backup) == own.score(backup)).all()
    assert not reloaded.due("srv", T0 + 800, in_incident=False)  # refit only after a day
    reloaded.close()
    storage.close()
