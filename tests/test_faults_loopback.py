"""Faults with real processes on 127.0.0.1: every window created is stored exactly once.

Agents: a fleet process of 20 agents (tests/fleet.py: the agent's real Shipper and
WindowSpool, spools on disk, real gRPC) and one real ``tocsin-agent`` watching a
small directory that a thread in this test keeps writing to. Collector: a real
``tocsin-collector`` process on a real SQLite file. After each fault, the agents
stop creating windows, their spools drain, and ``ledger`` compares what they
created (fleet creation log, the agent's recording, seqs contiguous per boot)
with the collector's ``windows`` table. The figures are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from transport_procs import (
    BIN,
    FLEET,
    CollectorProc,
    created_from_log,
    duplicates_dropped,
    free_port,
    ledger,
    spooled,
    stored,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]
AGENTS = 20
RATE = 4.0


@dataclass
class Town:
    tmp: Path
    collector: CollectorProc
    addr: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    writing: threading.Event = field(default_factory=threading.Event)
    stop_writer: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------ agents
    def start_fleet(self) -> None:
        fh = (self.tmp / "fleet.log").open("ab")
        self.procs["fleet"] = subprocess.Popen(
            [
                sys.executable,
                str(FLEET),
                "--collector",
                self.addr,
                "--dir",
                str(self.tmp / "fleet"),
                "--agents",
                str(AGENTS),
                "--rate",
                str(RATE),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )

    def start_agent(self) -> None:
        fh = (self.tmp / "agent.log").open("ab")
        self.procs["agent"] = subprocess.Popen(
            [
                str(BIN / "tocsin-agent"),
                "--collector",
                self.addr,
                "--watch",
                str(self.tmp / "share"),
                "--host-id",
                "real-agent",
                "--state-dir",
                str(self.tmp / "agent-state"),
                "--insecure",
                "--window-s",
                "0.25",
                "--tripwire",
                "off",
                "--record",
                str(self.tmp / "agent.jsonl"),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def spools(self) -> list[Path]:
        return [
            *sorted((self.tmp / "fleet").glob("fleet-*/spool.sqlite")),
            self.tmp / "agent-state" / "spool.sqlite",
        ]

    def spool_depth(self) -> int:
        return sum(len(v) for p in self.spools() for v in spooled(p).values())

    def writer(self) -> None:
        share = self.tmp / "share"
        i = 0
        while not self.stop_writer.is_set():
            if self.writing.is_set():
                (share / f"doc{i % 50}.txt").write_text(f"version {i}\n" * 20)
                i += 1
            time.sleep(0.05)

    # ------------------------------------------------------------ the ledger
    def quiesce_and_count(self, timeout_s: float = 90) -> dict[str, int]:
        """Stop creating, wait until every spool is empty, stop the agents, check."""
        self.writing.clear()
        self.procs["fleet"].send_signal(signal.SIGUSR1)
        time.sleep(1.0)  # the agent closes its last window
        wait_for("every spool to drain", lambda: self.spool_depth() == 0, timeout_s, 0.5)
        for name in ("fleet", "agent"):
            self.procs[name].send_signal(signal.SIGTERM)
            assert self.procs[name].wait(30) == 0, (self.tmp / f"{name}.log").read_text()[-3000:]
        assert self.spool_depth() == 0
        created = created_from_log(self.tmp / "fleet" / "created.log")
        for (host, boot), seqs in stored(self.collector.db).items():
            # The tail of a boot may be spooled but not logged when killed: seqs are
            # contiguous, so the highest stored seq was created too.
            created[(host, boot)] = max(created.get((host, boot), 0), max(seqs))
        figures = ledger(created, self.collector.db)
        assert self.collector.stop() == 0
        figures["duplicates_dropped"] = duplicates_dropped(self.collector.text())
        return figures


def recorded_agent_windows(path: Path) -> dict[str, int]:
    """boot -> highest window seq the real agent sent (its --record file)."""
    out: dict[str, int] = {}
    boot = ""
    for line in path.read_text().splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue  # torn by SIGKILL
        if "hello" in msg:
            boot = msg["hello"]["boot_id"]
        elif "window" in msg:
            out[boot] = max(out.get(boot, 0), int(msg["window"]["seq"]))
    return out


@pytest.fixture
def town(tmp_path: Path) -> Iterator[Town]:
    (tmp_path / "share").mkdir()
    db = tmp_path / "db" / "tocsin.db"
    db.parent.mkdir()
    col = CollectorProc(
        db,
        tmp_path / "collector.log",
        f"127.0.0.1:{free_port()}",
        ["--insecure", "--log-level", "INFO"],
    )
    addr = col.start()
    t = Town(tmp_path, col, addr)
    threading.Thread(target=t.writer, daemon=True).start()
    t.writing.set()
    try:
        yield t
    finally:
        t.stop_writer.set()
        for p in t.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        col.stop()


def report(name: str, figures: dict[str, int]) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def check_real_agent(town: Town) -> None:
    sent = recorded_agent_windows(town.tmp / "agent.jsonl")
    have = stored(town.collector.db)
    assert sent, "the real agent sent no window"
    for boot, top in sent.items():
        assert have.get(("real-agent", boot), [])[-1:] >= [top], (boot, top)


def test_collector_killed_mid_stream_and_restarted(town: Town) -> None:
    town.start_fleet()
    town.start_agent()
    wait_for("windows stored", lambda: sum(map(len, stored(town.collector.db).values())) > 200)
    town.collector.kill()
    killed_at = sum(map(len, stored(town.collector.db).values()))
    time.sleep(3)  # the agents go on creating and spooling
    assert town.spool_depth() > 0
    town.collector.start()
    wait_for(
        "catch-up", lambda: sum(map(len, stored(town.collector.db).values())) > killed_at + 200, 60
    )
    figures = town.quiesce_and_count()
    check_real_agent(town)
    assert figures["hosts"] == AGENTS + 1
    report("collector SIGKILL + restart", figures)


def test_agents_killed_and_restarted_resend_their_old_boot(town: Town) -> None:
    town.start_fleet()
    town.start_agent()
    wait_for("windows stored", lambda: sum(map(len, stored(town.collector.db).values())) > 200)
    assert town.collector.proc is not None
    town.collector.proc.send_signal(signal.SIGSTOP)  # a stall: nothing acked for a while
    time.sleep(2)
    town.kill("fleet")
    town.kill("agent")
    left = town.spool_depth()
    assert left > 0, "nothing was waiting in the spools when the agents died"
    town.collector.proc.send_signal(signal.SIGCONT)
    town.start_fleet()
    town.start_agent()
    time.sleep(3)
    figures = town.quiesce_and_count()
    check_real_agent(town)
    boots = {h: 0 for h, _ in stored(town.collector.db)}
    for h, _ in stored(town.collector.db):
        boots[h] += 1
    assert all(n == 2 for n in boots.values()), boots  # old boot resent, new boot stored
    figures["spooled_at_kill"] = left
    report("agents SIGKILL + restart", figures)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_collector_disk_full_refuses_then_catches_up(tmp_path: Path) -> None:
    mnt = tmp_path / "db"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tocsin-test", str(mnt)], check=True)
    try:
        (tmp_path / "share").mkdir()
        col = CollectorProc(
            mnt / "tocsin.db",
            tmp_path / "collector.log",
            f"127.0.0.1:{free_port()}",
            ["--insecure"],
        )
        town = Town(tmp_path, col, col.start())
        threading.Thread(target=town.writer, daemon=True).start()
        town.writing.set()
        try:
            town.start_fleet()
            town.start_agent()
            wait_for("the disk to fill", lambda: "database full" in col.text(), 90, 0.5)
            full_at = sum(map(len, stored(col.db).values()))
            time.sleep(3)
            assert col.proc is not None and col.proc.poll() is None  # refuses, never dies
            depth = town.spool_depth()
            assert depth > 20, depth  # the agents keep spooling
            assert sum(map(len, stored(col.db).values())) == full_at  # nothing more stored
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            figures = town.quiesce_and_count(timeout_s=120)
            check_real_agent(town)
            figures["spooled_while_full"] = depth
            # Whichever write hit the full disk first (a window or a judged mark), the
            # refusal itself is said in one line naming the agent.
            full = [x for x in col.text().splitlines() if "database full" in x]
            assert any("refusing its windows" in x for x in full), full[:5]
            report("collector disk full", figures)
        finally:
            town.stop_writer.set()
            for p in town.procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            col.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
