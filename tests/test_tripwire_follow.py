"""The agent's tripwire follows the collector's response mode, and keeps it when cut off.

The operator chooses automatic response once, at the collector (``--respond
enforce``); an agent left at its default (``tripwire = "follow"``) then suspends an
encryptor on its own evidence, tens of milliseconds before the collector's command
would, and goes on doing so when the collector is cut off, across its own restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_collector_cli import start_collector
from test_evidence_tripwire import _attack_until_stopped
from transport_procs import wait_for

from tocsin.agent import simulate
from tocsin.agent.act import Actions
from tocsin.agent.tripwire import FollowedMode, Tripwire

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify and SIGSTOP of others need root")


def _agent(share: Path, state: Path, collector: str, lines: list[str]) -> subprocess.Popen[str]:
    """A real agent at its default tripwire; its log lines gathered in ``lines``."""
    p = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tocsin-agent")),
            "--collector",
            collector,
            "--watch",
            str(share),
            "--host-id",
            "follower",
            "--state-dir",
            str(state),
            "--insecure",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    threading.Thread(target=lambda: lines.extend(p.stderr or ()), daemon=True).start()
    wait_for("the agent to watch", lambda: any("watching" in line for line in lines))
    return p


def _stop(p: subprocess.Popen[str]) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)


@ROOT_ONLY
def test_an_agent_following_an_enforcing_collector_suspends_alone_even_once_cut_off(
    tmp_path: Path,
) -> None:
    share, state = tmp_path / "share", tmp_path / "state"
    simulate.make_share(share, 600)
    collector, addr = start_collector(
        tmp_path / "c.log", "--db", str(tmp_path / "c.db"), "--respond", "enforce"
    )
    lines: list[str] = []
    try:
        agent = _agent(share, state, addr, lines)
        wait_for("the collector's word", lambda: any("tripwire: enforce" in x for x in lines))
        _stop(agent)
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=15)
    assert FollowedMode(state).read() == "enforce"
    assert (os.stat(state / FollowedMode.NAME).st_mode & 0o777) == 0o600

    # The collector is gone; the agent starts again and still enforces.
    lines.clear()
    agent = _agent(share, state, addr, lines)
    time.sleep(1.5)  # not the agent's first window
    try:
        stopped, ruined, _ = _attack_until_stopped(share, tmp_path, "encrypt-inplace", 200)
    finally:
        _stop(agent)
    assert stopped, "the encryptor ran to the end: the kept word was not followed"
    assert ruined <= 60
    fired = [x for x in lines if "tripwire fired" in x]
    assert fired and "dry-run" not in fired[0], fired


@ROOT_ONLY
def test_an_agent_following_a_dry_run_collector_does_not_suspend(tmp_path: Path) -> None:
    share, state = tmp_path / "share", tmp_path / "state"
    simulate.make_share(share, 200)
    collector, addr = start_collector(tmp_path / "c.log", "--db", str(tmp_path / "c.db"))
    lines: list[str] = []
    try:
        agent = _agent(share, state, addr, lines)
        time.sleep(1.5)
        try:
            stopped, ruined, _ = _attack_until_stopped(share, tmp_path, "encrypt-inplace", 200)
        finally:
            _stop(agent)
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=15)
    assert not stopped and ruined == 200
    assert any("tripwire fired" in x and "dry-run" in x for x in lines), lines
    assert not any("tripwire: enforce" in x for x in lines)
    assert FollowedMode(state).read() == "dry-run"


def test_follow_takes_the_collectors_word_and_a_set_mode_does_not(tmp_path: Path) -> None:
    actions = Actions(tmp_path)
    follower = Tripwire(actions, "follow")
    assert (follower.mode, follower.describe()) == ("dry-run", "follow:dry-run")
    assert follower.follow("enforce") and follower.describe() == "follow:enforce"
    assert not follower.follow("enforce")
    assert follower.follow("off") and follower.mode == "dry-run"  # never switched off
    assert Tripwire(actions, "follow", followed="enforce").mode == "enforce"
    assert Tripwire(actions, "follow", followed="off").mode == "dry-run"
    for mode in ("off", "dry-run", "enforce"):
        fixed = Tripwire(actions, mode)
        assert not fixed.follow("enforce" if mode != "enforce" else "dry-run")
        assert fixed.mode == fixed.describe() == mode


def test_the_kept_word_is_read_back_and_anything_else_is_dry_run(tmp_path: Path) -> None:
    kept = FollowedMode(tmp_path)
    assert kept.read() == "dry-run"  # nothing kept yet
    kept.write("enforce")
    assert FollowedMode(tmp_path).read() == "enforce"
    kept.path.write_text("off\n")
    assert kept.read() == "dry-run"
    kept.path.unlink()
    os.symlink("/etc/hostname", kept.path)
    assert kept.read() == "dry-run"  # never followed through a link
    with pytest.raises(ValueError):
        kept.write("off")
