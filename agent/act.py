"""Response actions on the agent's host: suspend/resume/kill process trees; firewall commands.

Contract: ``Actions.run(command)`` carries out one ``tocsin.v1.Command`` and
returns its ``ActionResult`` (status done | failed | dry-run | refused |
"refused: expired"); it never raises for a bad command. A command past its
``deadline`` is refused as expired and changes nothing. With ``dry_run`` it
reports what it would do and changes nothing.

- suspend(pids): SIGSTOP each given tree root and all its descendants. Every
  root must come with its identity (``Command.processes``: pid, start ticks,
  kernel boot id) and the live process must match it; never PID 1, the agent,
  its threads or its ancestors, never what ``protect.protection`` refuses
  (kernel threads, thread ids, protected daemons by executable, not by name).
  The processes tocsin stopped are persisted in the state dir with their
  identity.
- resume / kill: SIGCONT (resume) or SIGKILL (kill) the given pids, or, when none
  are given, every process tocsin suspended; same guards as suspend. A pid
  named without an identity is accepted only if tocsin suspended it, and is
  then checked against the identity recorded at that time: after a reboot or
  pid reuse nothing unrelated is resumed or killed. Signals go through a
  pidfd opened before the identity is checked, so the check cannot go stale.
- isolate, release, block_client, unblock_client: handed to the ``Firewall``
  (tocsin.agent.firewall, the one door to nftables); release also resumes or
  kills what tocsin stopped when its ``processes`` parameter says so.
The firewall (its ``nft`` run inside a network namespace in tests) and the
clock are injected.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.agent import _linux
from tocsin.agent.firewall import KINDS as FIREWALL_KINDS
from tocsin.agent.firewall import Firewall
from tocsin.agent.protect import ProcessId, protection
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.text import wire_text

log = logging.getLogger(__name__)

EXPIRED = "refused: expired"
KINDS = frozenset({"suspend", "resume", "kill"}) | FIREWALL_KINDS


def descendants(pid: int, limit: int = 4096) -> list[int]:
    """The children of ``pid``, theirs, and so on, parents first (at most ``limit``)."""
    out: list[int] = []
    seen = {pid}
    level = [pid]
    while level and len(out) < limit:
        nxt = []
        for parent in level:
            for kid in _linux.children(parent):
                if kid not in seen:
                    seen.add(kid)
                    nxt.append(kid)
        out.extend(nxt)
        level = nxt
    return out[:limit]


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
        protected_pids: set[int] | None = None,
        self_pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.firewall = firewall or Firewall(state_dir)
        self._clock = clock
        self.boot_id = _linux.kernel_boot_id()
        self._self_pid = self_pid if self_pid is not None else os.getpid()
        self._protected = set(protected_pids or set()) | {0, 1} | self._ancestors()
        self._lock = threading.Lock()
        self._state_path = state_dir / "actions.json"
        state = self._load()
        # pid -> the process tocsin stopped; entries of an earlier boot are dropped.
        self._suspended: dict[int, ProcessId] = {}
        items = state.get("suspended")
        for item in items if isinstance(items, list) else []:
            ident = ProcessId.from_json(item)
            if ident is None:
                log.warning("state: suspended pid %r has no start time, forgotten", item)
            elif ident.kernel_boot_id == self.boot_id:
                self._suspended[ident.pid] = ident
        # (kind, status) -> how many times (metrics).
        self.outcomes: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------ state
    @property
    def suspended(self) -> set[int]:
        """The pids tocsin stopped and has not resumed or killed."""
        with self._lock:
            return set(self._suspended)

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
        suspended = [i.as_json() for _, i in sorted(self._suspended.items())]
        tmp.write_text(json.dumps({"suspended": suspended}))
        os.replace(tmp, self._state_path)

    # ------------------------------------------------------------ processes
    def _refusal(self, pid: int) -> str:
        if pid in self._protected:
            return f"pid {pid} is protected (init, the agent or its ancestors)"
        return protection(pid)

    def _identify(
        self, pids: list[int], refs: list[pb.ProcessRef], recorded: bool
    ) -> tuple[list[ProcessId], dict[int, str], list[str]]:
        """The processes ``pids`` name, checked live: (processes, gone, refusals).

        Each pid needs its identity from ``refs`` or (``recorded``: resume and
        kill) from what tocsin recorded when it suspended it. ``gone`` says
        which pids no longer name that process (exited, reused, another boot).
        """
        named = {r.pid: ProcessId(r.pid, r.start_ticks, r.kernel_boot_id) for r in refs}
        out: list[ProcessId] = []
        gone: dict[int, str] = {}
        refusals: list[str] = []
        for pid in pids:
            with self._lock:
                ident = named.get(pid) or (self._suspended.get(pid) if recorded else None)
            if ident is None:
                refusals.append(f"pid {pid} named without its start time and boot id")
                continue
            why = ident.mismatch(self.boot_id)
            if why:
                gone[pid] = why
                continue
            why = self._refusal(pid)
            if why:
                refusals.append(why)
            elif ident not in out:
                out.append(ident)
        return out, gone, refusals

    def _tree(self, root: ProcessId) -> list[ProcessId]:
        """``root`` and its descendants, parents first, minus what may not be touched."""
        out = [root]
        for pid in descendants(root.pid):
            if pid in self._protected or protection(pid):
                continue
            ident = ProcessId.live(pid, self.boot_id)
            if ident is not None:
                out.append(ident)
        return out

    def _targets(self, roots: list[ProcessId]) -> list[ProcessId]:
        targets: list[ProcessId] = []
        for root in roots:
            targets.extend(p for p in self._tree(root) if p not in targets)
        return targets

    def suspend(
        self, pids: list[int], refs: list[pb.ProcessRef] | None = None, dry_run: bool = False
    ) -> tuple[str, str, list[int]]:
        """SIGSTOP the trees of ``pids``: (status, detail, pids stopped or to stop)."""
        roots, gone, refusals = self._identify(pids, list(refs or []), recorded=False)
        refusals += gone.values()
        targets = self._targets(roots)
        if not targets:
            return "refused", "; ".join(refusals) or "no pids given", []
        if dry_run:
            return "dry-run", f"would SIGSTOP {len(targets)} processes", [p.pid for p in targets]
        stopped: list[ProcessId] = []
        # Parent first: a stopped parent cannot fork replacements for its children.
        for ident in targets:
            try:
                _linux.signal_exact(ident.pid, ident.start_ticks, signal.SIGSTOP)
                stopped.append(ident)
            except OSError as exc:
                refusals.append(f"pid {ident.pid}: {exc.strerror or exc}")
        with self._lock:
            self._suspended.update((i.pid, i) for i in stopped)
            self._save()
        status = "done" if stopped else "failed"
        detail = f"stopped {len(stopped)} processes" + (
            f"; {'; '.join(refusals)}" if refusals else ""
        )
        return status, detail, [i.pid for i in stopped]

    def resume(
        self,
        pids: list[int],
        kill: bool = False,
        dry_run: bool = False,
        refs: list[pb.ProcessRef] | None = None,
    ) -> tuple[str, str, list[int]]:
        """SIGCONT (or SIGKILL if ``kill``) ``pids``, or all suspended when empty.

        A kill is never preceded by a SIGCONT: SIGKILL ends a stopped process where it
        stands, while a resumed one would run on until the kill lands (a stopped smbd
        worker would finish the request it held and answer the attacker)."""
        with self._lock:
            named = list(pids) or sorted(self._suspended)
        roots, gone, refusals = self._identify(named, list(refs or []), recorded=True)
        targets = self._targets(roots)
        verb = "SIGKILL" if kill else "SIGCONT"
        if dry_run:
            return "dry-run", f"would {verb} {len(targets)} processes", [p.pid for p in targets]
        done = []
        for ident in targets:
            try:
                sig = signal.SIGKILL if kill else signal.SIGCONT
                _linux.signal_exact(ident.pid, ident.start_ticks, sig)
                done.append(ident.pid)
            except ProcessLookupError:
                done.append(ident.pid)
            except OSError as exc:
                log.warning("%s %d: %s", verb, ident.pid, exc)
        with self._lock:
            # What was refused is forgotten too: that pid no longer names what tocsin stopped.
            for pid in [*named, *done]:
                self._suspended.pop(pid, None)
            self._save()
        if not targets and refusals and not gone:
            return "refused", "; ".join(refusals), []
        # A suspended process that is gone needs nothing more: reported, left alone.
        notes = [*refusals, *(f"{g}: left alone" for g in gone.values())]
        detail = f"{verb} sent to {len(done)} processes" + (
            f"; {'; '.join(notes)}" if notes else ""
        )
        return "done", detail, [*done, *(p for p in gone if p not in done)]

    # ------------------------------------------------------------ commands
    def run(self, cmd: pb.Command, local: bool = False) -> pb.ActionResult:
        """Carry out ``cmd`` and report (never raises for a bad command)."""
        pids: list[int] = []
        kind = cmd.kind
        refs = list(cmd.processes)
        try:
            deadline_ns = cmd.deadline.ToNanoseconds() if cmd.HasField("deadline") else 0
            if deadline_ns and self._clock() * 1e9 > deadline_ns:
                status = EXPIRED
                detail = f"deadline passed {self._clock() - deadline_ns / 1e9:.1f} s ago"
            elif kind == "suspend":
                status, detail, pids = self.suspend(list(cmd.pids), refs, cmd.dry_run)
            elif kind in ("resume", "kill"):
                status, detail, pids = self.resume(
                    list(cmd.pids), kind == "kill", cmd.dry_run, refs
                )
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
            detail=wire_text(detail),
            pids=pids,
            at=_now(),
            local=local,
        )
