"""Record telemetry fixtures: each simulated workload seen by the real agent.

For every workload in ``tocsin.agent.simulate.WORKLOADS`` (or those named),
this builds a fresh scratch share, starts a real collector (respond=off) and a
real agent with ``--record``, lets the agent settle, runs the workload as its
own process at the given rate, waits for the windows to drain, and keeps the
recording as ``OUT/<workload>.jsonl``. Loopback only.

    python tools/record_fixtures.py --out tests/fixtures [--rate 200] [--files 600] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tocsin.agent.simulate import ATTACKS, WORKLOADS, make_share, run_argv

BIN = Path(sys.executable).parent
# Paced workloads get a smaller share so that a recording stays under a minute.
SHARE_FILES = {"encrypt-slow": 40}


def _wait(what: str, check: object, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise SystemExit(f"record_fixtures: timed out waiting for {what}")


def record(name: str, out: Path, rate: float, files: int, settle_s: float) -> Path:
    with tempfile.TemporaryDirectory(prefix=f"tocsin-rec-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        share = tmp / "share"
        make_share(share, files=files, seed=7)
        clog = tmp / "collector.log"
        collector = subprocess.Popen(
            [
                str(BIN / "tocsin-collector"),
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(tmp / "c.db"),
                "--respond",
                "off",
                "--insecure",
            ],
            stdout=clog.open("wb"),
            stderr=subprocess.STDOUT,
        )
        agent: subprocess.Popen[bytes] | None = None
        try:
            addr = ""

            def listening() -> bool:
                nonlocal addr
                m = re.search(r"listening on (\S+:\d+)", clog.read_text(errors="replace"))
                addr = m.group(1) if m else ""
                return bool(addr)

            _wait("the collector", listening)
            recording = tmp / "rec.jsonl"
            agent = subprocess.Popen(
                [
                    str(BIN / "tocsin-agent"),
                    "--collector",
                    addr,
                    "--watch",
                    str(share),
                    "--host-id",
                    f"fixture-{name}",
                    "--state-dir",
                    str(tmp / "state"),
                    "--insecure",
                    "--tripwire",
                    "off",
                    "--record",
                    str(recording),
                ],
                stdout=(tmp / "agent.log").open("wb"),
                stderr=subprocess.STDOUT,
            )

            def connected() -> bool:
                res = subprocess.run(
                    [str(BIN / "tocsin"), "hosts", "--json", "--collector", addr, "--insecure"],
                    capture_output=True,
                    text=True,
                )
                return res.returncode == 0 and any(
                    h["connected"] for h in json.loads(res.stdout or "[]")
                )

            _wait("the agent", connected)
            time.sleep(settle_s)
            subprocess.run(run_argv(name, share, rate), check=True)
            time.sleep(settle_s)
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=20)
            dest = out / f"{name}.jsonl"
            dest.write_bytes(recording.read_bytes())
            return dest
        finally:
            for proc in (agent, collector):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("names", nargs="*", default=sorted(WORKLOADS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        if name not in WORKLOADS:
            raise SystemExit(f"record_fixtures: unknown workload {name!r}")
        files = SHARE_FILES.get(name, args.files)
        dest = record(name, args.out, args.rate, files, args.settle_s)
        kind = "attack" if name in ATTACKS else "benign"
        lines = sum(1 for _ in dest.open())
        print(f"{name:18s} {kind:6s} {lines:4d} messages -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
