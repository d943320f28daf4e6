"""One place builds the collector.

``assemble(store, shipped, sink, ...)`` makes a ``Collector`` from the parts it
is given: the store (any ``Store``), the shipped model, the webhook sink, the
incident book, where per-host baselines are kept, the fleet guard and the
operator hooks. Every part is built here and handed to the constructor of the
part that uses it; nothing is patched onto an object after it is made, and no
part asks another what it is (``isinstance``, ``getattr``). Per-host learning
is on exactly when ``baselines_db`` is given: nothing downstream can switch it
off by wrapping something.

``build(conf)`` is what ``tocsin-collector`` runs. From the settings of
``tocsin.collector.cli.settings`` it opens the storage named by ``store``
(store, incident book, routine book, per-host baselines and webhook outbox on
one connection to one database: an SQLite file, the embedded default, or
PostgreSQL; ``tocsin.collector.backends.open_storage``),
loads the model, makes the housekeeper (retention, disk watch) and, when
asked, binds the web console's socket, and returns an ``App``:
``await app.start(listen)`` starts the collector, the outbox, the
housekeeping, the console and the ``/metrics`` endpoint and returns the
bound port; ``await app.stop()`` stops everything in order. Which engine
holds the rows is decided in ``open_storage`` and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from tocsin.collector.admission import Admission, AdmissionConfig
from tocsin.collector.backends import Storage, open_storage
from tocsin.collector.baseline import BaselineConfig, HostBaselines
from tocsin.collector.commands import CommandRouter
from tocsin.collector.console.auth import LinkIssuer
from tocsin.collector.db import SqlDatabase
from tocsin.collector.decide import Judge, JudgeConfig
from tocsin.collector.explain import Gettext, same_text
from tocsin.collector.fleetguard import FleetGuard
from tocsin.collector.groupcommit import GroupCommit
from tocsin.collector.grpcconf import TlsFiles, parse_hostport, server_credentials
from tocsin.collector.hooks import HookRunner
from tocsin.collector.housekeeping import Housekeeper, RetentionConfig
from tocsin.collector.i18n import Language
from tocsin.collector.incidents import IncidentBook, MemoryIncidentBook
from tocsin.collector.ingest import LocalIntake, TelemetryService
from tocsin.collector.meter import WindowMeter
from tocsin.collector.metrics import MetricsServer, serve_metrics
from tocsin.collector.opserver import OperatorService
from tocsin.collector.outbox import Outbox
from tocsin.collector.pipeline import BatchScorer, JudgeStage
from tocsin.collector.protocols import Scorer
from tocsin.collector.ratelimit import AgentRateLimits, RateLimits
from tocsin.collector.respond import AlertUpdates, Responder
from tocsin.collector.routine import MemoryRoutineBook, RoutineBook, RoutineJobs
from tocsin.collector.score import ForestScorer
from tocsin.collector.server import Collector
from tocsin.collector.silence import SilenceWatch
from tocsin.collector.store import Store
from tocsin.collector.webhook import WebhookSink
from tocsin.v1.errors import ConfigError

if TYPE_CHECKING:  # the scale-out roles import nats (the ``scale`` extra); built on demand
    from tocsin.collector.bus import BusSettings

log = logging.getLogger("tocsin.collector")


def assemble(
    store: Store,
    shipped: Scorer,
    sink: WebhookSink,
    *,
    mode: str = "dry-run",
    allow: Sequence[str] = (),
    credentials: grpc.ServerCredentials | None = None,
    judge_config: JudgeConfig | None = None,
    silent_after_s: float = 60.0,
    rate_limits: RateLimits | None = None,
    book: IncidentBook | None = None,
    routine: RoutineBook | None = None,
    baselines_db: SqlDatabase | None = None,
    baseline_config: BaselineConfig | None = None,
    guard: FleetGuard | None = None,
    hooks: HookRunner | None = None,
    judge_retry_s: float = 5.0,
    console: LinkIssuer | None = None,
    clock_skew_s: float = 300.0,
    gettext: Gettext = same_text,
    admission: AdmissionConfig | None = None,
) -> Collector:
    """A collector made of these parts (see module doc); not started.

    ``gettext`` translates what it writes for people (webhook summaries)."""
    router = CommandRouter()
    book = book or MemoryIncidentBook()
    # The transactions of the windows, the judged marks and the incidents they changed.
    updates = AlertUpdates(store)
    commits = GroupCommit(store, held=(book, updates))
    responder, stage = judgement(
        store,
        shipped,
        sink,
        router,
        commits=commits,
        updates=updates,
        mode=mode,
        allow=allow,
        judge_config=judge_config,
        book=book,
        routine=routine,
        baselines_db=baselines_db,
        baseline_config=baseline_config,
        guard=guard,
        hooks=hooks,
        judge_retry_s=judge_retry_s,
        gettext=gettext,
    )
    silence = SilenceWatch(sink, silent_after_s)
    # What the collector holds of agents' windows: waiting for a commit or a judgement.
    watch = Admission(
        admission or AdmissionConfig(),
        lambda: commits.waiting + stage.queued,
        # Under attack: its stream stays up, for the suspend to reach it at once.
        lambda host_id: router.pending(host_id) > 0 or stage.judge.under_attack(host_id),
    )
    telemetry = TelemetryService(
        store,
        router,
        LocalIntake(commits, stage, responder),
        watch,
        limits=AgentRateLimits(rate_limits),
        silence=silence,
        clock_skew_s=clock_skew_s,
        respond_mode=mode,
    )
    operator = OperatorService(store, router, responder, console=console)
    return Collector(
        store,
        router,
        responder,
        stage,
        telemetry,
        operator,
        silence,
        watch,
        credentials=credentials,
    )


def judgement(
    store: Store,
    shipped: Scorer,
    sink: WebhookSink,
    router: CommandRouter,
    *,
    commits: GroupCommit | None = None,
    updates: AlertUpdates | None = None,
    mode: str,
    allow: Sequence[str],
    judge_config: JudgeConfig | None,
    book: IncidentBook | None,
    routine: RoutineBook | None,
    baselines_db: SqlDatabase | None,
    baseline_config: BaselineConfig | None,
    guard: FleetGuard | None,
    hooks: HookRunner | None,
    judge_retry_s: float,
    gettext: Gettext,
    owns: Callable[[str], bool] = lambda host_id: True,
    mark: Callable[[str, str, int, float | None], None] | None = None,
) -> tuple[Responder, JudgeStage]:
    """The responder and the judge stage, the same in the embedded collector and a worker.

    The stage marks windows judged through ``commits`` (the embedded collector's
    group commit) or, in a worker, through ``mark``; the alerts the responder
    refreshes (``updates``) are written by the same transactions."""
    responder = Responder(
        store,
        sink,
        router,
        mode=mode,
        allow=allow,
        guard=guard,
        hooks=hooks,
        gettext=gettext,
        updates=updates,
    )
    judge = Judge(
        shipped.threshold,
        judge_config,
        book=book or MemoryIncidentBook(),
        routine=RoutineJobs(routine or MemoryRoutineBook()),
    )
    stage = JudgeStage(
        judge,
        responder,
        store,
        HostBaselines(shipped, baselines_db, baseline_config),
        BatchScorer(shipped),
        WindowMeter(),
        commits,
        retry_s=judge_retry_s,
        owns=owns,
        mark=mark,
    )
    return responder, stage


def load_scorer(model: str | None) -> ForestScorer:
    try:
        return ForestScorer.load(Path(model) if model else None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model: {exc}") from None


class App:
    """The collector and what runs beside it: outbox, housekeeping, console, ``/metrics``."""

    def __init__(
        self,
        collector: Collector,
        db: SqlDatabase,
        outbox: Outbox,
        housekeeper: Housekeeper,
        shipped: Scorer,
        conf: dict[str, Any],
        console: tuple[LinkIssuer, socket.socket] | None = None,
    ) -> None:
        self.collector, self.db, self.outbox, self.housekeeper = collector, db, outbox, housekeeper
        self.shipped, self.conf, self.console = shipped, conf, console
        self.metrics: MetricsServer | None = None
        self._console_server: Any = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self, listen: str) -> int:
        port = await self.collector.start(listen)
        self.outbox.start()
        if self.console is not None:
            self._console_server = await self._start_console(*self.console)
        self._housekeeping = asyncio.get_running_loop().create_task(self.housekeeper.run())
        if self.conf.get("metrics"):
            self.metrics = serve_metrics(
                self.conf["metrics"], self.collector, self.outbox, self.housekeeper
            )
            log.info("metrics on http://%s:%d/metrics", *self.metrics.address)
        return port

    async def _start_console(self, links: LinkIssuer, sock: socket.socket) -> Any:
        """Serve the web console beside the collector (HTTPS with its certificate if it has one)."""
        from tocsin.collector.console.auth import Sessions
        from tocsin.collector.console.backend import ConsoleBackend
        from tocsin.collector.console.web import (
            ConsoleConfig,
            ConsoleServer,
            console_app,
            tls_context,
        )
        from tocsin.collector.operations import HostActions

        c = self.collector
        backend = ConsoleBackend(
            c.store,
            c.router,
            c.silence,
            HostActions(c.store, c.responder),
            threshold=float(self.shipped.threshold),
        )
        config = ConsoleConfig(language=self.conf["language"])
        app = console_app(backend, links.links, Sessions(), config)
        tls: TlsFiles = self.conf["tls"]
        server = ConsoleServer(
            app, tls_context(tls.cert, tls.key) if tls.cert and tls.key else None
        )
        await server.start(sock)
        log.info("console on %s/", links.base_url)
        return server

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self._console_server is not None:
            await self._console_server.stop()
        await self.collector.stop(grace_s=grace_s)
        await self.outbox.stop(flush_s=min(grace_s, 5.0))
        self.outbox.close()
        if self.metrics is not None:
            self.metrics.close()
        self.db.close()


def _console(conf: dict[str, Any]) -> tuple[LinkIssuer, socket.socket] | None:
    """The console's sign-in links and bound socket, when ``console`` is set."""
    if not conf.get("console"):
        return None
    from tocsin.collector.console.auth import LoginLinks
    from tocsin.collector.console.web import bind

    host, _ = parse_hostport(conf["console"], "console")
    sock = bind(conf["console"])
    scheme = "https" if conf["tls"].given() else "http"
    base = conf.get("console_url") or f"{scheme}://{host}:{sock.getsockname()[1]}"
    return LinkIssuer(LoginLinks(), base.rstrip("/")), sock


