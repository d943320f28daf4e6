"""The agent's one door to nftables: host isolation and per-client blocks in tocsin's own table.

Contract:

- Everything tocsin does to the packet filter lives in ``table inet tocsin``, written whole and
  atomically (one ``nft -f -`` transaction: create, delete, recreate) from the desired state held
  here. Nothing else in the agent runs ``nft``. With nothing to enforce (not isolated, no client
  blocked) the table does not exist.
- Pinned when the ``Firewall`` is built (at agent start), never re-resolved afterwards: the
  collectors' addresses and ports (every collector the agent may stream to), the DNS
  resolvers, the agent's own allowlist (the runtime
  resolves them with ``tocsin.agent.ruleset``'s ``pin_addresses`` and ``system_resolvers``,
  which also renders the script).
- ``isolate(allow)``: drop everything except loopback, the collectors' pinned addresses AND
  ports, DNS to and from the resolvers only, DHCP, IPv6 neighbour discovery and the allowlist (the
  agent's own plus ``allow``). If no pinned collector address answers afterwards, the isolation
  is rolled back (client blocks stay) and the result says so.
- ``block_clients(addrs)``: drop every packet from and to each address (sets ``blocked4`` and
  ``blocked6``), independent of isolation. Refused, per address: the collector's pinned
  addresses, loopback, unspecified or multicast addresses, this host's own addresses and anything
  inside the allowlist. ``unblock_clients(addrs or None)`` returns the addresses it unblocked
  (None: all). ``release()`` lifts the isolation AND unblocks every client.
- The desired state (isolated, the isolation's allowlist, blocked clients, pinned collector
  addresses) is written to ``STATE_DIR/firewall.json`` before a change returns, and
  ``reapply()`` puts it back at start, keeping the allowlist, without rolling back.
- ``start()`` runs the watcher thread ``tocsin-firewall``: it follows ``nft monitor`` and, when
  our table is removed or altered while there is something to enforce (``nft flush ruleset``,
  ``nft delete table inet tocsin``, a rule added), writes it again; without monitor events it
  still checks every ``CHECK_S``. ``stop()`` ends it.
- Every public method is thread-safe; none raises for a bad address (it is refused). A failed
  ``nft`` run raises ``ResponseError`` from the typed methods and becomes status ``failed`` in
  ``command``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from tocsin.agent.ruleset import (
    TABLE,
    FirewallState,
    IPAddress,
    Pins,
    parse_address,
    ruleset,
)
from tocsin.v1.errors import ResponseError

log = logging.getLogger(__name__)

# Command kinds handled here (tocsin.v1.Command.kind); parameters are comma-separated lists.
KINDS = frozenset({"isolate", "release", "block_client", "unblock_client"})
# Without monitor events, the watcher still compares the table with what it wrote this often.
CHECK_S = 5.0
# When ``nft monitor`` cannot run or dies, the watcher checks this often until it runs again.
MONITOR_RETRY_S = 0.5
Reachable = Callable[[str, int], bool]


class Nft:
    """How ``nft`` is run: ``prefix`` then the arguments (tests prefix ``ip netns exec NS``).

    ``started`` holds the pids of the last ``RECENT_PIDS`` nft processes run here, so that a
    ruleset change can be told apart from one made by anybody else (``nft monitor`` names the
    process behind each generation)."""

    RECENT_PIDS = 256

    def __init__(self, prefix: Sequence[str] = ("nft",), timeout_s: float = 10.0) -> None:
        self.prefix = list(prefix)
        self.timeout_s = timeout_s
        self.started: deque[int] = deque(maxlen=self.RECENT_PIDS)

    def run(self, args: Sequence[str], stdin: str = "") -> tuple[int, str]:
        """(returncode, stderr + stdout); 127 when nft cannot be run at all."""
        try:
            proc = subprocess.Popen(
                [*self.prefix, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            return 127, str(exc)
        self.started.append(proc.pid)
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            return 127, str(exc)
        return proc.returncode, (err + out).strip()

    def monitor(self) -> subprocess.Popen[bytes]:
        """``nft monitor``: one line per ruleset change, ``# new generation`` after each batch."""
        return subprocess.Popen(
            [*self.prefix, "monitor"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )


def tcp_reachable(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _split(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


@dataclass(frozen=True)
class BlockResult:
    """The outcome of ``block_clients``: addresses now blocked, and (address, why) refused."""

    blocked: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _local_addresses() -> set[str]:
    out: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.add(str(parse_address(a.address)))
                except ValueError:
                    continue
    return out


class Firewall:
    """tocsin's nftables table: isolation and client blocks (see module contract)."""

    def __init__(
        self,
        state_dir: Path,
        collector: Sequence[str] = (),
        collector_ports: Sequence[int] = (),
        allow: Sequence[str] = (),
        resolvers: Sequence[str] = (),
        nft: Nft | None = None,
        reachable: Reachable = tcp_reachable,
        local_addresses: Callable[[], set[str]] = _local_addresses,
    ) -> None:
        self._nft = nft or Nft()
        self._reachable = reachable
        self._local_addresses = local_addresses
        self._path = state_dir / "firewall.json"
        self._legacy_path = state_dir / "actions.json"
        self._lock = threading.Lock()
        saved = self._load()
        pinned = tuple(str(parse_address(a)) for a in collector)
        if not pinned:
            # Name resolution failed at this start: keep the addresses pinned last time.
            pinned = _valid(saved.get("collector"), parse_address)
        self.pins = Pins(
            collector=pinned,
            collector_ports=tuple(collector_ports),
            resolvers=tuple(str(parse_address(a)) for a in resolvers),
            allow=tuple(str(ipaddress.ip_network(c, strict=False)) for c in allow),
        )
        self._state = FirewallState(
            isolated=bool(saved.get("isolated", False)),
            allow=_valid(saved.get("allow"), lambda a: ipaddress.ip_network(a, strict=False)),
            blocked=_valid(saved.get("blocked"), parse_address),
        )
        # What ``nft list table`` said right after our last write (None: table absent).
        self._written: str | None = None
        self.reapplied = 0  # times the watcher found the table removed or altered
        self._stop = threading.Event()
        self._changed = threading.Event()  # the desired state changed (wakes the watcher)
        self._thread: threading.Thread | None = None
        self._monitor: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ state
    @property
    def isolated(self) -> bool:
        return self._state.isolated

    @property
    def blocked(self) -> tuple[str, ...]:
        return self._state.blocked

    def _load(self) -> dict[str, Any]:
        for path in (self._path, self._legacy_path):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            if path == self._legacy_path:  # written before firewall.json existed
                return {"isolated": bool(data.get("isolated", False))}
            return data
        return {}

    def _save(self, state: FirewallState) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "isolated": state.isolated,
                    "allow": list(state.allow),
                    "blocked": list(state.blocked),
                    "collector": list(self.pins.collector),
                }
            )
        )
        os.replace(tmp, self._path)

    def _write(self, state: FirewallState) -> None:
        """Make the table enforce ``state``, then remember it (lock held); ResponseError."""
        rc, out = self._nft.run(["-f", "-"], ruleset(self.pins, state))
        if rc != 0:
            raise ResponseError(f"nft failed: {out[:300]}")
        self._state = state
        self._changed.set()
        self._save(state)
        self._written = self._listing() if not state.empty else None

    def _listing(self) -> str | None:
        rc, out = self._nft.run(["list", "table", "inet", TABLE])
        return out if rc == 0 else None

    def _allowlisted(self, addr: IPAddress) -> str:
        for cidr in (*self.pins.allow, *self._state.allow):
            if addr in ipaddress.ip_network(cidr, strict=False):
                return cidr
        return ""

    def _collector_answers(self) -> bool:
        """Whether some pinned collector address answers on some collector port."""
        pins = self.pins
        return any(
            self._reachable(ip, port) for port in pins.collector_ports for ip in pins.collector
        )

    # ------------------------------------------------------------ isolation
    def isolate(self, allow: Sequence[str] = (), dry_run: bool = False) -> tuple[str, str]:
        """Apply the isolation, rolled back if the collector stops answering: (status, detail)."""
        try:
            extra = tuple(sorted({str(ipaddress.ip_network(c, strict=False)) for c in allow}))
        except ValueError as exc:
            return "failed", f"bad isolation parameters: {exc}"
        pins = self.pins
        if not pins.collector or not pins.collector_ports:
            return "failed", "the collector's address was not pinned at agent start"
        keeps = (
            f"{', '.join(pins.collector)} port {', '.join(map(str, pins.collector_ports))}, "
            f"DNS to {', '.join(pins.resolvers) or 'no resolver'}, DHCP and "
            f"{list(sorted(set(pins.allow) | set(extra))) or 'no allowlist'}"
        )
        if dry_run:
            return "dry-run", f"would drop all traffic except {keeps}"
        with self._lock:
            before = self._state
            try:
                self._write(replace(before, isolated=True, allow=extra))
            except ResponseError as exc:
                return "failed", str(exc)
            if not self._collector_answers():
                try:
                    self._write(before)
                except ResponseError as exc:
                    return "failed", f"would cut the collector, and rollback failed: {exc}"
                return "failed", "failed: would cut the collector (rolled back)"
        return "done", f"isolated: only {keeps}"

    def release(self, dry_run: bool = False) -> tuple[str, str]:
        """Lift the isolation and unblock every client (idempotent): (status, detail)."""
        with self._lock:
            blocked = self._state.blocked
            if dry_run:
                return "dry-run", f"would lift the isolation and unblock {list(blocked)}"
            try:
                self._write(FirewallState())
            except ResponseError as exc:
                return "failed", str(exc)
        unblocked = f"; unblocked {', '.join(blocked)}" if blocked else ""
        return "done", f"isolation lifted{unblocked}"

    def reapply(self) -> str:
        """Put the persisted state back at agent start; a status line ("" if nothing to do).

        No rollback here: the isolation was checked when it was first applied, and a host under
        an open incident stays cut even if the collector does not answer right now.
        """
        with self._lock:
            state = self._state
            if state.empty:
                return ""
            try:
                self._write(state)
            except ResponseError as exc:
                return f"failed: {exc}"
        parts = []
        if state.isolated:
            parts.append(f"isolated, allowlist {sorted(set(self.pins.allow) | set(state.allow))}")
            if not self._collector_answers():
                log.warning("isolated and the collector %s does not answer", self.pins.collector)
        if state.blocked:
            parts.append(f"blocked clients {list(state.blocked)}")
        return "done: " + "; ".join(parts)

    # ------------------------------------------------------------ client blocks
    def _refusal(self, addr: IPAddress) -> str:
        if addr.is_loopback:
            return "loopback"
        if addr.is_unspecified or addr.is_multicast:
            return "not a client address"
        if str(addr) in self.pins.collector:
            return "the collector's address"
        cidr = self._allowlisted(addr)
        if cidr:
            return f"allowlisted ({cidr})"
        if str(addr) in self._local_addresses():
            return "one of this host's own addresses"
        return ""

    def block_clients(self, addrs: Iterable[str], dry_run: bool = False) -> BlockResult:
        """Drop all traffic from and to each address (refusals per address); ResponseError."""
        blocked: list[str] = []
        refused: list[tuple[str, str]] = []
        with self._lock:
            for text in addrs:
                try:
                    addr = parse_address(text)
                except ValueError:
                    refused.append((text, "not an IP address"))
                    continue
                why = self._refusal(addr)
                if why:
                    refused.append((str(addr), why))
                elif str(addr) not in blocked:
                    blocked.append(str(addr))
            now = tuple(sorted(set(self._state.blocked) | set(blocked), key=_sort_key))
            if blocked and not dry_run and now != self._state.blocked:
                self._write(replace(self._state, blocked=now))
        return BlockResult(tuple(blocked), tuple(refused))

    def unblock_clients(
        self, addrs: Iterable[str] | None = None, dry_run: bool = False
    ) -> list[str]:
        """Stop blocking ``addrs`` (None: every client); the addresses unblocked. ResponseError."""
        with self._lock:
            if addrs is None:
                gone = list(self._state.blocked)
            else:
                wanted = set()
                for text in addrs:
                    try:
                        wanted.add(str(parse_address(text)))
                    except ValueError:
                        continue
                gone = [a for a in self._state.blocked if a in wanted]
            if gone and not dry_run:
                keep = tuple(a for a in self._state.blocked if a not in gone)
                self._write(replace(self._state, blocked=keep))
        return gone

    # ------------------------------------------------------------ commands
    def command(self, kind: str, parameters: Mapping[str, str], dry_run: bool) -> tuple[str, str]:
        """Carry out one command of ``KINDS``: (status, detail). Parameters: ``allow`` (isolate),
        ``addresses`` (block_client; unblock_client, where none means every client)."""
        if kind == "isolate":
            return self.isolate(_split(parameters.get("allow", "")), dry_run)
        if kind == "release":
            return self.release(dry_run)
        addresses = _split(parameters.get("addresses", ""))
        would = "would " if dry_run else ""
        try:
            if kind == "block_client":
                if not addresses:
                    return "refused", "no addresses given"
                res = self.block_clients(addresses, dry_run)
                refused = "; ".join(f"{a}: {why}" for a, why in res.refused)
                if not res.blocked:
                    return "refused", f"refused {refused}"
                detail = f"{would}block {', '.join(res.blocked)}"
                return ("dry-run" if dry_run else "done"), detail + (
                    f"; refused {refused}" if refused else ""
                )
            if kind == "unblock_client":
                gone = self.unblock_clients(addresses or None, dry_run)
                detail = f"{would}unblock {', '.join(gone)}" if gone else "no client was blocked"
                return ("dry-run" if dry_run else "done"), detail
        except ResponseError as exc:
            return "failed", str(exc)
        return "refused", f"unknown firewall command {kind!r}"

    # ------------------------------------------------------------ watcher
    def enforce(self, changed: bool = False) -> bool:
        """Write the table again if it is missing or differs from what we wrote (or, with
        ``changed``, because someone else just changed it); True if it was written."""
        with self._lock:
            if self._state.empty:
                return False
            if not changed:
                listing = self._listing()
                if listing is not None and listing == self._written:
                    return False
            try:
                self._write(self._state)
            except ResponseError as exc:
                log.error("table inet %s was removed or altered; cannot re-apply: %s", TABLE, exc)
                return False
            self.reapplied += 1
        log.warning("table inet %s was removed or altered: re-applied", TABLE)
        return True

    def start(self) -> None:
        """Start the watcher thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="tocsin-firewall", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        proc = self._monitor
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        """Idle while there is nothing to enforce; otherwise follow ``nft monitor``."""
        complained = False
        while not self._stop.is_set():
            if self._state.empty:
                self._changed.wait()
                self._changed.clear()
                continue
            try:
                proc: subprocess.Popen[bytes] | None = self._nft.monitor()
            except OSError as exc:
                proc = None
                if not complained:
                    log.warning("nft monitor cannot run (%s): checking every %.1f s instead",
                                exc, MONITOR_RETRY_S)  # fmt: skip
                    complained = True
            if proc is not None:
                self._monitor = proc
                self.enforce()  # what happened before the monitor listened
                started = time.monotonic()
                self._follow(proc)
                if proc.poll() is None:
                    proc.terminate()
                proc.wait()
                if time.monotonic() - started < 1.0 and not complained:
                    log.warning("nft monitor ended at once: checking every %.1f s instead",
                                MONITOR_RETRY_S)  # fmt: skip
                    complained = True
            if self._stop.wait(MONITOR_RETRY_S):
                break
            self.enforce()

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        """Read monitor events until it ends, stop() or nothing is left to enforce. After each
        batch that touched our table (``# new generation N by process PID``), re-write it unless
        the batch was ours; compare it with what we wrote every ``CHECK_S`` as well."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = b""
        touched = False
        checked = time.monotonic()
        while not self._stop.is_set() and not self._state.empty:
            ready, _, _ = select.select([fd], [], [], MONITOR_RETRY_S)
            if time.monotonic() - checked >= CHECK_S:
                self.enforce()
                checked = time.monotonic()
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if f"inet {TABLE}".encode() in line:
                    touched = True
                elif line.startswith(b"# new generation") and touched:
                    touched = False
                    by = _GENERATION_BY.search(line)
                    if by is None:
                        self.enforce()
                    elif int(by.group(1)) not in self._nft.started:
                        self.enforce(changed=True)


_GENERATION_BY = re.compile(rb"by process (\d+)")


def _valid(saved: object, parse: Callable[[str], object]) -> tuple[str, ...]:
    """The entries of a persisted list that still parse (a damaged file loses only those)."""
    out: list[str] = []
    for item in saved if isinstance(saved, list) else []:
        try:
            out.append(str(parse(str(item))))
        except ValueError:
            log.warning("firewall.json: ignoring %r", item)
    return tuple(out)


def _sort_key(addr: str) -> tuple[int, int]:
    a = ipaddress.ip_address(addr)
    return a.version, int(a)
