"""Response actions on the agent's host: suspend/resume/kill process trees, isolate/release.

Contract: ``Actions.run(command)`` carries out one ``tocsin.v1.Command`` and
returns its ``ActionResult`` (status done | failed | dry-run | refused); it
never raises for a bad command. With ``dry_run`` it reports what it would do and
changes nothing.

- suspend(pids): SIGSTOP each given tree root and all its descendants. Never
  PID 1, never the agent or its ancestors, never a protected name or pid.
  The set of pids tocsin stopped is persisted in the state dir.
- resume / kill: SIGCONT (then SIGKILL for kill) the given pids, or, when none
  are given, every pid tocsin suspended.
- isolate(collector_host, collector_port, allow): an nftables ``table inet
  tocsin`` that drops everything except loopback, the collector's IP AND port,
  DNS, DHCP and the allowlist. Rolled back if the collector is unreachable
  afterwards. Persisted and re-applied on agent start (``reapply``).
- release: delete the table (idempotent).
The firewall runner (``nft -f -`` by default) and the signal sender are
injected so tests can run them inside a network namespace.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.text import wire_text

log = logging.getLogger(__name__)

PROTECTED_NAMES = frozenset(
    {
        "systemd",
        "init",
        "sshd",
        "tocsin-agent",
        "dbus-daemon",
        "journald",
        "systemd-journald",
        "kthreadd",
        "smbd",
        "nmbd",
    }
)
TABLE = "tocsin"
KINDS = frozenset({"suspend", "resume", "kill", "isolate", "release"})

# (args, stdin text) -> (returncode, combined output)
NftRunner = Callable[[list[str], str], tuple[int, str]]
Reachable = Callable[[str, int], bool]


def subprocess_nft(args: list[str], stdin: str) -> tuple[int, str]:
    """Run ``nft`` with ``args`` and ``stdin``; (returncode, stderr+stdout)."""
    try:
        cp = subprocess.run(
            ["nft", *args], input=stdin, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return cp.returncode, (cp.stderr + cp.stdout).strip()


def tcp_reachable(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def ruleset(collector_ip: str, collector_port: int, allow: list[str]) -> str:
    """The nft script that creates tocsin's isolation table (replacing any previous one)."""
    fam = "ip6" if ipaddress.ip_address(collector_ip).version == 6 else "ip"
    allow_in: list[str] = []
    allow_out: list[str] = []
    for cidr in allow:
        net = ipaddress.ip_network(cidr, strict=False)
        f = "ip6" if net.version == 6 else "ip"
        allow_in.append(f"    {f} saddr {net} accept")
        allow_out.append(f"    {f} daddr {net} accept")
    return "\n".join(
        [
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "  chain input {",
            "    type filter hook input priority -10; policy drop;",
            "    iif lo accept",
            "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept",
            f"    {fam} saddr {collector_ip} tcp sport {collector_port} accept",
            "    udp sport 53 accept",
            "    tcp sport 53 ct state established accept",
            "    udp sport { 67, 68 } udp dport { 67, 68 } accept",
            *allow_in,
            "  }",
            "  chain output {",
            "    type filter hook output priority -10; policy drop;",
            "    oif lo accept",
            "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
            f"    {fam} daddr {collector_ip} tcp dport {collector_port} accept",
            "    udp dport 53 accept",
            "    tcp dport 53 accept",
            "    udp sport { 67, 68 } udp dport { 67, 68 } accept",
            *allow_out,
            "  }",
            "}",
            "",
        ]
    )


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class Actions:
    """Carries out collector commands and local tripwire decisions (see module contract)."""

    def __init__(
        self,
        state_dir: Path,
        collector_host: str = "",
        collector_port: int = 0,
        allow: list[str] | None = None,
        nft: NftRunner = subprocess_nft,
        reachable: Reachable = tcp_reachable,
        send_signal: Callable[[int, int], None] = os.kill,
        protected_pids: set[int] | None = None,
        self_pid: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.collector_host = collector_host
        self.collector_port = collector_port
        self.allow = list(allow or [])
        self._nft = nft
        self._reachable = reachable
        self._signal = send_signal
        self._self_pid = self_pid if self_pid is not None else os.getpid()
        self._protected = set(protected_pids or set()) | {0, 1} | self._ancestors()
        self._lock = threading.Lock()
        self._state_path = state_dir / "actions.json"
        state = self._load()
        self.suspended: set[int] = set(state.get("suspended", []))
        self.isolated: bool = bool(state.get("isolated", False))
        # (kind, status) -> how many times (metrics).
        self.outcomes: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------ state
    def _ancestors(self) -> set[int]:
        out = {self._self_pid}
        try:
            for p in psutil.Process(self._self_pid).parents():
                out.add(p.pid)
        except psutil.Error:
            pass
        return out

    def _load(self) -> dict[str, object]:
        try:
            data = json.loads(self._state_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"suspended": sorted(self.suspended), "isolated": self.isolated}))
        os.replace(tmp, self._state_path)

    # ------------------------------------------------------------ processes
    def _refusal(self, pid: int) -> str:
        if pid in self._protected:
            return f"pid {pid} is protected (init, the agent or its ancestors)"
        try:
            name = psutil.Process(pid).name()
        except psutil.Error:
            return f"pid {pid} does not exist"
        if name in PROTECTED_NAMES:
            return f"pid {pid} ({name}) is a protected process"
        return ""

    def _tree(self, pid: int) -> list[int]:
        try:
            kids = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return [pid]
        return [pid] + [k.pid for k in kids if k.pid not in self._protected]

    def suspend(self, pids: list[int], dry_run: bool = False) -> tuple[str, str, list[int]]:
        """SIGSTOP the trees of ``pids``: (status, detail, pids stopped or to stop)."""
        targets: list[int] = []
        refusals = []
        for root in pids:
            why = self._refusal(root)
            if why:
                refusals.append(why)
                continue
            targets.extend(p for p in self._tree(root) if p not in targets)
        if not targets:
            return "refused", "; ".join(refusals) or "no pids given", []
        if dry_run:
            return "dry-run", f"would SIGSTOP {len(targets)} processes", targets
        stopped = []
        # Parent first: a stopped parent cannot fork replacements for its children.
        for pid in targets:
            try:
                self._signal(pid, signal.SIGSTOP)
                stopped.append(pid)
            except OSError as exc:
                refusals.append(f"pid {pid}: {exc.strerror}")
        with self._lock:
            self.suspended.update(stopped)
            self._save()
        status = "done" if stopped else "failed"
        detail = f"stopped {len(stopped)} processes" + (
            f"; {'; '.join(refusals)}" if refusals else ""
        )
        return status, detail, stopped

    def resume(
        self, pids: list[int], kill: bool = False, dry_run: bool = False
    ) -> tuple[str, str, list[int]]:
        """SIGCONT (and SIGKILL if ``kill``) ``pids``, or all suspended when empty."""
        with self._lock:
            roots = list(pids) or sorted(self.suspended)
        targets: list[int] = []
        for root in roots:
            if root in self._protected:
                continue
            targets.extend(p for p in self._tree(root) if p not in targets)
        verb = "SIGKILL" if kill else "SIGCONT"
        if dry_run:
            return "dry-run", f"would {verb} {len(targets)} processes", targets
        done = []
        for pid in targets:
            try:
                self._signal(pid, signal.SIGCONT)
                if kill:
                    self._signal(pid, signal.SIGKILL)
                done.append(pid)
            except ProcessLookupError:
                done.append(pid)
            except OSError as exc:
                log.warning("%s %d: %s", verb, pid, exc)
        with self._lock:
            self.suspended.difference_update(targets)
            self.suspended.difference_update(roots)
            self._save()
        return "done", f"{verb} sent to {len(done)} processes", done

    # ------------------------------------------------------------ network
    def _collector_ip(self, host: str) -> str:
        return socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0]

    def isolate(
        self, host: str = "", port: int = 0, allow: list[str] | None = None, dry_run: bool = False
    ) -> tuple[str, str]:
        """Apply the isolation table; roll back if the collector becomes unreachable."""
        host = host or self.collector_host
        port = port or self.collector_port
        # The agent's own allowlist (the admin's jump host) is always kept.
        allow = sorted(set(self.allow) | set(allow or []))
        try:
            ip = self._collector_ip(host)
            script = ruleset(ip, port, allow)
        except (OSError, ValueError) as exc:
            return "failed", f"bad isolation parameters: {exc}"
        if dry_run:
            return "dry-run", f"would drop all traffic except {ip}:{port}, DNS, DHCP, {allow}"
        rc, out = self._nft(["-f", "-"], script)
        if rc != 0:
            return "failed", f"nft failed: {out[:300]}"
        if not self._reachable(ip, port):
            self._nft(["delete", "table", "inet", TABLE], "")
            return "failed", "failed: would cut the collector (rolled back)"
        with self._lock:
            self.isolated = True
            self._save()
        return "done", f"isolated: only {ip}:{port}, DNS, DHCP and {allow or 'no allowlist'}"

    def release(self, dry_run: bool = False) -> tuple[str, str]:
        """Delete the isolation table (idempotent)."""
        if dry_run:
            return "dry-run", f"would delete table inet {TABLE}"
        rc, out = self._nft(["delete", "table", "inet", TABLE], "")
        if rc != 0 and "No such file" not in out and "does not exist" not in out:
            # Check whether it is really gone before reporting a failure.
            rc2, listing = self._nft(["list", "tables"], "")
            if rc2 == 0 and f"inet {TABLE}" in listing:
                return "failed", f"nft failed: {out[:300]}"
        with self._lock:
            self.isolated = False
            self._save()
        return "done", "isolation lifted"

    def reapply(self) -> str:
        """Re-apply a persisted isolation at agent start; returns a status line ("" if none)."""
        if not self.isolated:
            return ""
        status, detail = self.isolate()
        return f"{status}: {detail}"

    # ------------------------------------------------------------ commands
    def run(self, cmd: pb.Command, local: bool = False) -> pb.ActionResult:
        """Carry out ``cmd`` and report (never raises for a bad command)."""
        pids: list[int] = []
        kind = cmd.kind
        try:
            if kind == "suspend":
                status, detail, pids = self.suspend(list(cmd.pids), cmd.dry_run)
            elif kind in ("resume", "kill"):
                status, detail, pids = self.resume(list(cmd.pids), kind == "kill", cmd.dry_run)
            elif kind == "isolate":
                params = cmd.parameters
                allow = [a for a in params.get("allow", "").split(",") if a] or None
                status, detail = self.isolate(
                    params.get("collector_host", ""),
                    int(params.get("collector_port", "0") or 0),
                    allow,
                    cmd.dry_run,
                )
            elif kind == "release":
                status, detail = self.release(cmd.dry_run)
                proc = cmd.parameters.get("processes", "keep")
                if proc in ("resume", "kill"):
                    _s2, d2, pids = self.resume([], proc == "kill", cmd.dry_run)
                    detail += f"; {d2}"
            else:
                status, detail = "refused", f"unknown command kind {kind!r}"
        except Exception as exc:  # a bug, but the stream must report it, not die
            log.exception("command %s failed", cmd.id)
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
        self.outcomes[(kind if kind in KINDS else "unknown", status)] += 1
        return pb.ActionResult(
            command_id=cmd.id,
            kind=kind,
            status=status,
            detail=wire_text(detail),
            pids=pids,
            at=_now(),
            local=local,
        )