def build(conf: dict[str, Any]) -> App:
    """The shipped collector from validated settings (``ConfigError`` on a bad part)."""
    shipped = load_scorer(conf.get("model"))
    storage = open_storage(
        conf["store"],
        conf["destinations"],
        retry_initial_s=conf["webhook_retry_initial_s"],
        retry_max_s=conf["webhook_retry_max_s"],
        max_age_s=conf["webhook_max_age_s"],
    )
    db, store, outbox = storage.db, storage.store, storage.outbox  # one connection, shared
    tls: TlsFiles = conf["tls"]
    per_s = float(conf.get("max_windows_per_s") or RateLimits.messages_per_s)
    bytes_s = float(conf.get("max_bytes_per_s") or RateLimits.bytes_per_s)
    learning_s = float(conf["baseline_learning_days"]) * 86400.0
    console = _console(conf)
    collector = assemble(
        store,
        shipped,
        outbox,
        mode=conf["respond"],
        allow=conf["allow"],
        credentials=server_credentials(tls) if tls.given() else None,
        silent_after_s=float(conf.get("silent_after") or 60.0),
        rate_limits=RateLimits(per_s, per_s * 100, bytes_s, bytes_s * 16),
        book=storage.book,
        routine=storage.routine,
        baselines_db=db,
        baseline_config=BaselineConfig(learning_s=learning_s),
        guard=FleetGuard(conf["fleet_guard"]) if conf["fleet_guard"] else None,
        hooks=HookRunner(conf["hook_list"]) if conf["hook_list"] else None,
        console=console[0] if console else None,
        clock_skew_s=conf["max_clock_skew_s"],
        gettext=Language.load(conf["language"]).gettext,
        admission=AdmissionConfig(
            max_in_flight=int(conf["behind_windows"]),
            max_lag_s=conf["behind_lag_ms"] / 1000.0,
            pushback_ms=int(conf["pushback_s"] * 1000),
        ),
    )
    housekeeper = Housekeeper(
        store,
        db.disk_path,
        outbox,
        outbox,
        RetentionConfig(
            retention_days=conf["retention_days"],
            rollup_days=conf["rollup_days"],
            disk_warn_ratio=conf["disk_warn_percent"] / 100.0,
        ),
    )
    log.info(
        "per-host baselines: each host learns its own after %g days of its windows",
        conf["baseline_learning_days"],
    )
    return App(collector, db, outbox, housekeeper, shipped, conf, console)


