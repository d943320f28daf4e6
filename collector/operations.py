"""What an operator can do to a host, whichever door they came through (CLI or console).

Contract of ``HostActions(store, responder)``:

- ``isolate(host_id, who)`` sends ``isolate`` whatever the respond mode (the
  mode governs automatic responses, not a human's decision);
- ``release(host_id, who, processes)`` sends ``release``, then, when
  ``processes`` is "resume" or "kill", does that to every pid tocsin holds
  suspended on the host ("keep" leaves them stopped);
- both wait up to ``timeout_s`` for the agent's report and return an
  ``Outcome``: the agent's status ("done", "failed", ...) or "queued" when
  the agent is offline or did not answer in time, the detail, and the pids
  still stopped afterwards. ``who`` ("operator:NAME") goes into the audit
  with the action. ``UnknownHost`` for a host the store does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

from tocsin.collector.respond import Responder
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
        status, detail = await self.responder.command(host_id, "release", [], who, timeout_s)
        host = self.store.get_host(host_id)
        if processes != "keep" and host is not None and host.suspended_pids:
            p_status, p_detail = await self.responder.command(
                host_id, processes, host.suspended_pids, who, timeout_s
            )
            detail = f"{detail}; {processes}: {p_status} {p_detail}".strip("; ")
            if p_status != "done" and status == "done":
                status = p_status
        return self._outcome(host_id, status, detail)

    def _outcome(self, host_id: str, status: str, detail: str) -> Outcome:
        host = self.store.get_host(host_id)
        return Outcome(status, detail, list(host.suspended_pids) if host else [])
