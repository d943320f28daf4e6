"""Retention: hourly rollups, pruning in bounded batches, the old layout moved, the disk watched."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver import WebhookReceiver
from tocsin.collector.db import Database
from tocsin.collector.features import window_tally
from tocsin.collector.housekeeping import DAY_S, Housekeeper, RetentionConfig
from tocsin.collector.outbox import Outbox
from tocsin.collector.store import (
    AlertRecord,
    SqliteStore,
    Store,
    StoredWindow,
    WindowTally,
    hour_of,
)
from tocsin.collector.webhook import MemoryWebhookSink
from tocsin.v1 import telemetry_pb2 as pb

BIN = Path(sys.executable).parent
T0 = 1_700_000_000.0  # 22:13:20 UTC


def stored(seq: int, end_s: float, **fields: int) -> StoredWindow:
    w = pb.Window(seq=seq, **fields)
    return StoredWindow(seq, end_s - 1.0, end_s, w.SerializeToString(), window_tally(w))


def test_rollups_add_up_counts_evidence_and_the_highest_score(store: Store) -> None:
    store.upsert_host("h1", hostname="", agent_version="", tripwire_mode="")
    hour = hour_of(T0)
    store.add_windows(
        "h1",
        "b1",
        [
            stored(1, T0, files_created=3, files_modified=2, bytes_written=100),
            stored(2, T0 + 1, files_type_destroyed=7, encrypted_twins=2, canary_touches=1),
            stored(3, hour + 3600 + 5, files_deleted=4, events_dropped=5, queue_overflows=1),
        ],
    )
    store.add_windows("h1", "b1", [stored(2, T0 + 1, files_created=99)])  # a resend adds nothing
    store.mark_judged("h1", "b1", 2, 0.7)
    store.mark_judged("h1", "b1", 1, 0.4)
    first, second = store.rollups("h1", T0 - 7200, T0 + 7200)
    assert (first.hour_s, first.windows, first.max_score) == (hour, 2, 0.7)
    assert first.tally == WindowTally(
        files_written=5, files_destroyed=9, canary_touches=1, bytes_written=100
    )
    assert (second.hour_s, second.windows, second.max_score) == (hour + 3600, 1, None)
    assert second.tally == WindowTally(files_deleted=4, events_dropped=6)
    assert store.rollups("other", T0 - 7200, T0 + 7200) == []
    host = store.get_host("h1")
    assert host is not None and host.windows == 3


def test_prune_takes_old_windows_in_bounded_batches_and_keeps_the_rest(store: Store) -> None:
    store.upsert_host("h1", hostname="", agent_version="", tripwire_mode="")
    old = [stored(i, T0 - 40 * DAY_S + i) for i in range(1, 26)]
    new = [stored(100 + i, T0 + i) for i in range(10)]
    store.add_windows("h1", "b1", old + new)
    alert = AlertRecord("a1", "h1", "i1", "critical", 1.0, T0 - 40 * DAY_S, 0, 0, [], None, {})
    store.save_alert(alert)
    cutoff = T0 - 30 * DAY_S
    batches = []
    while gone := store.prune(cutoff, T0 - 400 * DAY_S, batch=10):
        batches.append(gone)
    assert batches == [10, 10, 5]
    # What is left: the recent windows (resends of them still dedupe) and every alert.
    assert store.committed_seq("h1", "b1") == 109
    assert store.add_windows("h1", "b1", [new[0]]) == [False]
    assert [a.alert_id for a in store.list_alerts("h1")] == ["a1"]
    # Rollups outlive the raw windows until their own cutoff.
    assert sum(r.windows for r in store.rollups("h1", T0 - 41 * DAY_S, T0 + 3600)) == 35
    assert store.prune(cutoff, T0, batch=10) == 2  # the two hours' rollups
    assert store.rollups("h1", T0 - 41 * DAY_S, T0 - DAY_S) == []


def test_a_database_of_the_one_table_layout_is_moved_over(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE windows (host_id TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        ' start REAL, "end" REAL, score REAL, features TEXT, raw BLOB,'
        " UNIQUE(host_id, boot_id, seq));"
    )
    db.executemany(
        "INSERT INTO windows VALUES (?,?,?,?,?,?,?,?)",
        [("h1", "b1", s, T0 + s, T0 + s + 1, 0.1 * s, "[0.0]", b"\x08\x01") for s in (1, 2, 3)]
        + [("h2", "b9", 7, T0, T0 + 1, None, "[0.0]", b"")],
    )
    db.commit()
    db.close()
    s = SqliteStore.open(path)
    assert s.committed_seq("h1", "b1") == 3 and s.committed_seq("h2", "b9") == 7
    assert s.add_windows("h1", "b1", [stored(3, T0 + 4)]) == [False]
    (roll,) = s.rollups("h1", T0 - 3600, T0 + 3600)
    assert roll.windows == 3 and roll.max_score == pytest.approx(0.3)
    s.close()
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "windows_legacy" not in tables and "window_rows" in tables
    cols = [r[1] for r in db.execute("PRAGMA table_info(window_rows)")]
    assert "features" not in cols
    # Readers still find windows by host and boot through the view.
    assert db.execute("SELECT COUNT(*) FROM windows WHERE host_id='h1'").fetchone()[0] == 3
    db.close()


def test_bytes_per_window_at_least_halved_against_the_one_table_layout(tmp_path: Path) -> None:
    """Same windows, same SQLite settings; the earlier layout stored features as JSON text."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_store import bytes_per_window, quiet_windows, recorded_windows

    fixtures = Path(__file__).resolve().parent / "fixtures"
    for windows in (
        quiet_windows(3000),
        recorded_windows(sorted(fixtures.glob("office-saves*.jsonl")), 3000),
        recorded_windows(sorted(fixtures.glob("backup-*.jsonl")), 3000),
    ):
        old = bytes_per_window(windows, "one-table", tmp_path)
        new = bytes_per_window(windows, "store", tmp_path)
        print(f"[bytes per window] one-table layout {old:.0f}, now {new:.0f}")
        assert new <= old / 2


