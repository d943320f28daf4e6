"""Isolation that cannot lock you out, on three test hosts in network namespaces.

C (collector host): tocsin-collector in enforce mode, plus another service.
A (file server): tocsin-agent, a service of its own, and a simulated encryption.
J (the admin's jump host): allowlisted by the collector (its isolate command carries it).
A is joined to C and to J by two veth pairs; every packet stays on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from netns import Netns, netns_unavailable_reason
from tocsin.agent.simulate import make_share

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(
        netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())
    ),
]

BIN = Path(sys.executable).parent
RECEIVER = str(Path(__file__).resolve().parents[1] / "tools" / "receiver.py")
COLLECTOR_PORT, OTHER_PORT, JUMP_PORT, AGENT_SVC_PORT = 50061, 9091, 2222, 4445
HOST_ID = "mairie-fs2"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Topology:
    """A with one leg to C and one to J (two /24s drawn in 10.232.0.0/16)."""

    def __init__(self) -> None:
        tag = f"{random.randrange(16**5):05x}"
        nets = random.sample(range(1, 255), 2)
        self.names = [f"tco-{tag}-{x}" for x in ("a", "c", "j")]
        self.a_to_c = Netns(self.names[0], f"10.232.{nets[0]}.1")
        self.c = Netns(self.names[1], f"10.232.{nets[0]}.2")
        self.a_to_j = Netns(self.names[0], f"10.232.{nets[1]}.1")
        self.j = Netns(self.names[2], f"10.232.{nets[1]}.2")
        self.a = self.a_to_c
        # A second address on C, not a resolver the agent was given: DNS to it is a leak.
        self.c_other = f"10.232.{nets[0]}.3"
        self._tag = tag

    def __enter__(self) -> Topology:
        for name in self.names:
            _run("ip", "netns", "add", name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        for i, (near, far) in enumerate(((self.a_to_c, self.c), (self.a_to_j, self.j))):
            va, vb = f"to{self._tag}{i}a", f"to{self._tag}{i}b"
            _run(
                "ip",
                "link",
                "add",
                va,
                "netns",
                near.name,
                "type",
                "veth",
                "peer",
                "name",
                vb,
                "netns",
                far.name,
            )
            for ns, dev in ((near, va), (far, vb)):
                _run("ip", "-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", dev)
                _run("ip", "-n", ns.name, "link", "set", dev, "up")
            if far is self.c:
                _run("ip", "-n", far.name, "addr", "add", f"{self.c_other}/24", "dev", vb)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), 18)
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float = 30, interval_s: float = 0.2
) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def table_present(ns: Netns) -> bool:
    return "inet tocsin" in ns.run(["nft", "list", "tables"]).stdout


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    with Topology() as t:
        yield t


def test_isolation_keeps_allowlist_survives_restart_rolls_back_and_releases(
    topo: Topology, tmp_path: Path
) -> None:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(ns: Netns, args: list[str], log: str) -> subprocess.Popen[bytes]:
        p = ns.popen(args, stdout=(tmp_path / log).open("ab"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    def logs() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(tmp_path.glob("*.log"))
        )

    collector = f"{topo.c.address}:{COLLECTOR_PORT}"

    def tocsin(*args: str) -> subprocess.CompletedProcess[str]:
        # On the collector's host, over loopback: --insecure answers no other caller.
        local = f"127.0.0.1:{COLLECTOR_PORT}"
        return topo.c.run([str(BIN / "tocsin"), *args, "--collector", local, "--insecure"])

    def connected() -> bool:
        res = tocsin("hosts", "--json")
        return res.returncode == 0 and any(
            h["host_id"] == HOST_ID and h["connected"] for h in json.loads(res.stdout)
        )

    agent_args = [
        str(BIN / "tocsin-agent"),
        "--collector",
        collector,
        "--watch",
        str(tmp_path / "share"),
        "--host-id",
        HOST_ID,
        "--state-dir",
        str(tmp_path / "state"),
        "--insecure",
        "--tripwire",
        "off",
        "--resolver",
        topo.c.address,
    ]
    make_share(tmp_path / "share", files=1500, seed=5)
    try:
        spawn(
            topo.c,
            [
                str(BIN / "tocsin-collector"),
                "--listen",
                f"0.0.0.0:{COLLECTOR_PORT}",
                "--db",
                str(tmp_path / "c.db"),
                "--respond",
                "enforce",
                "--insecure",
                "--allow",
                f"{topo.j.address}/32",
            ],
            "collector.log",
        )
        spawn(
            topo.c,
            [sys.executable, RECEIVER, "listen", topo.c.address, str(OTHER_PORT)],
            "other.log",
        )
        spawn(
            topo.j, [sys.executable, RECEIVER, "listen", topo.j.address, str(JUMP_PORT)], "jump.log"
        )
        # Port 53 (DNS over TCP) on both of C's addresses; only C's main one is the resolver.
        spawn(topo.c, [sys.executable, RECEIVER, "listen", "0.0.0.0", "53"], "dns.log")
        spawn(
            topo.a,
            [sys.executable, RECEIVER, "listen", "0.0.0.0", str(AGENT_SVC_PORT)],
            "agent-svc.log",
        )
        topo.a.wait_connect(topo.c.address, COLLECTOR_PORT)
        topo.a.wait_connect(topo.j.address, JUMP_PORT)
        topo.a.wait_connect(topo.c.address, OTHER_PORT)
        topo.a.wait_connect(topo.c_other, 53)
        agent = spawn(topo.a, agent_args, "agent.log")
        try:
            wait_for("the agent to connect", connected, 30, 0.5)
        except AssertionError:
            raise AssertionError(logs()) from None
        time.sleep(1.0)

        # An attack: the collector suspends it and isolates the host.
        attacker = spawn(
            topo.a,
            [
                sys.executable,
                "-m",
                "tocsin.agent.simulate",
                "run",
                "encrypt-inplace",
                str(tmp_path / "share"),
                "--rate",
                "200",
            ],
            "attack.log",
        )
        proc = psutil.Process(attacker.pid)
        try:
            wait_for(
                "the attacker to be stopped", lambda: proc.status() == psutil.STATUS_STOPPED, 40
            )
            wait_for("the isolation table", lambda: table_present(topo.a), 15)
        except AssertionError:
            raise AssertionError(logs()) from None

        def cut_off() -> None:
            assert topo.a.can_connect(topo.c.address, COLLECTOR_PORT)  # collector kept
            assert topo.a.can_connect(topo.j.address, JUMP_PORT)  # jump host, outbound
            assert topo.j.can_connect(topo.a_to_j.address, AGENT_SVC_PORT)  # and inbound
            assert not topo.a.can_connect(topo.c.address, OTHER_PORT, 1.0)  # the rest: cut
            assert not topo.c.can_connect(topo.a.address, AGENT_SVC_PORT, 1.0)
            assert topo.a.can_connect(topo.c.address, 53)  # the resolver it was given
            assert not topo.a.can_connect(topo.c_other, 53, 1.0)  # DNS anywhere else: cut

        cut_off()

        # The agent crashes and the host "reboots" (the table is gone): while the
        # incident is open, the agent puts the isolation back at start.
        agent.kill()
        agent.wait(timeout=10)
        topo.a.run(["nft", "delete", "table", "inet", "tocsin"])
        assert not table_present(topo.a)
        assert topo.a.can_connect(topo.c.address, OTHER_PORT)
        agent = spawn(topo.a, agent_args, "agent.log")
        wait_for("isolation re-applied at start", lambda: table_present(topo.a), 30)
        wait_for("the agent to reconnect", connected, 30, 0.5)
        cut_off()
        assert "isolation re-applied at start: done" in (tmp_path / "agent.log").read_text()

        # Someone with root on the host flushes the ruleset: the agent puts the table back.
        listing = topo.a.run(["nft", "list", "table", "inet", "tocsin"]).stdout
        flushed = time.monotonic()
        assert topo.a.run(["nft", "flush", "ruleset"]).returncode == 0
        back = wait_for(
            "the table back after nft flush ruleset",
            lambda: topo.a.run(["nft", "list", "table", "inet", "tocsin"]).stdout == listing,
            2.0,
            0.02,
        )
        took_s = time.monotonic() - flushed
        print(f"real agent: table back {took_s * 1000:.0f} ms after nft flush ruleset")
        assert back and took_s < 2.0
        cut_off()

        # The operator releases and resumes: everything comes back.
        res = tocsin("release", HOST_ID, "--resume")
        assert res.returncode == 0, res.stdout + res.stderr + logs()
        assert not table_present(topo.a)
        assert topo.a.can_connect(topo.c.address, OTHER_PORT)
        assert topo.c.can_connect(topo.a.address, AGENT_SVC_PORT)
        wait_for("the attacker to be resumed", lambda: proc.status() != psutil.STATUS_STOPPED, 10)
        assert "no process is stopped by tocsin" in res.stdout
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, 18)
                p.kill()
                p.wait(timeout=10)


ROLLBACK = """
import json, subprocess, sys
from pathlib import Path
from tocsin.agent.act import Actions
from tocsin.agent.firewall import Firewall
from tocsin.v1 import telemetry_pb2 as pb
fw = Firewall(Path(sys.argv[1]), [sys.argv[2]], [int(sys.argv[3])])
acts = Actions(Path(sys.argv[1]), fw)
r = acts.run(pb.Command(id="i", kind="isolate"))
tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
print(json.dumps({"status": r.status, "detail": r.detail, "tables": tables,
                  "isolated": fw.isolated}))
"""


@pytest.mark.parametrize("case", ["wrong-port", "unreachable-address"])
def test_isolation_rolls_back_when_it_would_cut_the_collector(
    topo: Topology, tmp_path: Path, case: str
) -> None:
    listener = topo.c.popen(
        [sys.executable, RECEIVER, "listen", topo.c.address, str(OTHER_PORT)],
        stdout=subprocess.DEVNULL,
    )
    try:
        topo.a.wait_connect(topo.c.address, OTHER_PORT)
        # The agent believes the collector is at a port (or address) nothing answers on.
        host = topo.c.address if case == "wrong-port" else topo.c.address.rsplit(".", 1)[0] + ".99"
        res = topo.a.run([sys.executable, "-c", ROLLBACK, str(tmp_path / "state"), host, "7"])
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["status"] == "failed" and "rolled back" in out["detail"], out
        assert "inet tocsin" not in out["tables"] and not out["isolated"]
        assert not table_present(topo.a)
        assert topo.a.can_connect(topo.c.address, OTHER_PORT)  # nothing stayed cut
    finally:
        listener.kill()
        listener.wait()
