"""Shared harness for the evidence tests: real inotify (and fanotify as root) on a tmp share
while a simulated workload runs as its own process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tocsin.agent import simulate
from tocsin.agent.attribute import Attributor
from tocsin.agent.watch import FileWatcher
from tocsin.agent.window import Ruined, WindowLoop
from tocsin.v1 import telemetry_pb2 as pb


def run_workload(
    share: Path,
    style: str,
    rate: float = 400,
    files: int = 60,
    extra: tuple[str, ...] = (),
    canaries: frozenset[str] = frozenset(),
    make: bool = True,
    argv: list[str] | None = None,
    ruined: list[tuple[pb.ProcessSample, Ruined]] | None = None,
) -> tuple[list[pb.Window], int]:
    """Windows seen while ``style`` (or the command ``argv``) ran on ``share``; the
    files shown ruined, with their writer (fanotify: as root), go to ``ruined``."""
    if make:
        simulate.make_share(share, files)
    watcher = FileWatcher([str(share)])
    attributor = Attributor([str(share)])
    got: list[pb.Window] = []
    seen = ruined if ruined is not None else []
    loop = WindowLoop(
        watcher,
        attributor,
        got.append,
        window_s=0.5,
        idle_every_s=0.5,
        canaries=canaries,
        on_ruined=lambda writer, r, _at: bool(seen.append((writer, r))),
    )
    watcher.start()
    attributor.start()
    loop.start()
    time.sleep(0.3)
    try:
        child = subprocess.Popen(
            argv
            or [
                sys.executable,
                "-m",
                "tocsin.agent.simulate",
                "run",
                style,
                str(share),
                "--rate",
                str(rate),
                *extra,
            ]
        )
        assert child.wait(timeout=60) == 0
        time.sleep(1.2)
    finally:
        loop.stop()
        watcher.stop()
        attributor.stop()
    return got, child.pid


def total(ws: list[pb.Window], name: str) -> int:
    return sum(getattr(w, name) for w in ws)
