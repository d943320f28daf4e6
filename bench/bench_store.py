"""Bytes on disk per stored window, and the disk a town and a syndicate need.

    python bench/bench_store.py [--windows 20000] [--retention-days 30]

Writes the same windows twice into fresh SQLite files with the collector's
settings: once in the earlier one-table layout (host and boot ids and the
features as JSON text in every row; the baseline, measured in this run) and
once through ``SqliteStore`` (a small integer per host boot, no features, an
hourly rollup row), each window then marked judged with its score as the
collector does. Three sets of windows: quiet seconds of a file server
(synthetic, a couple of saves each), the benign training corpus
(models/training, routine jobs at full activity), and the recorded benign
fixtures (tests/fixtures: windows of the real agent, with their writers and
example paths), each taken in turn up to ``--windows``. Each file is
VACUUMed before it is measured. A year of one host's hourly rollups is
measured the same way (``dbstat``). Then the disk per host-day at one
window a second (an upper bound: an agent sends a window only for a second
with activity), and for 30 days of raw windows plus a year of rollups, per
host, for a town of 20 servers and a syndicate of 3,000.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tocsin.collector.features import window_features, window_tally
from tocsin.collector.store import SqliteStore, StoredWindow
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import read_recording

ROOT = Path(__file__).resolve().parents[1]
HOST_ID = "fs-mairie-01"
BOOT_ID = "3f0c9d6e2b7a41c8a95e0d14b6f2c7e1"
T0 = 1_700_000_000

_ONE_TABLE = (
    "CREATE TABLE windows (host_id TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    ' start REAL, "end" REAL, score REAL, features TEXT, raw BLOB,'
    " UNIQUE(host_id, boot_id, seq));"
)


def quiet_windows(n: int) -> list[pb.Window]:
    """Quiet seconds of a file server: one save, a little network, as agents send them."""
    out = []
    for seq in range(1, n + 1):
        w = pb.Window(
            seq=seq,
            events_modified=2,
            files_modified=1,
            dirs_touched=1,
            extensions_touched=1,
            files_probed=1,
            bytes_probed=4096,
            mean_entropy=4.2,
            bytes_written=18_000 + seq % 700,
            net_bytes_out=3_000 + seq % 90,
        )
        w.start.FromSeconds(T0 + seq)
        w.end.FromSeconds(T0 + seq + 1)
        out.append(w)
    return out


def recorded_windows(paths: Sequence[Path], n: int) -> list[pb.Window]:
    """``n`` windows of recordings (taken in turn), renumbered as one boot's, one a second."""
    found = [m.window for path in paths for m in read_recording(path) if m.HasField("window")]
    out = []
    for i in range(1, n + 1):
        w = pb.Window()
        w.CopyFrom(found[(i - 1) % len(found)])
        w.seq = i
        w.start.FromSeconds(T0 + i)
        w.end.FromSeconds(T0 + i + 1)
        out.append(w)
    return out


def _size_after_vacuum(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("VACUUM")
    db.close()
    return os.path.getsize(path)


def bytes_per_window(windows: Sequence[pb.Window], layout: str, workdir: Path) -> float:
    """Bytes on disk per window in ``layout`` ("one-table" or "store"), empty file subtracted."""
    path = workdir / f"{layout}-{len(windows)}.db"
    empty = workdir / f"{layout}-empty.db"
    for p, ws in ((empty, []), (path, windows)):
        if p.exists():
            p.unlink()
        if layout == "one-table":
            db = sqlite3.connect(p)
            db.executescript(_ONE_TABLE)
            db.executemany(
                "INSERT INTO windows VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        HOST_ID,
                        BOOT_ID,
                        int(w.seq),
                        float(w.start.seconds),
                        float(w.end.seconds),
                        -0.4,
                        str([float(v) for v in window_features(w)]),
                        w.SerializeToString(),
                    )
                    for w in ws
                ],
            )
            db.commit()
            db.close()
        else:
            store = SqliteStore(p)
            store.add_windows(
                HOST_ID,
                BOOT_ID,
                [
                    StoredWindow(
                        int(w.seq),
                        float(w.start.seconds),
                        float(w.end.seconds),
                        w.SerializeToString(),
                        window_tally(w),
                    )
                    for w in ws
                ],
            )
            for w in ws:  # as the collector does once each window is judged
                store.mark_judged(HOST_ID, BOOT_ID, int(w.seq), -0.4)
            store.close()
    return (_size_after_vacuum(path) - _size_after_vacuum(empty)) / len(windows)


def rollup_year_bytes(workdir: Path) -> int:
    """Bytes of one host's rollups for a year (one window in each hour), from ``dbstat``."""
    path = workdir / "rollups.db"
    store = SqliteStore(path)
    for hour in range(24 * 365):
        w = quiet_windows(1)[0]
        t = float(T0 + hour * 3600)
        store.add_windows(
            HOST_ID, BOOT_ID, [StoredWindow(hour + 1, t, t + 1, b"", window_tally(w))]
        )
    store.close()
    _size_after_vacuum(path)
    db = sqlite3.connect(path)
    (size,) = db.execute("SELECT SUM(pgsize) FROM dbstat WHERE name='rollups'").fetchone()
    db.close()
    return int(size)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=20_000, help="windows per set")
    p.add_argument("--retention-days", type=float, default=30.0)
    args = p.parse_args(argv)
    fixtures = sorted((ROOT / "tests" / "fixtures").glob("*.jsonl"))
    sets = {
        "quiet seconds": quiet_windows(args.windows),
        "benign corpus": recorded_windows(
            sorted((ROOT / "models" / "training").glob("*.jsonl")), args.windows
        ),
        "benign fixtures": recorded_windows(
            [f for f in fixtures if not f.name.startswith(("encrypt-", "exfil-"))], args.windows
        ),
    }
    print(f"{'windows':<16} {'n':>7} {'one-table B':>12} {'store B':>8} {'ratio':>6}")
    per_window: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ws in sets.items():
            old = bytes_per_window(ws, "one-table", Path(tmp))
            new = bytes_per_window(ws, "store", Path(tmp))
            per_window[name] = new
            print(f"{name:<16} {len(ws):>7} {old:>12.0f} {new:>8.0f} {old / new:>6.2f}")
        rollup_year_b = rollup_year_bytes(Path(tmp))
    day = 86_400
    print(f"\none host's hourly rollups for a year: {rollup_year_b / 1e6:.2f} MB")
    print(f"\ndisk per host at one window a second ({args.retention_days:g} days raw + rollups)")
    print(f"{'windows':<16} {'MB/host-day':>12} {'GB/host':>8} {'town x20 GB':>12} {'x3000 GB':>9}")
    for name, b in per_window.items():
        host_day = b * day
        host = host_day * args.retention_days + rollup_year_b
        print(
            f"{name:<16} {host_day / 1e6:>12.1f} {host / 1e9:>8.2f}"
            f" {20 * host / 1e9:>12.1f} {3000 * host / 1e9:>9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
