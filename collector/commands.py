"""Commands on their way to agents, and the agents' reports coming back.

Contract: ``send(host_id, command)`` never blocks. Each host has one bounded
queue that outlives its streams: a command for a host that is not connected
waits there until the agent's next stream drains it. A full queue drops its
oldest command (counted in ``dropped``); a stale command is worth less than a
fresh one. ``expect(command_id)`` returns a future resolved by the agent's
``ActionResult`` for that id (``resolve``); futures nobody resolves are
forgotten after ``max_waiting`` newer ones.

Only one stream per host drains the queue: ``attach`` hands the host to the
newest stream and returns the displaced one so the caller can end it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Protocol

from tocsin.v1 import telemetry_pb2 as pb


class Session(Protocol):
    """A connected agent stream, as the router sees it."""

    peer_host: str  # the address it comes from, without the port ("ipv4:10.0.0.5")

    def displace(self) -> None: ...


class CommandRouter:
    def __init__(self, max_queued_per_host: int = 32, max_waiting: int = 1024) -> None:
        self.max_queued_per_host = max_queued_per_host
        self.max_waiting = max_waiting
        self.dropped = 0
        self._queues: dict[str, asyncio.Queue[pb.Command]] = {}
        self._sessions: dict[str, Session] = {}
        self._waiting: OrderedDict[str, asyncio.Future[pb.ActionResult]] = OrderedDict()

    def queue(self, host_id: str) -> asyncio.Queue[pb.Command]:
        q = self._queues.get(host_id)
        if q is None:
            q = self._queues[host_id] = asyncio.Queue(maxsize=self.max_queued_per_host)
        return q

    def send(self, host_id: str, command: pb.Command) -> None:
        q = self.queue(host_id)
        if q.full():
            q.get_nowait()
            self.dropped += 1
        q.put_nowait(command)

    def pending(self, host_id: str) -> int:
        q = self._queues.get(host_id)
        return q.qsize() if q else 0

    def attach(self, host_id: str, session: Session) -> Session | None:
        previous = self._sessions.get(host_id)
        self._sessions[host_id] = session
        return previous if previous is not session else None

    def detach(self, host_id: str, session: Session) -> None:
        if self._sessions.get(host_id) is session:
            del self._sessions[host_id]

    def session(self, host_id: str) -> Session | None:
        """The live stream session of ``host_id``, if any."""
        return self._sessions.get(host_id)

    def is_connected(self, host_id: str) -> bool:
        return host_id in self._sessions

    def expect(self, command_id: str) -> asyncio.Future[pb.ActionResult]:
        fut: asyncio.Future[pb.ActionResult] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = fut
        while len(self._waiting) > self.max_waiting:
            _, old = self._waiting.popitem(last=False)
            old.cancel()
        return fut

    def resolve(self, result: pb.ActionResult) -> None:
        fut = self._waiting.pop(result.command_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)