# ---------------------------------------------------------------- scale-out roles


class Role(Protocol):
    """A gateway or a worker: ``start`` returns the bound port (a worker binds none: 0)."""

    async def start(self, listen: str | None) -> int: ...
    async def stop(self, grace_s: float = 5.0) -> None: ...


class ScaleApp:
    """A gateway or a worker and its storage; a worker also delivers the shared outbox."""

    def __init__(self, role: Role, storage: Storage, delivers: bool) -> None:
        self.role, self.storage, self.delivers = role, storage, delivers

    async def start(self, listen: str | None) -> int:
        if self.delivers:
            self.storage.outbox.start()
        return await self.role.start(listen)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.role.stop(grace_s)
        if self.delivers:
            await self.storage.outbox.stop(flush_s=min(grace_s, 5.0))
        self.storage.outbox.close()
        self.storage.close()


def bus_settings(conf: dict[str, Any]) -> BusSettings:
    from tocsin.collector.bus import BusSettings

    return BusSettings(conf["bus"], replicas=conf["bus_replicas"])


def shared_storage(conf: dict[str, Any]) -> Storage:
    """The PostgreSQL database every gateway and worker shares (``--store``): the store,
    incidents, routine runs, per-host baselines and the webhook outbox, whose rows each
    worker claims under a lease so that every event is delivered once."""
    return open_storage(
        conf["store"],
        conf["destinations"],
        retry_initial_s=conf["webhook_retry_initial_s"],
        retry_max_s=conf["webhook_retry_max_s"],
        max_age_s=conf["webhook_max_age_s"],
        deliverer=conf["name"],
    )


