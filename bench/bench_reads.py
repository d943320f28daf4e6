"""How many inotify events one read of the agent's watcher takes in a storm.

A ``FileWatcher`` (the agent's, with its read batching) watches a scratch
directory while ``bench_agent.STORM`` (the storm of ``make bench-agent``: create,
write, close, and delete the file written 100 cycles before, ~4 kernel events a
cycle) runs at ``--rate`` events per second; watchdog's read call is counted.

Usage: python bench/bench_reads.py [--rate N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench_agent import STORM

from tocsin.agent.watch import READ_BATCH_S, FileWatcher, _watchdog_method


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=5000.0, help="file events per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="tocsin-reads-")
    watcher = FileWatcher([work])
    watcher.start()
    try:
        found = _watchdog_method((("InotifyFD", "read_events"), ("Inotify", "read_events")))
        if found is None:
            print("this watchdog version has no read call to count")
            return 1
        cls, meth = found
        batched = getattr(cls, meth)
        counts = [0, 0]  # reads, events

        def counting(obj: object, *a: object, **kw: object) -> list[object]:
            events = batched(obj, *a, **kw)
            counts[0] += 1
            counts[1] += len(events)
            return events

        setattr(cls, meth, counting)
        time.sleep(0.5)
        counts[:] = [0, 0]
        # The storm of make bench-agent, as a process of its own.
        storm = [sys.executable, "-c", STORM, os.path.join(work, "storm")]
        subprocess.run([*storm, str(args.rate), str(args.seconds)], check=True, capture_output=True)
        time.sleep(0.3)
        reads, events = counts
        print(
            f"storm {args.rate:.0f} events/s for {args.seconds:.0f} s, READ_BATCH_S "
            f"{READ_BATCH_S * 1000:.0f} ms: {reads} reads, {events} kernel events, "
            f"{events / max(reads, 1):.1f} events per read"
        )
        return 0
    finally:
        watcher.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
