"""Network namespaces joined by a veth pair: real test hosts on one machine.

Only addresses inside namespaces created here are ever used (a /24 chosen at
random in 10.231.0.0/16 per pair). Everything is removed on exit, even when the
test fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass(frozen=True)
class Netns:
    name: str
    address: str

    def cmd(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def popen(self, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(args), **kw)  # type: ignore[call-overload,no-any-return]

    def run(
        self, args: Sequence[str], timeout: float = 60, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            self.cmd(args), capture_output=True, text=True, timeout=timeout, **kw
        )

    def can_connect(self, host: str, port: int, timeout_s: float = 1.5) -> bool:
        """Whether a TCP connection from inside this namespace to host:port succeeds."""
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(({host!r},{port}),timeout={timeout_s})\n"
            "s.close()\n"
        )
        res = self.run([sys.executable, "-c", code], timeout=timeout_s + 10)
        return res.returncode == 0

    def wait_connect(self, host: str, port: int, deadline_s: float = 20) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.can_connect(host, port, 0.5):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{host}:{port} not reachable from {self.name}")


def link(a: Netns, dev_a: str, b: Netns, dev_b: str) -> None:
    """Join ``a`` and ``b`` by a veth pair (``dev_a`` in a, ``dev_b`` in b), addresses /24, up."""
    _run("ip", "link", "add", dev_a, "netns", a.name, "type", "veth", "peer", "name", dev_b,
         "netns", b.name)  # fmt: skip
    for ns, dev in ((a, dev_a), (b, dev_b)):
        _run("ip", "-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", dev)
        _run("ip", "-n", ns.name, "link", "set", dev, "up")


def remove(names: Sequence[str]) -> None:
    """Kill every process left in the namespaces ``names``, then delete them."""
    for name in names:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def veth_pair(prefix: str = "tcs") -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces, ``.1`` and ``.2`` of a fresh /24, joined by a veth pair."""
    tag = f"{random.randrange(16**5):05x}"
    subnet = f"10.231.{random.randrange(1, 255)}"
    a = Netns(f"{prefix}-{tag}-a", f"{subnet}.1")
    b = Netns(f"{prefix}-{tag}-b", f"{subnet}.2")
    veth_a, veth_b = f"tv{tag}a", f"tv{tag}b"
    created: list[str] = []
    try:
        for ns in (a, b):
            _run("ip", "netns", "add", ns.name)
            created.append(ns.name)
            _run("ip", "-n", ns.name, "link", "set", "lo", "up")
        link(a, veth_a, b, veth_b)
        yield a, b
    finally:
        remove(created)


@contextmanager
def star(leaves: int, prefix: str = "tcs") -> Iterator[tuple[list[Netns], list[Netns]]]:
    """A hub namespace joined to ``leaves`` namespaces, each by a veth pair on its own /24.

    Yields (the hub's address on each leg, the leaves): ``hub[i]`` and ``leaf[i]`` share a /24
    (``.1`` and ``.2``); every ``hub[i]`` names the same namespace.
    """
    tag = f"{random.randrange(16**5):05x}"
    subnets = random.sample(range(1, 255), leaves)
    hub_name = f"{prefix}-{tag}-h"
    hub = [Netns(hub_name, f"10.233.{s}.1") for s in subnets]
    leaf = [Netns(f"{prefix}-{tag}-{i}", f"10.233.{s}.2") for i, s in enumerate(subnets)]
    created: list[str] = []
    try:
        for name in [hub_name, *(n.name for n in leaf)]:
            _run("ip", "netns", "add", name)
            created.append(name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        for i, (near, far) in enumerate(zip(hub, leaf, strict=True)):
            link(near, f"ts{tag}{i}a", far, f"ts{tag}{i}b")
        yield hub, leaf
    finally:
        remove(created)