async def build_gateway(conf: dict[str, Any]) -> ScaleApp:
    """``tocsin-collector gateway``: agent streams and the operator API over the bus."""
    from tocsin.collector.bus import Bus
    from tocsin.collector.gateway import BusIntake, BusRouter, Gateway

    storage = shared_storage(conf)
    store = storage.store
    bus = await Bus.connect(bus_settings(conf), conf["name"])
    router = BusRouter(bus, conf["name"])
    tls: TlsFiles = conf["tls"]
    per_s = float(conf.get("max_windows_per_s") or RateLimits.messages_per_s)
    bytes_s = float(conf.get("max_bytes_per_s") or RateLimits.bytes_per_s)
    # The gateway raises no alerts and runs no hooks: its responder sends the operators'
    # commands (to the bus) and records them. Workers deliver the outbox.
    responder = Responder(
        store,
        storage.outbox,
        router,
        mode=conf["respond"],
        allow=conf["allow"],
        gettext=Language.load(conf["language"]).gettext,
    )
    telemetry = TelemetryService(
        store,
        router,
        BusIntake(bus, store),
        limits=AgentRateLimits(RateLimits(per_s, per_s * 100, bytes_s, bytes_s * 16)),
        clock_skew_s=conf["max_clock_skew_s"],
        respond_mode=conf["respond"],
    )
    operator = OperatorService(store, router, responder)
    credentials = server_credentials(tls) if tls.given() else None
    return ScaleApp(Gateway(bus, store, router, telemetry, operator, credentials), storage, False)


async def build_worker(conf: dict[str, Any]) -> ScaleApp:
    """``tocsin-collector worker``: judge the partitions it holds, respond through the bus."""
    from tocsin.collector.bus import Bus
    from tocsin.collector.gateway import BusRouter
    from tocsin.collector.worker import Holdings, JudgedMarks, Worker

    shipped = load_scorer(conf.get("model"))
    storage = shared_storage(conf)
    store = storage.store
    bus = await Bus.connect(bus_settings(conf), conf["name"])
    holdings = Holdings()
    updates = AlertUpdates(store)
    marks = JudgedMarks(store, held=(storage.book, updates))
    learning_s = float(conf["baseline_learning_days"]) * 86400.0
    responder, stage = judgement(
        store,
        shipped,
        storage.outbox,
        BusRouter(bus),
        mode=conf["respond"],
        allow=conf["allow"],
        judge_config=None,
        book=storage.book,
        routine=storage.routine,
        baselines_db=storage.db,
        baseline_config=BaselineConfig(learning_s=learning_s),
        guard=FleetGuard(conf["fleet_guard"]) if conf["fleet_guard"] else None,
        hooks=HookRunner(conf["hook_list"]) if conf["hook_list"] else None,
        judge_retry_s=5.0,
        gettext=Language.load(conf["language"]).gettext,
        owns=holdings.owns,
        mark=marks.add,
        updates=updates,
    )
    worker = Worker(bus, store, stage, responder, holdings, marks, conf["name"])
    return ScaleApp(worker, storage, True)
