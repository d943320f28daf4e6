"""Per-host baselines learn in the shipped collector: a real ``tocsin-collector``
process, a week of a file server replayed into it in compressed time with
``tocsin replay``, then the next day: the host's own model is stored in
``host_baselines`` and scores the windows that follow."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.transport_procs import CollectorProc, free_port, wait_for
from tests.transport_procs import replay as replay_as
from tocsin.collector.features import window_features
from tocsin.collector.model import parse_arrays
from tocsin.collector.score import ForestScorer
from tocsin.collector.store import unpack_raw
from tocsin.v1 import telemetry_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
HOST = "mairie-fichiers"


def corpus(out: Path, seed: int, windows: int, days: float, start_day: float) -> Path:
    """A recording made by the project's generator (tools/benign_corpus.py)."""
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "benign_corpus.py"),
            f"--seed={seed}",
            f"--windows={windows}",
            f"--days={days}",
            f"--start-day={start_day}",
            f"--out={out}",
        ],
        check=True,
        capture_output=True,
    )
    return out


def replay(recording: Path, listen: str) -> str:
    return replay_as(recording, listen, HOST)


def rows(db: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # table not there (yet)
    finally:
        con.close()


def test_a_replayed_week_teaches_the_host_its_own_baseline(tmp_path: Path) -> None:
    week = corpus(tmp_path / "week.jsonl", seed=1, windows=1400, days=7, start_day=0)
    # The morning after, before the daily refit (due a day after the first fit).
    next_day = corpus(tmp_path / "day8.jsonl", seed=2, windows=200, days=0.4, start_day=7)
    config = tmp_path / "collector.toml"
    # tocsin replay dates the week's first window now, so the rest is up to a week ahead
    # of the collector's clock: allow that skew, and keep every window.
    config.write_text(
        "insecure = true\nbaseline_learning_days = 6.5\nretention_days = 36500\n"
        "max_clock_skew_s = 864000\n"
    )
    db = tmp_path / "collector.db"
    proc = CollectorProc(
        db, tmp_path / "collector.log", f"127.0.0.1:{free_port()}", ["--config", str(config)]
    )
    listen = proc.start()
    try:
        assert "learns its own after 6.5 days" in proc.text()
        assert "windows sent 1400, acked 1400" in replay(week, listen)
        learned = wait_for(
            "the host's own baseline in host_baselines",
            lambda: rows(db, "SELECT card, arrays FROM host_baselines WHERE host_id=?", (HOST,)),
            timeout_s=60,
        )
        assert f"host {HOST} now scored with its own baseline" in proc.text()
        assert "windows sent 200, acked 200" in replay(next_day, listen)
        wait_for(
            "the next day judged",
            lambda: (
                rows(
                    db,
                    "SELECT COUNT(*) FROM windows WHERE boot_id='synthetic-seed-2' AND judged=1",
                )
                == [(200,)]
            ),
        )
    finally:
        assert proc.stop() == 0, proc.text()[-3000:]

    (card_text, blob), *_ = learned
    card = json.loads(str(card_text))
    # Learned from the host's first six and a half days, not from the shipped training set.
    assert card["host_id"] == HOST and 500 <= card["training"]["windows"] <= 1400
    own = ForestScorer(parse_arrays(bytes(blob), int(card["max_samples"]), HOST), card)  # type: ignore[arg-type]
    shipped = ForestScorer.load()
    stored = rows(
        db,
        "SELECT raw, codec, score FROM windows WHERE boot_id='synthetic-seed-2' ORDER BY seq",
    )
    windows = [pb.Window.FromString(unpack_raw(bytes(r), int(c))) for r, c, _ in stored]  # type: ignore[arg-type]
    X = np.vstack([window_features(w) for w in windows])
    scores = np.asarray([s for _, _, s in stored], dtype=np.float64)
    # The day after the learning period is scored with the host's own model ...
    np.testing.assert_allclose(scores, own.score(X), rtol=0, atol=1e-9)
    # ... which is not the shipped one.
    assert np.abs(scores - shipped.score(X)).max() > 0.01
