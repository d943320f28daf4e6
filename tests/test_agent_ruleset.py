"""The text of tocsin's nftables table (what tests/test_agent_firewall.py applies for real)."""

from __future__ import annotations

import re

from tocsin.agent.ruleset import FirewallState, Pins, parse_address, ruleset

PINS = Pins(("10.1.2.3", "fd00::3"), (7443,), ("10.1.2.53",), ("192.0.2.0/24",))


def test_empty_state_only_deletes_the_table() -> None:
    assert ruleset(PINS, FirewallState()) == "table inet tocsin\ndelete table inet tocsin\n"


def test_isolation_pins_collector_and_keeps_dns_to_resolvers_only() -> None:
    text = ruleset(PINS, FirewallState(isolated=True, allow=("198.51.100.7/32",)))
    assert "ip daddr { 10.1.2.3 } tcp dport 7443 accept" in text
    assert "ip6 saddr { fd00::3 } tcp sport 7443 accept" in text
    assert "ip daddr { 10.1.2.53 } meta l4proto { udp, tcp } th dport 53 accept" in text
    assert "ip daddr 192.0.2.0/24 accept" in text and "ip saddr 198.51.100.7/32 accept" in text
    for line in text.splitlines():  # port 53 is never open to any address
        if re.search(r"\b53\b", line):
            assert "saddr {" in line or "daddr {" in line, line
    assert "policy drop" in text and "@blocked4" in text


def test_blocked_clients_without_isolation() -> None:
    text = ruleset(PINS, FirewallState(blocked=("10.9.9.9", "fd00::9")))
    assert "set blocked4 { type ipv4_addr; elements = { 10.9.9.9 }; }" in text
    assert "set blocked6 { type ipv6_addr; elements = { fd00::9 }; }" in text
    assert "ip saddr @blocked4 drop" in text and "ip6 daddr @blocked6 drop" in text
    assert "policy drop" not in text  # a block is not an isolation


def test_addresses_are_read_as_the_kernel_sees_them() -> None:
    assert str(parse_address("::ffff:10.0.0.5")) == "10.0.0.5"  # a dual-stack socket's peer
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"


def test_isolation_keeps_every_collector_port() -> None:
    """An agent with several collectors keeps each reachable (it may fail over while isolated)."""
    pins = Pins(("10.1.2.3", "10.1.2.4"), (7443, 7444), ("10.1.2.53",))
    text = ruleset(pins, FirewallState(isolated=True))
    assert "ip daddr { 10.1.2.3, 10.1.2.4 } tcp dport { 7443, 7444 } accept" in text
    assert "ip saddr { 10.1.2.3, 10.1.2.4 } tcp sport { 7443, 7444 } accept" in text
