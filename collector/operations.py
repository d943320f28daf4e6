"""What an operator can do to a host, whichever door they came through (CLI or console).

Contract of ``HostActions(store, responder)``:

- ``isolate(host_id, who)`` sends ``isolate`` whatever the respond mode (the
  mode governs automatic responses, not a human's decision);
- ``release(host_id, who, processes)`` sends ``release``; with ``processes``
  "kill" it first kills every pid tocsin holds suspended on the host (an SMB
  client unblocked by the release never finds its worker alive), with
  "resume" it resumes them after ("keep" leaves them stopped). The detail
  names each pid as the host's alerts named its writer (an smbd worker with
  its SMB client and user), for the pids acted on and those still stopped;
- both wait up to ``timeout_s`` for the agent's report and return an
  ``Outcome``: the agent's status ("done", "failed", ...) or "queued" when
  the agent is offline or did not answer in time, the detail, and the pids
  still stopped afterwards. ``who`` ("operator:NAME") goes into the audit
  with the action. ``UnknownHost`` for a host the store does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

from tocsin.collector.decide import ProcessInfo
from tocsin.collector.respond import Responder, describe_process
from tocsin.collector.store import Store
from tocsin.v1.errors import TocsinError

PROCESS_CHOICES = ("keep", "resume", "kill")


class UnknownHost(TocsinError):
    """The store knows no such host."""


@dataclass(frozen=True)
class Outcome:
    status: str
    detail: str
    still_suspended: list[int]


class HostActions:
    def __init__(self, store: Store, responder: Responder, default_timeout_s: float = 10.0) -> None:
        self.store, self.responder = store, responder
        self.default_timeout_s = default_timeout_s

    def _known(self, host_id: str) -> None:
        if not host_id or self.store.get_host(host_id) is None:
            raise UnknownHost(f"unknown host {host_id!r}")

    async def isolate(self, host_id: str, who: str, timeout_s: float = 0.0) -> Outcome:
        self._known(host_id)
        status, detail = await self.responder.command(
            host_id, "isolate", [], who, timeout_s or self.default_timeout_s
        )
        return self._outcome(host_id, status, detail)

    async def release(
        self, host_id: str, who: str, processes: str = "keep", timeout_s: float = 0.0
    ) -> Outcome:
        self._known(host_id)
        if processes not in PROCESS_CHOICES:
            raise ValueError(f"processes must be keep, resume or kill, not {processes!r}")
        timeout_s = timeout_s or self.default_timeout_s
        host = self.store.get_host(host_id)
        stopped = list(host.suspended_pids) if host is not None else []
        p_status, verdict = "done", ""
        if processes == "kill" and stopped:
            p_status, verdict = await self._processes(host_id, processes, stopped, who, timeout_s)
        status, detail = await self.responder.command(host_id, "release", [], who, timeout_s)
        if processes == "resume" and stopped:
            p_status, verdict = await self._processes(host_id, processes, stopped, who, timeout_s)
        detail = f"{detail}; {verdict}".strip("; ")
        if p_status != "done" and status == "done":
            status = p_status
        return self._outcome(host_id, status, detail)

    async def _processes(
        self, host_id: str, kind: str, pids: list[int], who: str, timeout_s: float
    ) -> tuple[str, str]:
        """Resume or kill ``pids``: (status, what was done to whom, in words)."""
        status, detail = await self.responder.command(host_id, kind, pids, who, timeout_s)
        return status, f"{kind}: {status} {detail} ({self._name_pids(host_id, pids)})"

    def _name_pids(self, host_id: str, pids: list[int]) -> str:
        """The pids in words, as the host's alerts named their writers."""
        known: dict[int, ProcessInfo] = {}
        for a in self.store.list_alerts(host_id, limit=200):
            p = a.process or {}
            pid = p.get("pid")
            if isinstance(pid, int) and pid in pids and pid not in known:
                known[pid] = ProcessInfo(
                    pid,
                    str(p.get("name", "?")),
                    str(p.get("exe", "")),
                    pid,
                    smb_client_addr=str(p.get("smb_client_addr", "")),
                    smb_user=str(p.get("smb_user", "")),
                )
        return ", ".join(
            describe_process(known[pid]) if pid in known else f"pid {pid}" for pid in pids
        )

    def _outcome(self, host_id: str, status: str, detail: str) -> Outcome:
        host = self.store.get_host(host_id)
        still = list(host.suspended_pids) if host else []
        if still:
            detail = f"{detail}; still stopped: {self._name_pids(host_id, still)}".strip("; ")
        return Outcome(status, detail, still)
