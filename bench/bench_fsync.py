"""How long a SQLite commit takes on this disk, as the collector commits (WAL, synchronous=FULL).

Why an attack window is judged while it commits (docs/design.md): the commit's fsync is
usually under a millisecond, but a shared or busy disk stretches some to hundreds. Run it
beside the workload you care about: ``python bench/bench_fsync.py --seconds 20``.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--every-ms", type=float, default=10.0, help="pause between commits")
    ap.add_argument("--dir", default=None, help="directory on the disk to measure")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        con = sqlite3.connect(Path(tmp) / "fsync.db", isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t(x BLOB)")
        took: list[float] = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t VALUES (randomblob(400))")
            con.execute("COMMIT")
            took.append(time.perf_counter() - t0)
            time.sleep(args.every_ms / 1000.0)
        con.close()
    took.sort()
    n = len(took)
    print(
        f"{n} commits: p50 {took[n // 2] * 1e3:.1f} ms, p99 {took[int(n * 0.99)] * 1e3:.1f} ms,"
        f" max {took[-1] * 1e3:.1f} ms, over 100 ms: {sum(t > 0.1 for t in took)}"
    )


if __name__ == "__main__":
    main()
