"""Suspend/resume real process trees (isolation: tests/test_agent_firewall.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tocsin.agent import _linux
from tocsin.agent.act import Actions
from tocsin.v1 import telemetry_pb2 as pb

TREE = (
    "import subprocess,sys,time;"
    "subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']);"
    "time.sleep(60)"
)


def _status(pid: int, want: str = psutil.STATUS_STOPPED) -> str:
    """The status of ``pid``, after waiting up to 2 s for it to become ``want``."""
    for _ in range(40):
        status = str(psutil.Process(pid).status())
        if status == want:
            return status
        time.sleep(0.05)
    return status


def ref(pid: int) -> pb.ProcessRef:
    """The identity a collector would send for ``pid`` (read from /proc like the agent)."""
    return pb.ProcessRef(
        pid=pid,
        start_ticks=_linux.start_ticks(pid) or 0,
        kernel_boot_id=_linux.kernel_boot_id(),
    )


def _wait_children(pid: int, n: int) -> list[psutil.Process]:
    for _ in range(100):
        kids = psutil.Process(pid).children(recursive=True)
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError("child never started")


def test_suspend_resume_kill_a_tree(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", TREE])
    try:
        kid = _wait_children(parent.pid, 1)[0]
        acts = Actions(tmp_path)
        r = acts.run(
            pb.Command(id="c1", kind="suspend", pids=[parent.pid], processes=[ref(parent.pid)])
        )
        assert r.status == "done", r.detail
        assert set(r.pids) == {parent.pid, kid.pid}
        assert _status(parent.pid) == psutil.STATUS_STOPPED
        assert _status(kid.pid) == psutil.STATUS_STOPPED
        assert Actions(tmp_path).suspended == {parent.pid, kid.pid}  # persisted

        dry = acts.run(pb.Command(id="c2", kind="resume", dry_run=True))
        assert dry.status == "dry-run"
        assert _status(parent.pid) == psutil.STATUS_STOPPED

        r = acts.run(pb.Command(id="c3", kind="resume"))
        assert r.status == "done"
        assert _status(parent.pid, psutil.STATUS_SLEEPING) != psutil.STATUS_STOPPED
        assert _status(kid.pid, psutil.STATUS_SLEEPING) != psutil.STATUS_STOPPED
        assert acts.suspended == set()

        acts.run(
            pb.Command(id="c4", kind="suspend", pids=[parent.pid], processes=[ref(parent.pid)])
        )
        r = acts.run(pb.Command(id="c5", kind="kill", pids=[parent.pid]))
        assert r.status == "done"
        assert parent.wait(timeout=5) == -9
    finally:
        parent.kill()
        parent.wait()


def test_refuses_init_self_and_ancestors(tmp_path: Path) -> None:
    acts = Actions(tmp_path)
    for pid in (1, os.getpid(), os.getppid()):
        for kind in ("suspend", "resume", "kill"):
            r = acts.run(pb.Command(id="x", kind=kind, pids=[pid], processes=[ref(pid)]))
            assert r.status == "refused", (kind, pid)
    assert psutil.Process(os.getpid()).status() != psutil.STATUS_STOPPED
    assert acts.run(pb.Command(id="y", kind="reboot")).status == "refused"
