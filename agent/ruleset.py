"""What tocsin's nftables table says: addresses, pins and the rendered ``nft`` script.

Contract: pure functions and frozen values, no ``nft`` run here (``firewall.py`` is the one
door that runs it). ``parse_address`` reads one address (an IPv4-mapped IPv6 address is its
IPv4 address); ``pin_addresses(host)`` resolves a name once; ``system_resolvers()`` reads the
nameservers of /etc/resolv.conf; ``ruleset(pins, state)`` is the whole ``nft -f`` script that
makes ``table inet tocsin`` enforce ``state`` and nothing else (with an empty state it only
deletes the table). Rendering is deterministic: the same pins and state give the same text.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TABLE = "tocsin"
RESOLV_CONF = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> IPAddress:
    """One IP address (an IPv4-mapped IPv6 address is its IPv4 address); ValueError if not."""
    addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def pin_addresses(host: str) -> tuple[str, ...]:
    """Every address ``host`` resolves to now (an IP literal resolves to itself); OSError."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return tuple(dict.fromkeys(str(parse_address(str(i[4][0]))) for i in infos))


def system_resolvers(paths: Sequence[Path] = RESOLV_CONF) -> tuple[str, ...]:
    """The ``nameserver`` addresses of /etc/resolv.conf; when they are all on loopback (a local
    stub such as systemd-resolved), those of the next file too (the stub's upstream servers)."""
    found: list[str] = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                try:
                    found.append(str(parse_address(words[1])))
                except ValueError:
                    continue
        if found and not all(parse_address(a).is_loopback for a in found):
            break
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class Pins:
    """What the firewall fixed at agent start."""

    collector: tuple[str, ...] = ()
    collector_ports: tuple[int, ...] = ()
    resolvers: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class FirewallState:
    """What the table must enforce (persisted)."""

    isolated: bool = False
    # The isolation's allowlist beyond the agent's own (the command's ``allow``), as CIDRs.
    allow: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.isolated and not self.blocked


def _family(addr: str) -> str:
    return "ip6" if ipaddress.ip_address(addr).version == 6 else "ip"


def _by_family(addrs: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"ip": [], "ip6": []}
    for a in addrs:
        out[_family(a)].append(a)
    return out


def _elements(addrs: Sequence[str]) -> str:
    return "{ " + ", ".join(addrs) + " }"


def ruleset(pins: Pins, state: FirewallState) -> str:
    """The ``nft -f`` script that makes tocsin's table enforce ``state`` (and only that)."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    if state.empty:
        return "\n".join(lines) + "\n"
    blocked = _by_family(state.blocked)
    lines += [
        f"table inet {TABLE} {{",
        f"  set blocked4 {{ type ipv4_addr; {_set_elements(blocked['ip'])}}}",
        f"  set blocked6 {{ type ipv6_addr; {_set_elements(blocked['ip6'])}}}",
        "  chain blocked_in {",
        "    type filter hook input priority -20; policy accept;",
        "    iif lo accept",
        "    ip saddr @blocked4 drop",
        "    ip6 saddr @blocked6 drop",
        "  }",
        "  chain blocked_out {",
        "    type filter hook output priority -20; policy accept;",
        "    oif lo accept",
        "    ip daddr @blocked4 drop",
        "    ip6 daddr @blocked6 drop",
        "  }",
    ]
    if state.isolated:
        lines += _isolation_chains(pins, state)
    lines += ["}", ""]
    return "\n".join(lines)


def _set_elements(addrs: Sequence[str]) -> str:
    return f"elements = {_elements(addrs)}; " if addrs else ""


def _isolation_chains(pins: Pins, state: FirewallState) -> list[str]:
    ports = pins.collector_ports
    port = str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, ports)) + " }"
    collector = _by_family(pins.collector)
    resolvers = _by_family(pins.resolvers)
    allow_in: list[str] = []
    allow_out: list[str] = []
    for cidr in sorted(set(pins.allow) | set(state.allow)):
        net = ipaddress.ip_network(cidr, strict=False)
        fam = "ip6" if net.version == 6 else "ip"
        allow_in.append(f"    {fam} saddr {net} accept")
        allow_out.append(f"    {fam} daddr {net} accept")
    coll_in, coll_out, dns_in, dns_out = [], [], [], []
    for fam in ("ip", "ip6"):
        if collector[fam]:
            c = _elements(collector[fam])
            coll_in.append(f"    {fam} saddr {c} tcp sport {port} accept")
            coll_out.append(f"    {fam} daddr {c} tcp dport {port} accept")
        if resolvers[fam]:
            r = _elements(resolvers[fam])
            dns_in.append(
                f"    {fam} saddr {r} meta l4proto {{ udp, tcp }} th sport 53 "
                "ct state established accept"
            )
            dns_out.append(f"    {fam} daddr {r} meta l4proto {{ udp, tcp }} th dport 53 accept")
    return [
        "  chain input {",
        "    type filter hook input priority -10; policy drop;",
        "    iif lo accept",
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept",
        *coll_in,
        *dns_in,
        "    udp sport { 67, 68 } udp dport { 67, 68 } accept",
        *allow_in,
        "  }",
        "  chain output {",
        "    type filter hook output priority -10; policy drop;",
        "    oif lo accept",
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
        *coll_out,
        *dns_out,
        "    udp sport { 67, 68 } udp dport { 67, 68 } accept",
        *allow_out,
        "  }",
    ]
