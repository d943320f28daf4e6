"""The scale-out gateway: agent streams and the operator API in front of the bus.

``tocsin-collector gateway --bus nats://... --store postgresql://...`` runs the
same Telemetry and Operator services as the embedded collector, on the same
wire, with two parts swapped:

- ``BusIntake``: a window is committed when JetStream acknowledged its publish
  (message id ``host/boot/seq``: a resend is stored once and counted as a
  duplicate); only then is the agent acked. Nothing is judged here: a worker
  consumes the window. An ``ActionResult`` goes to the bus too (the worker
  judging the host stores it; any gateway waiting on it for an operator gets it).
- ``BusRouter``: a command (from an operator on any gateway, or from a worker)
  is published for its host; the gateway holding that host's stream takes it
  into the host's queue (``CommandRouter``) and the stream delivers it. A
  command for a host no gateway holds is parked on the bus and delivered by
  whichever gateway the host connects to next (within the command's TTL).
  ``is_connected`` is true for a host whose stream any gateway holds.

The gateway reads hosts, alerts and actions for the operator API from the
store (``--store``), and registers hosts there on their hello, so the operator
CLI works unchanged against any gateway. The hello's ack is the store's highest
committed seq of the boot, which may trail what JetStream holds: the agent
then resends windows that JetStream (or the store) takes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc

from tocsin.collector.bus import Bus, BusErrors, retrying
from tocsin.collector.commands import CommandRouter, Session
from tocsin.collector.ingest import TelemetryService
from tocsin.collector.intake import AcceptedWindow
from tocsin.collector.opserver import OperatorService
from tocsin.collector.server import serve_grpc
from tocsin.collector.store import Store
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.errors import ConfigError

log = logging.getLogger("tocsin.collector.gateway")


class BusIntake:
    """Commit to JetStream; judge nothing (a worker does); reports to the bus."""

    def __init__(self, bus: Bus, store: Store) -> None:
        self.bus, self.store = bus, store

    async def touch(self, host_id: str, clean_disconnect: bool | None = None) -> None:
        await asyncio.to_thread(self.store.touch_host, host_id, clean_disconnect=clean_disconnect)

    async def commit(self, host_id: str, boot_id: str, window: AcceptedWindow) -> bool:
        return await self.bus.publish_window(host_id, boot_id, window)

    def judge_ahead(
        self,
        host_id: str,
        windows: Sequence[tuple[str, AcceptedWindow]],
        stored_later: bool = False,
    ) -> int:
        return 0  # a worker judges what the bus delivers, in order

    async def judge(self, host_id: str, boot_id: str, window: AcceptedWindow, new: bool) -> None:
        return None

    async def action_result(self, host_id: str, result: pb.ActionResult) -> None:
        await self.bus.publish_result(host_id, result)


class BusRouter(CommandRouter):
    """A ``CommandRouter`` whose commands travel through the bus (see module doc).

    ``gateway`` names this process in the bus's table of streams; a worker's
    router (``gateway=""``) only sends.
    """

    def __init__(self, bus: Bus, gateway: str = "", **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.bus, self.gateway = bus, gateway
        self.parked = 0
        self.send_failed = 0
        self._held: dict[str, asyncio.Task[None]] = {}
        self._elsewhere: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send(self, host_id: str, command: pb.Command) -> None:
        self._spawn(self._send(host_id, command))

    async def _send(self, host_id: str, command: pb.Command) -> None:
        try:
            if not await self.bus.send_command(host_id, command):
                self.parked += 1
        except BusErrors as exc:
            self.send_failed += 1
            log.error("command %s for %s not sent: bus unavailable (%s)", command.id, host_id, exc)

    def attach(self, host_id: str, session: Session) -> Session | None:
        previous = super().attach(host_id, session)
        if host_id not in self._held:
            self._held[host_id] = asyncio.get_running_loop().create_task(self._hold(host_id))
        return previous

    def detach(self, host_id: str, session: Session) -> None:
        super().detach(host_id, session)
        if not super().is_connected(host_id):
            held = self._held.pop(host_id, None)
            if held is not None:
                held.cancel()
            self._spawn(self._withdraw(host_id))

    async def _hold(self, host_id: str) -> None:
        """While the host's stream is here: its commands come here."""

        def deliver(cmd: pb.Command) -> None:
            CommandRouter.send(self, host_id, cmd)

        sub = await retrying(f"commands of {host_id}", lambda: self.bus.hold(host_id, deliver))
        try:
            await retrying(f"stream of {host_id}", lambda: self.bus.announce(host_id, self.gateway))
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(*BusErrors):
                await sub.unsubscribe()

    async def _withdraw(self, host_id: str) -> None:
        with contextlib.suppress(*BusErrors):
            await self.bus.withdraw(host_id, self.gateway)

    def is_connected(self, host_id: str) -> bool:
        return super().is_connected(host_id) or host_id in self._elsewhere

    async def watch(self) -> None:
        """Forever: which hosts' streams the other gateways hold."""
        while True:
            try:
                async for host_id, gateway in self.bus.watch_streams():
                    if gateway and gateway != self.gateway:
                        self._elsewhere[host_id] = gateway
                    else:
                        self._elsewhere.pop(host_id, None)
            except BusErrors as exc:
                log.warning("table of streams not watched: %s", exc)
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        for task in [*self._held.values(), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._held.values(), *self._tasks, return_exceptions=True)


class Gateway:
    """The gateway's parts behind one gRPC port (built by ``tocsin.collector.app``)."""

    def __init__(
        self,
        bus: Bus,
        store: Store,
        router: BusRouter,
        telemetry: TelemetryService,
        operator: OperatorService,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.bus, self.store, self.router = bus, store, router
        self.telemetry, self.operator, self.credentials = telemetry, operator, credentials
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, listen: str | None) -> int:
        if listen is None:
            raise ConfigError("a gateway needs --listen HOST:PORT")
        await self.bus.on_results(self.router.resolve)
        self._tasks = [asyncio.get_running_loop().create_task(self.router.watch())]
        self._server, port = await serve_grpc(
            self.telemetry, self.operator, listen, self.credentials
        )
        return port

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.router.close()
        await self.bus.close()
        self.store.close()
