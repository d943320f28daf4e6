"""Agents with two collectors on 127.0.0.1: the first is killed, windows go on to the second.

A real ``tocsin-agent`` (watching a directory a thread of this test keeps
writing to) and a fleet process of agents (tests/fleet.py: the agent's own
Shipper and spool) are given ``--collector A,B``; A and B are real
``tocsin-collector`` processes, each on its own SQLite file. They stream to A
only; A is SIGKILLed; every agent's windows then reach B. Once the agents
stopped creating and their spools drained, every window created is stored,
exactly once in each store, in the union of the two (a window A stored but
never acked is resent to B: it is in both, and counted). Shared stores are
the scale-out test's business.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from transport_procs import (
    BIN,
    FLEET,
    CollectorProc,
    created_from_log,
    free_port,
    ledger,
    spooled,
    stored,
    wait_for,
)

pytestmark = [pytest.mark.slow]
AGENTS = 5


def windows_of(db: Path) -> dict[str, int]:
    """host -> windows stored."""
    out: dict[str, int] = {}
    for (host, _), seqs in stored(db).items():
        out[host] = out.get(host, 0) + len(seqs)
    return out


def test_agents_move_to_the_second_collector_when_the_first_is_killed(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    collectors = [
        CollectorProc(
            tmp_path / name / "tocsin.db",
            tmp_path / f"{name}.log",
            f"127.0.0.1:{free_port()}",
            ["--insecure"],
        )
        for name in ("a", "b")
    ]
    for c in collectors:
        c.db.parent.mkdir()
    first, second = collectors
    both = ",".join(c.start() for c in collectors)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    writing, stop_writer = threading.Event(), threading.Event()

    def writer() -> None:
        i = 0
        while not stop_writer.is_set():
            if writing.is_set():
                (share / f"doc{i % 20}.txt").write_text(f"version {i}\n" * 20)
                i += 1
            time.sleep(0.05)

    threading.Thread(target=writer, daemon=True).start()
    writing.set()
    fleet_dir, agent_state = tmp_path / "fleet", tmp_path / "agent-state"
    try:
        agent = ["--collector", both, "--watch", str(share), "--host-id", "real-agent"]
        agent += ["--state-dir", str(agent_state), "--insecure", "--window-s", "0.25"]
        procs["agent"] = subprocess.Popen(
            [str(BIN / "tocsin-agent"), *agent, "--tripwire", "off"],
            stdout=(tmp_path / "agent.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        fleet = ["--collector", both, "--dir", str(fleet_dir), "--agents", str(AGENTS)]
        procs["fleet"] = subprocess.Popen(
            [sys.executable, str(FLEET), *fleet, "--rate", "4"],
            stdout=(tmp_path / "fleet.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        hosts = {"real-agent", *(f"fleet-{i:02d}" for i in range(AGENTS))}
        wait_for(
            "every agent's windows on the first collector",
            lambda: set(windows_of(first.db)) == hosts and min(windows_of(first.db).values()) > 5,
        )
        assert windows_of(second.db) == {}  # an agent stays with the collector it streams to
        first.kill()
        killed_at = time.monotonic()
        wait_for(
            "every agent's windows on the second collector",
            lambda: set(windows_of(second.db)) == hosts,
            timeout_s=30,
        )
        moved_s = time.monotonic() - killed_at
        time.sleep(2.0)  # windows keep flowing to the second
        writing.clear()
        procs["fleet"].send_signal(signal.SIGUSR1)
        time.sleep(1.0)  # the agent closes its last window
        spools = [*sorted(fleet_dir.glob("fleet-*/spool.sqlite")), agent_state / "spool.sqlite"]
        wait_for(
            "every spool to drain",
            lambda: sum(len(v) for p in spools for v in spooled(p).values()) == 0,
            timeout_s=60,
            interval_s=0.5,
        )
        for name in ("fleet", "agent"):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(30) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        stop_writer.set()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        second.stop()
        first.stop()
    created = created_from_log(fleet_dir / "created.log")
    for db in (first.db, second.db):
        for (host, boot), seqs in stored(db).items():
            # The real agent logs nothing it created; its seqs are contiguous from 1, and a
            # killed fleet's last spooled window may be unlogged: the highest stored counts.
            created[(host, boot)] = max(created.get((host, boot), 0), max(seqs))
    figures = ledger(created, first.db, second.db)
    assert figures["created"] == figures["stored"]
    assert "does not answer; trying" in (tmp_path / "agent.log").read_text()
    print(
        f"\n[failover] moved_within_s={moved_s:.1f} "
        + " ".join(f"{k}={v}" for k, v in figures.items())
    )
