"""tocsin's nftables table for real, in network namespaces: isolation, DNS, client blocks, watcher.

The firewall runs in this process with its ``nft`` (and its reachability check)
executed inside the file server's namespace; every packet stays inside
namespaces the test created.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import Netns, netns_unavailable_reason, star
from tocsin.agent.act import Actions
from tocsin.agent.firewall import Firewall, Nft
from tocsin.agent.ruleset import pin_addresses, system_resolvers
from tocsin.v1 import telemetry_pb2 as pb

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())
    ),
]

RECEIVER = str(Path(__file__).resolve().parents[1] / "tools" / "receiver.py")
COLLECTOR_PORT, SERVICE_PORT = 7443, 4445

# Answers DNS-port traffic on every address of its namespace: UDP echo, TCP accept.
DNS_SERVER = """
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 53)); t.listen(16)
def tcp():
    while True:
        c, _ = t.accept(); c.close()
threading.Thread(target=tcp, daemon=True).start()
while True:
    data, peer = u.recvfrom(512); u.sendto(data, peer)
"""
# Exit 0 when a UDP datagram to ADDR:53 is answered within a second.
DNS_QUERY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
s.sendto(b"query", (sys.argv[1], 53))
try:
    s.recvfrom(512)
except OSError:
    sys.exit(1)
"""


def _table(ns: Netns) -> str:
    res = ns.run(["nft", "list", "table", "inet", "tocsin"])
    return res.stdout if res.returncode == 0 else ""


