"""One collector process: its parts behind one gRPC port.

``Collector`` takes its parts already built (``tocsin.collector.app``
assembles them): the store, the command router, the responder, the judge
stage, both services, the silence watch and the admission. ``await
start(listen)`` binds ``HOST:PORT`` (port 0 picks a free one), starts watching
hosts known from the store that did not say goodbye for silence, starts the
stage's judges and judgement backlog and the admission's watch of the event
loop, and returns the bound port; ``await stop(grace_s)`` stops taking
streams, lets posts in flight finish and closes the store, the incident book
and the per-host baselines. Message sizes are bounded by
``tocsin.v1.CHANNEL_OPTIONS`` (``SERVER_OPTIONS`` adds the server's side of
keepalive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from tocsin.collector.admission import Admission
from tocsin.collector.commands import CommandRouter
from tocsin.collector.decide import Judge
from tocsin.collector.grpcconf import SERVER_OPTIONS
from tocsin.collector.ingest import TelemetryService
from tocsin.collector.opserver import OperatorService
from tocsin.collector.pipeline import JudgeStage
from tocsin.collector.respond import Responder
from tocsin.collector.silence import SilenceWatch
from tocsin.collector.store import Store, StoreUnavailable
from tocsin.v1 import operator_pb2_grpc as op_grpc
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc
from tocsin.v1.errors import ConfigError

log = logging.getLogger("tocsin.collector")


async def serve_grpc(
    telemetry: TelemetryService,
    operator: OperatorService,
    listen: str,
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, int]:
    """Both services on ``listen`` (port 0: a free one), started; the bound port."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_TelemetryServicer_to_server(telemetry, server)
    op_grpc.add_OperatorServicer_to_server(operator, server)
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {listen}")
    await server.start()
    return server, port


class Collector:
    def __init__(
        self,
        store: Store,
        router: CommandRouter,
        responder: Responder,
        stage: JudgeStage,
        telemetry: TelemetryService,
        operator: OperatorService,
        silence: SilenceWatch,
        admission: Admission,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.store, self.router, self.responder, self.stage = store, router, responder, stage
        self.telemetry, self.operator, self.silence = telemetry, operator, silence
        self.admission = admission
        self.credentials = credentials
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def judge(self) -> Judge:
        return self.stage.judge

    async def start(self, listen: str) -> int:
        self._server, port = await serve_grpc(
            self.telemetry, self.operator, listen, self.credentials
        )
        for host in self.store.list_hosts():
            if not host.clean_disconnect:
                self.silence.watch(host.host_id, host.last_seen_s)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.silence.run()),
            loop.create_task(self.stage.run()),
            loop.create_task(self.stage.run_backlog()),
            loop.create_task(self.admission.run()),
        ]
        return port

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if not await self.stage.quiesce(grace_s):
            log.warning(
                "stopping with windows not yet judged: judged from the store at the next start"
            )
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.stage.close()
        await self.responder.drain()
        try:
            self.responder.updates.flush()
        except StoreUnavailable as exc:  # the incidents and alerts stand; their last refresh not
            log.warning("stopping: refreshed alerts not written: %s", exc)
        await self.silence.drain()
        self.store.close()
        self.stage.judge.book.close_db()
        self.stage.baselines.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
