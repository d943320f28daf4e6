"""Where an agent stream hands what it accepted: the seam between ingest and judgement.

The Telemetry service (``tocsin.collector.ingest``) validates a stream, re-dates
a window whose agent clock is off, and then hands each window and each
``ActionResult`` to an ``Intake``:

- ``await commit(host_id, boot_id, window)`` makes the window durable and
  returns whether it was new (``False``: the same host, boot and seq were
  committed before, a resend). When it returns, the agent may be acked: a crash
  after that never loses the window. It raises ``StoreUnavailable`` (or
  ``StoreFull``) when nothing could be committed; the agent keeps the window
  spooled and resends it.
- ``judge_ahead(host_id, windows)`` is called when a window with evidence
  (``tocsin.v1.evidence``) is read, with it the stream's windows read before it
  and not yet handed on, in order ``(boot_id, window)``, before their commit is
  done: an intake that judges in this process judges them now, so that an
  attack's commands never wait for a disk that is slow to sync. With
  ``stored_later`` the window is a copy sent ahead of its stream's order
  (``Window.ahead``, or the ``Alarm`` call): judged now, committed only when it
  comes again in order. Returns how many windows it judges now (0: a gateway,
  whose workers judge what the bus delivers, or windows judged ahead already).
- ``await judge(host_id, boot_id, window, new)`` runs after the ack, in seq order
  per host (for a window judged ahead: only its judged mark is left to see to).
- ``await action_result(host_id, result)`` takes an agent's report on a command.
- ``await touch(host_id, clean_disconnect=None)`` notes the host was seen
  (``Store.touch_host``): the embedded collector writes it with its next group
  commit, a gateway at once.

Two intakes exist. The embedded collector's (``ingest.LocalIntake``) commits to
the store and judges in the same process. A gateway's
(``tocsin.collector.gateway.BusIntake``) commits to JetStream and judges
nothing: a worker (``tocsin.collector.worker``) consumes the windows and
reports from the bus and hands them to the same judge stage and responder.

``AcceptedWindow`` is what crosses this seam, in process or on the bus: the
window as judged (re-dated if need be), the wire bytes as the agent sent them
(what the store keeps) and how far ingest re-dated it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from tocsin.collector.decide import ts_s
from tocsin.collector.features import window_tally
from tocsin.collector.store import StoredWindow
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.evidence import carries_evidence


@dataclass(frozen=True)
class AcceptedWindow:
    window: pb.Window  # as judged: re-dated when the agent's clock was off
    raw: bytes  # the wire bytes as the agent sent them
    skew_s: float = 0.0  # how far ingest moved its end (0.0: the agent's clock was fine)

    @property
    def seq(self) -> int:
        return int(self.window.seq)

    @cached_property
    def evidence(self) -> bool:
        """Whether it carries evidence (``tocsin.v1.evidence``): asked once per window."""
        return carries_evidence(self.window)

    def stored(self) -> StoredWindow:
        """The row the store keeps: the agent's bytes, the judged times."""
        w = self.window
        return StoredWindow(
            seq=int(w.seq),
            start_s=ts_s(w.start),
            end_s=ts_s(w.end),
            raw=self.raw,
            tally=window_tally(w),
        )

    @classmethod
    def rebuilt(cls, raw: bytes, start_ns: int, end_ns: int, skew_s: float) -> AcceptedWindow:
        """The accepted window from its wire bytes and the times ingest judged it with."""
        w = pb.Window()
        w.ParseFromString(raw)
        w.start.FromNanoseconds(start_ns)
        w.end.FromNanoseconds(end_ns)
        return cls(w, raw, skew_s)


class Intake(Protocol):
    async def commit(self, host_id: str, boot_id: str, window: AcceptedWindow) -> bool: ...
    async def touch(self, host_id: str, clean_disconnect: bool | None = None) -> None: ...
    def judge_ahead(
        self,
        host_id: str,
        windows: Sequence[tuple[str, AcceptedWindow]],
        stored_later: bool = False,
    ) -> int: ...
    async def judge(
        self, host_id: str, boot_id: str, window: AcceptedWindow, new: bool
    ) -> None: ...
    async def action_result(self, host_id: str, result: pb.ActionResult) -> None: ...