def _firewall(state: Path, server: Netns, collector: Netns, **kw: object) -> Firewall:
    return Firewall(
        state,
        (collector.address,),
        (COLLECTOR_PORT,),
        nft=Nft(server.cmd(["nft"])),
        reachable=lambda host, port: server.can_connect(host, port),
        local_addresses=lambda: {server.address},
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def net() -> Iterator[tuple[list[Netns], list[Netns]]]:
    """The file server (hub) and three leaves: the collector, a client, another client."""
    with star(3, "tfw") as (hub, leaf):
        procs = [
            leaf[0].popen([sys.executable, RECEIVER, "listen", "0.0.0.0", str(COLLECTOR_PORT)]),
            hub[0].popen([sys.executable, RECEIVER, "listen", "0.0.0.0", str(SERVICE_PORT)]),
        ]
        try:
            hub[0].wait_connect(leaf[0].address, COLLECTOR_PORT)
            leaf[1].wait_connect(hub[1].address, SERVICE_PORT)
            yield hub, leaf
        finally:
            for p in procs:
                p.kill()
                p.wait()


def test_isolation_allows_dns_only_to_the_pinned_resolvers(
    net: tuple[list[Netns], list[Netns]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, leaf = net
    server, collector = hub[0], leaf[0]
    # A second address on the collector's namespace: a DNS server that is not ours.
    other = collector.address.rsplit(".", 1)[0] + ".3"
    dev = collector.run(["ip", "-o", "link", "show", "type", "veth"]).stdout.split(":")[1]
    subprocess.run(
        [
            "ip",
            "-n",
            collector.name,
            "addr",
            "add",
            f"{other}/24",
            "dev",
            dev.strip().split("@")[0],
        ],
        check=True,
    )
    dns = collector.popen([sys.executable, "-c", DNS_SERVER])
    try:

        def answered(addr: str) -> bool:
            return server.run([sys.executable, "-c", DNS_QUERY, addr]).returncode == 0

        for _ in range(50):
            if answered(collector.address) and answered(other):
                break
            time.sleep(0.1)
        assert answered(other) and server.can_connect(other, 53)  # open before isolation

        fw = _firewall(tmp_path, server, collector, resolvers=(collector.address,))
        # Name resolution is gone by the time the host is isolated: nothing is re-resolved.
        monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
        status, detail = fw.isolate()
        assert status == "done", detail
        assert answered(collector.address), "the pinned resolver must still answer"
        assert server.can_connect(collector.address, 53)  # DNS over TCP to it too
        assert not answered(other), "DNS to any other address must be dropped"
        assert not server.can_connect(other, 53, 1.0)
        assert server.can_connect(collector.address, COLLECTOR_PORT)
        assert fw.release()[0] == "done"
        assert answered(other)
    finally:
        dns.kill()
        dns.wait()


def _no_dns(*args: object, **kw: object) -> object:
    raise socket.gaierror(socket.EAI_AGAIN, "name resolution is down")


def test_collector_and_resolvers_are_pinned_from_names_and_resolv_conf(tmp_path: Path) -> None:
    assert "127.0.0.1" in pin_addresses("localhost")
    assert pin_addresses("::ffff:10.1.2.3") == ("10.1.2.3",)
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# local\nsearch mairie.example\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\n"
    )
    assert system_resolvers([conf]) == ("10.0.0.53", "fe80::1")
    stub, upstream = tmp_path / "stub.conf", tmp_path / "upstream.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    upstream.write_text("nameserver 192.0.2.53\n")
    assert system_resolvers([stub, upstream]) == ("127.0.0.53", "192.0.2.53")


def test_block_cuts_one_client_and_survives_restart(
    net: tuple[list[Netns], list[Netns]], tmp_path: Path
) -> None:
    hub, leaf = net
    server, collector, client, colleague = hub[0], leaf[0], leaf[1], leaf[2]
    jump = "192.0.2.0/24"
    fw = _firewall(tmp_path, server, collector, allow=(jump,))
    acts = Actions(tmp_path, fw)

    r = acts.run(
        pb.Command(
            id="b1",
            kind="block_client",
            parameters={
                "addresses": f"::ffff:{client.address},{collector.address},127.0.0.1,"
                f"192.0.2.7,{server.address},nonsense"
            },
        )
    )
    assert r.status == "done", r.detail
    assert fw.blocked == (client.address,)
    for refused in (
        "the collector's address",
        "loopback",
        "allowlisted",
        "own addresses",
        "not an IP",
    ):
        assert refused in r.detail, r.detail
    assert not client.can_connect(hub[1].address, SERVICE_PORT, 1.0)
    assert colleague.can_connect(hub[2].address, SERVICE_PORT)
    assert server.can_connect(collector.address, COLLECTOR_PORT)
    assert not fw.isolated  # a block is not an isolation

    # A restart (the table gone with a reboot): the block is persisted and put back.
    server.run(["nft", "delete", "table", "inet", "tocsin"])
    assert client.can_connect(hub[1].address, SERVICE_PORT)
    again = _firewall(tmp_path, server, collector, allow=(jump,))
    assert again.blocked == (client.address,)
    assert again.reapply().startswith("done")
    assert not client.can_connect(hub[1].address, SERVICE_PORT, 1.0)

    assert again.unblock_clients([client.address]) == [client.address]
    assert client.can_connect(hub[1].address, SERVICE_PORT)
    assert not _table(server)  # nothing left to enforce: no table at all

    acts = Actions(tmp_path, again)
    assert (
        acts.run(
            pb.Command(id="b2", kind="block_client", parameters={"addresses": "127.0.0.1"})
        ).status
        == "refused"
    )
    acts.run(pb.Command(id="b3", kind="block_client", parameters={"addresses": client.address}))
    assert not client.can_connect(hub[1].address, SERVICE_PORT, 1.0)
    dry = acts.run(pb.Command(id="u0", kind="unblock_client", dry_run=True))
    assert dry.status == "dry-run" and client.address in dry.detail
    assert again.blocked == (client.address,)
    released = acts.run(pb.Command(id="r", kind="release"))
    assert released.status == "done" and client.address in released.detail
    assert client.can_connect(hub[1].address, SERVICE_PORT)
    assert again.blocked == () and not _table(server)
    assert acts.run(pb.Command(id="r2", kind="release")).status == "done"  # idempotent


def test_isolation_keeps_the_allowlist_when_reapplied_and_rolls_back(
    net: tuple[list[Netns], list[Netns]], tmp_path: Path
) -> None:
    hub, leaf = net
    server, collector, jump, other = hub[0], leaf[0], leaf[1], leaf[2]
    jump.popen([sys.executable, RECEIVER, "listen", "0.0.0.0", str(SERVICE_PORT)])
    other.popen([sys.executable, RECEIVER, "listen", "0.0.0.0", str(SERVICE_PORT)])
    server.wait_connect(jump.address, SERVICE_PORT)
    server.wait_connect(other.address, SERVICE_PORT)
    acts = Actions(tmp_path, _firewall(tmp_path, server, collector))
    # The collector's allowlist comes with its command.
    r = acts.run(pb.Command(id="i", kind="isolate", parameters={"allow": f"{jump.address}/32"}))
    assert r.status == "done", r.detail
    listing = _table(server)
    assert f"tcp dport {COLLECTOR_PORT} accept" in listing and "policy drop" in listing
    assert server.can_connect(jump.address, SERVICE_PORT)
    assert not server.can_connect(other.address, SERVICE_PORT, 1.0)

    # Agent restart after a reboot: the same table comes back, allowlist included.
    server.run(["nft", "delete", "table", "inet", "tocsin"])
    fw = _firewall(tmp_path, server, collector)
    assert fw.isolated
    assert fw.reapply().startswith("done")
    assert _table(server) == listing
    assert server.can_connect(jump.address, SERVICE_PORT)
    assert not server.can_connect(other.address, SERVICE_PORT, 1.0)
    assert fw.release()[0] == "done" and not _table(server)

    # A collector that does not answer through the table: rolled back, blocks kept.
    assert fw.block_clients([other.address]).blocked == (other.address,)
    wrong = Firewall(
        tmp_path,
        (collector.address,),
        (9,),  # nothing listens there
        nft=Nft(server.cmd(["nft"])),
        reachable=lambda host, port: server.can_connect(host, port),
    )
    status, detail = wrong.isolate()
    assert status == "failed" and "rolled back" in detail, detail
    assert not wrong.isolated and wrong.blocked == (other.address,)
    assert "policy drop" not in _table(server) and "blocked4" in _table(server)
    assert server.can_connect(collector.address, COLLECTOR_PORT)
    wrong.release()


def _back_within(ns: Netns, want: str, limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if _table(ns) == want:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"table not back within {limit_s} s")


def test_watcher_puts_the_table_back_within_two_seconds(
    net: tuple[list[Netns], list[Netns]], tmp_path: Path
) -> None:
    hub, leaf = net
    server, collector, client = hub[0], leaf[0], leaf[1]
    fw = _firewall(tmp_path, server, collector)
    fw.start()
    try:
        assert fw.isolate()[0] == "done"
        fw.block_clients([client.address])
        want = _table(server)
        for attack in (["flush", "ruleset"], ["delete", "table", "inet", "tocsin"],
                       ["add", "rule", "inet", "tocsin", "input", "accept"]):  # fmt: skip
            assert server.run(["nft", *attack]).returncode == 0
            took = _back_within(server, want, 2.0)
            print(f"nft {' '.join(attack)}: table back after {took * 1000:.0f} ms")
        # The monitor killed as well: the watcher checks on its own and starts another.
        assert fw._monitor is not None
        fw._monitor.kill()
        server.run(["nft", "flush", "ruleset"])
        took = _back_within(server, want, 2.0)
        print(f"monitor killed, then nft flush ruleset: table back after {took * 1000:.0f} ms")
        for _ in range(100):  # the count follows the write by one `nft list`
            if fw.reapplied >= 4:
                break
            time.sleep(0.02)
        assert fw.reapplied >= 4
        settled = fw.reapplied
        time.sleep(1.0)
        assert fw.reapplied == settled  # its own writes never set it off again
        assert not client.can_connect(hub[1].address, SERVICE_PORT, 1.0)
        # Released: nothing is enforced, the watcher leaves the ruleset alone.
        monitor = fw._monitor
        fw.release()
        time.sleep(1.0)
        assert not _table(server)
        assert monitor is not None and monitor.poll() is not None  # no nft monitor left idle
    finally:
        fw.stop()
