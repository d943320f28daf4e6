"""Suspend/resume real process trees; isolation inside a private network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tocsin.agent import _linux
from tocsin.agent.act import Actions, ruleset
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


def test_isolation_rolls_back_when_collector_unreachable(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def nft(args: list[str], stdin: str) -> tuple[int, str]:
        calls.append(args)
        return 0, ""

    acts = Actions(tmp_path, "127.0.0.1", 7443, nft=nft, reachable=lambda h, p: False)
    r = acts.run(pb.Command(id="i", kind="isolate"))
    assert r.status == "failed" and "cut the collector" in r.detail
    assert calls[-1] == ["delete", "table", "inet", "tocsin"]
    assert not acts.isolated


def _netns_ok() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip and nft")
def test_isolation_in_a_network_namespace(tmp_path: Path) -> None:
    ns = f"tocsin-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)

        def nft(args: list[str], stdin: str) -> tuple[int, str]:
            cp = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", *args],
                input=stdin,
                capture_output=True,
                text=True,
                check=False,
            )
            return cp.returncode, cp.stderr + cp.stdout

        acts = Actions(
            tmp_path,
            "127.0.0.1",
            7443,
            allow=["192.0.2.0/24"],
            nft=nft,
            reachable=lambda h, p: True,
        )
        r = acts.run(pb.Command(id="i", kind="isolate"))
        assert r.status == "done", r.detail
        rc, listing = nft(["list", "table", "inet", "tocsin"], "")
        assert rc == 0
        assert "tcp dport 7443 accept" in listing and "policy drop" in listing
        assert Actions(tmp_path, nft=nft).isolated  # persisted for re-apply at start
        assert acts.reapply().startswith("done")
        assert acts.run(pb.Command(id="r", kind="release")).status == "done"
        assert nft(["list", "table", "inet", "tocsin"], "")[0] != 0
        assert acts.run(pb.Command(id="r2", kind="release")).status == "done"  # idempotent
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_ruleset_pins_collector_ip_and_port() -> None:
    text = ruleset("10.1.2.3", 7443, [])
    assert "ip daddr 10.1.2.3 tcp dport 7443 accept" in text
    assert "ip saddr 10.1.2.3 tcp sport 7443 accept" in text
