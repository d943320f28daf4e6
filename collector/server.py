"""One collector process: the parts wired together behind one gRPC port.

``Collector(store, scorer, sink, mode)`` builds the router, responder, judge
and both services; ``await start(listen)`` binds ``HOST:PORT`` (port 0 picks
a free one) and returns the bound port; ``await stop(grace_s)`` stops taking
streams, lets posts in flight finish and closes the store. Message sizes are
bounded by ``tocsin.v1.CHANNEL_OPTIONS`` (``SERVER_OPTIONS`` adds the server's
side of keepalive). Hosts known from the store that did not say goodbye are
watched for silence from the start (``silent_after_s``); per-agent rate limits
are ``rate_limits``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import grpc

from tocsin.collector.commands import CommandRouter
from tocsin.collector.console.auth import LinkIssuer
from tocsin.collector.decide import Judge, JudgeConfig
from tocsin.collector.grpcconf import SERVER_OPTIONS
from tocsin.collector.ingest import TelemetryService
from tocsin.collector.opserver import OperatorService
from tocsin.collector.pipeline import JudgeStage
from tocsin.collector.protocols import Scorer
from tocsin.collector.ratelimit import AgentRateLimits, RateLimits
from tocsin.collector.respond import Responder
from tocsin.collector.routine import RoutineJobs, routine_book_for
from tocsin.collector.silence import SilenceWatch
from tocsin.collector.store import Store
from tocsin.collector.webhook import WebhookSink
from tocsin.v1 import operator_pb2_grpc as op_grpc
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc
from tocsin.v1.errors import ConfigError


class Collector:
    def __init__(
        self,
        store: Store,
        scorer: Scorer,
        sink: WebhookSink,
        mode: str = "dry-run",
        allow: Sequence[str] = (),
        credentials: grpc.ServerCredentials | None = None,
        judge_config: JudgeConfig | None = None,
        silent_after_s: float = 60.0,
        rate_limits: RateLimits | None = None,
        console: LinkIssuer | None = None,
    ) -> None:
        self.store = store
        self.scorer = scorer
        self.router = CommandRouter()
        self.responder = Responder(store, sink, self.router, mode=mode, allow=allow)
        self.judge = Judge(
            scorer.threshold, judge_config, routine=RoutineJobs(routine_book_for(store))
        )
        self.stage = JudgeStage(scorer, self.judge, self.responder, store)
        self.silence = SilenceWatch(sink, silent_after_s)
        self.limits = AgentRateLimits(rate_limits)
        self.telemetry = TelemetryService(
            store,
            self.router,
            self.stage,
            self.responder,
            limits=self.limits,
            silence=self.silence,
        )
        self._silence_task: asyncio.Task[None] | None = None
        self.operator = OperatorService(store, self.router, self.responder, console=console)
        self.credentials = credentials
        self._server: grpc.aio.Server | None = None

    async def start(self, listen: str) -> int:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_TelemetryServicer_to_server(self.telemetry, server)
        op_grpc.add_OperatorServicer_to_server(self.operator, server)
        try:
            if self.credentials is None:
                port = server.add_insecure_port(listen)
            else:
                port = server.add_secure_port(listen, self.credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc}") from None
        if port == 0:
            raise ConfigError(f"cannot listen on {listen}")
        await server.start()
        self._server = server
        for host in self.store.list_hosts():
            if not host.clean_disconnect:
                self.silence.watch(host.host_id, host.last_seen_s)
        self._silence_task = asyncio.get_running_loop().create_task(self.silence.run())
        return port

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._silence_task is not None:
            self._silence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._silence_task
        await self.stage.batch.close()
        await self.responder.drain()
        await self.silence.drain()
        self.store.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
