"""fanotify vs psutil attribution: time to name a writer, and CPU per collect.

A writer process closes one small file every 20 ms in a tmp tree; each
method's ``Attributor.collect`` is called every ``--every-s`` (1 s, the
window) for ``--seconds``. Prints, per method: seconds from the writer's start
to the first collect naming its pid,
how many collects named it, and CPU seconds the attributing process spent per
collect (threads included). Root is needed for fanotify.
Usage: python bench/bench_attribution.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import psutil

from tocsin.agent.attribute import Attributor

WRITER = (
    "import os,sys,time\n"
    "i=0\n"
    "while True:\n"
    "    open(os.path.join(sys.argv[1], f'f{i % 50}.txt'), 'w').write('x' * 4096); i += 1\n"
    "    time.sleep(0.02)\n"
)


def run(method: str, seconds: float, every_s: float) -> str:
    with tempfile.TemporaryDirectory(prefix="tocsin-attr-") as d:
        a = Attributor([d], use_fanotify=(method == "fanotify"))
        if a.method != method:
            return f"{method:10} unavailable here (got {a.method})"
        a.start()
        me = psutil.Process()
        a.collect()
        cpu0 = sum(me.cpu_times()[:2])
        t0 = time.monotonic()
        w = subprocess.Popen([sys.executable, "-c", WRITER, d], cwd=d)
        first = None
        named = calls = 0
        try:
            while time.monotonic() - t0 < seconds:
                time.sleep(every_s)
                got = a.collect()
                calls += 1
                if any(s.pid == w.pid for s in got):
                    named += 1
                    if first is None:
                        first = time.monotonic() - t0
        finally:
            w.kill()
            w.wait()
            a.stop()
        cpu = sum(me.cpu_times()[:2]) - cpu0
        first_s = f"{first:.2f} s" if first is not None else "never"
        return (
            f"{method:10} first named after {first_s:>8}; named in {named}/{calls} windows; "
            f"CPU {1000 * cpu / calls:.1f} ms per window ({100 * cpu / seconds:.2f} % core)"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--every-s", type=float, default=1.0)
    args = ap.parse_args()
    print(f"{len(psutil.pids())} processes on this host, euid {os.geteuid()}")
    for m in ("fanotify", "psutil-io"):
        print(run(m, args.seconds, args.every_s), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