def test_housekeeper_prunes_the_outbox_and_warns_once_per_crossing(tmp_path: Path) -> None:
    now = [T0]
    used = [0.5]
    db = Database(tmp_path / "c.db")
    store = SqliteStore(db)
    store.upsert_host("h1", hostname="", agent_version="", tripwire_mode="")
    store.add_windows("h1", "b1", [stored(i, T0 - 31 * DAY_S + i) for i in range(1, 6)])
    store.add_windows("h1", "b1", [stored(9, T0)])
    sink = MemoryWebhookSink()

    def usage(path: Path) -> tuple[int, int]:
        return 1000, int(1000 * (1 - used[0]))

    async def go() -> None:
        outbox = Outbox(db, [], clock=lambda: now[0])
        hk = Housekeeper(
            store,
            tmp_path / "c.db",
            outbox,
            sink,
            RetentionConfig(batch_rows=2, pause_s=0.0),
            clock=lambda: now[0],
            usage=usage,
            collector_name="collector-1",
        )
        assert await hk.prune_once() == 5
        assert store.committed_seq("h1", "b1") == 9
        await hk.check_disk()
        assert sink.events == []
        used[0] = 0.85
        await hk.check_disk()
        await hk.check_disk()  # still high: no second event
        used[0] = 0.79  # inside the re-arm band: still no new event when it rises again
        await hk.check_disk()
        used[0] = 0.9
        await hk.check_disk()
        used[0] = 0.5
        await hk.check_disk()
        used[0] = 0.95
        await hk.check_disk()
        outbox.close()

    asyncio.run(go())
    kinds = [e["event"] for e in sink.events]
    assert kinds == ["disk_high", "disk_high"]
    first = sink.events[0]
    assert first["host_id"] == "collector-1" and first["severity"] == "warning"
    assert first["reasons"] == ["disk_high:85%"] and "85 % full" in first["summary"]
    store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, 85 % filled: the collector's disk."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root to mount a tmpfs")
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "filler").write_bytes(b"\0" * int(4 * 1024 * 1024 * 0.85))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_collector_on_a_nearly_full_disk_says_so_before_refusing(small_disk: Path) -> None:
    with WebhookReceiver() as receiver:
        log = small_disk.parent / "collector.log"
        proc = subprocess.Popen(
            [
                str(BIN / "tocsin-collector"),
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(small_disk / "c.db"),
                "--insecure",
                "--webhook",
                receiver.url,
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            end = time.monotonic() + 30
            while not receiver.of("disk_high") and time.monotonic() < end:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            (event,) = receiver.of("disk_high")
            assert event["severity"] == "warning" and event["disk_used_percent"] >= 80
            text = log.read_text()
            assert re.search(r"disk \(.*\) is \d+ % full", text), text
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


def test_a_window_claiming_absurd_counts_cannot_fail_the_batch(store: Store) -> None:
    """A rogue agent's uint64 maxima: stored and counted (held), the other host's window too."""
    from tocsin.collector.features import MAX_TALLY

    huge = stored(1, T0, bytes_written=2**64 - 1, files_deleted=2**32 - 1)
    assert store.add_windows("rogue", "b1", [huge]) == [True]
    assert store.add_windows("rogue", "b1", [stored(2, T0 + 1, bytes_written=2**64 - 1)]) == [True]
    assert store.add_windows("fs1", "b1", [stored(1, T0)]) == [True]
    (roll,) = store.rollups("rogue", T0 - 3600, T0 + 3600)
    assert roll.tally.bytes_written == 2 * MAX_TALLY and roll.windows == 2
