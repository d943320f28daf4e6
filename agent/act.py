"""Response actions on the agent's host: suspend/resume/kill process trees; firewall commands.

Contract: ``Actions.run(command)`` carries out one ``tocsin.v1.Command`` and
returns its ``ActionResult`` (status done | failed | dry-run | refused); it
never raises for a bad command. With ``dry_run`` it reports what it would do and
changes nothing.

- suspend(pids): SIGSTOP each given tree root and all its descendants. Never
  PID 1, never the agent or its ancestors, never a protected name or pid
  (an smbd per-client worker is not protected: it is one client's session).
  The set of pids tocsin stopped is persisted in the state dir.
- resume / kill: SIGCONT (then SIGKILL for kill) the given pids, or, when none
  are given, every pid tocsin suspended.
- isolate, release, block_client, unblock_client: handed to the ``Firewall``
  (tocsin.agent.firewall, the one door to nftables); release also resumes or
  kills what tocsin stopped when its ``processes`` parameter says so.
The firewall (its ``nft`` run inside a network namespace in tests) and the
signal sender are injected.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.agent.firewall import KINDS as FIREWALL_KINDS
from tocsin.agent.firewall import Firewall
from tocsin.agent.smb import worker_peer
from tocsin.v1 import telemetry_pb2 as pb

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
KINDS = frozenset({"suspend", "resume", "kill"}) | FIREWALL_KINDS


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class Actions:
    """Carries out collector commands and local tripwire decisions (see module contract)."""

    def __init__(
        self,
        state_dir: Path,
        firewall: Firewall | None = None,
        send_signal: Callable[[int, int], None] = os.kill,
        protected_pids: set[int] | None = None,
        self_pid: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.firewall = firewall or Firewall(state_dir)
        self._signal = send_signal
        self._self_pid = self_pid if self_pid is not None else os.getpid()
        self._protected = set(protected_pids or set()) | {0, 1} | self._ancestors()
        self._lock = threading.Lock()
        self._state_path = state_dir / "actions.json"
        state = self._load()
        self.suspended: set[int] = set(state.get("suspended", []))
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
        tmp.write_text(json.dumps({"suspended": sorted(self.suspended)}))
        os.replace(tmp, self._state_path)

    # ------------------------------------------------------------ processes
    def _refusal(self, pid: int) -> str:
        if pid in self._protected:
            return f"pid {pid} is protected (init, the agent or its ancestors)"
        try:
            name = psutil.Process(pid).name()
        except psutil.Error:
            return f"pid {pid} does not exist"
        if name in PROTECTED_NAMES and not (name == "smbd" and worker_peer(pid)):
            # An smbd per-client worker is that client's session, not the service.
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
            elif kind in FIREWALL_KINDS:
                status, detail = self.firewall.command(kind, cmd.parameters, cmd.dry_run)
                proc = cmd.parameters.get("processes", "keep")
                if kind == "release" and proc in ("resume", "kill"):
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
            detail=detail,
            pids=pids,
            at=_now(),
            local=local,
        )
