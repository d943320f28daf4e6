"""The Telemetry service: one bidirectional stream per connected agent.

Per stream, in order:

1. The first message must be ``Hello`` with a valid ``host_id``
   (``[A-Za-z0-9._-]{1,64}``) and ``boot_id``; otherwise the stream ends with
   INVALID_ARGUMENT naming the problem. With mTLS, the certificate's common name
   must be the host id (PERMISSION_DENIED otherwise). Without a certificate
   (``--insecure``) nothing proves the claim, so a hello for a host id that a
   live stream from another address holds is refused (ABORTED, with a pushback:
   the agent retries, and gets in once its old stream is gone); from the same
   address it displaces the old stream (an agent back after a network cut,
   whose old stream the collector has not seen die yet), and so does any
   stream with the host's certificate. The host is registered and an ``Ack`` of what is already
   stored for this boot is sent at once; then, to an agent whose tripwire follows the
   collector (its hello's mode ``follow:...``), a ``ConfigUpdate``: ``enforce`` when the
   collector responds in enforce mode, else ``dry-run``.
2. Each ``Window`` (seq > 0) is committed, THEN acked (``Ack.seq`` is the
   highest seq committed for the boot), THEN judged, through the ``Intake``
   (except a window with evidence: it is judged as soon as it is read, with the
   stream's windows before it not yet judged, while they commit, so that an
   attack's suspend never waits for a disk slow to sync; its ack still waits
   for its commit; a commit that fails after it was judged leaves it to be
   marked judged when resent, not judged twice)
   the service is given (``tocsin.collector.intake``): the embedded
   collector's ``LocalIntake`` commits to the store and queues the window for
   judgement here (``JudgeStage.enqueue``: windows with evidence are committed
   first and their host judged ahead of the quiet backlog); a gateway's
   commits to JetStream and a worker judges. A stream reads on while its
   windows commit (at most ``max_committing`` on their way), and acks and
   hands them on in order. Windows of every stream are committed together
   (``GroupCommit``, given by the assembly: one transaction per batch, the
   windows and judged marks that arrived while the previous batch was
   committing), and each ack goes out only after the commit that covers it.
   While the collector is behind (``Admission``), a window without evidence on
   a stream past its grace is not taken. An agent whose hello lists the
   capability ``pause`` is sent ``Pause(quiet_ms)`` and its stream stays open:
   no window after it is taken until the agent's next Hello, with which it
   resends every unacked window in order. It comes back when the admission has
   room and sends it ``Pause(0)``, or as soon as it spools evidence, and then
   its spool is taken whole (every window that ended over ``CAUGHT_UP_S``
   before it was read, however long a burst of them takes to read: cut short,
   the rest would be sent again later, and again), or when ``quiet_ms``
   (``PAUSE_FACTOR`` pushbacks, a fallback) has run out. Back with evidence,
   it first sends a copy of its attack window marked ``ahead``: judged at
   once (``Intake.judge_ahead``), neither stored nor acked (it comes again in
   order), so the suspend does not wait for its spool to be read. Any
   other agent's stream ends RESOURCE_EXHAUSTED with the pushback. Either way
   the agent keeps the window spooled: nothing is acked past it. A resent window
   already stored is acked and counted in ``duplicates``, not judged again;
   what the host has committed but not judged (the database failed after a
   commit) is judged then (``JudgeStage.settle``), if the stage's own retry
   has not done it already.
   A later ``Hello`` of the same host switches the boot the following windows
   belong to (how an agent resends an earlier boot's unacknowledged windows);
   it is answered with an ``Ack`` of that boot.
   The agent's clock is not trusted: a window whose end is more than
   ``clock_skew_s`` away from the collector's receive time is re-dated to end
   at the receive time (its duration kept, held to ``[0, clock_skew_s]``), is
   judged and stored so, and carries the reason ``clock_skew`` if it alerts;
   its wire bytes are stored as the agent sent them. One log line per stream
   says it happened; ``clock_skew_windows`` counts the windows.
3. ``ActionResult`` goes to the responder, in order, by a task of the stream's
   own (a report's durable writes never hold back the windows read after it;
   the reports read are still handled after the stream has ended, within
   ``REPORTS_DRAIN_S``; one that cannot be stored is logged); ``Heartbeat`` refreshes last_seen;
   ``Goodbye`` marks a clean disconnect and ends the stream.

Every message counts against the host's rate limits (``AgentRateLimits``) and
tells the ``SilenceWatch`` the host is alive. How a stream ends badly (always
with a log line naming the host):

- malformed, out-of-order (seq <= 0), another host's hello: INVALID_ARGUMENT;
- a hello whose host id is not the certificate's: PERMISSION_DENIED;
- a flood past the rate limits: RESOURCE_EXHAUSTED with a
  ``grpc-retry-pushback-ms`` trailer (when the buckets are useful again);
- a quiet window while the collector is behind: RESOURCE_EXHAUSTED with a
  pushback (not counted in ``bad_streams``; one warning line now and then);
- the database full: RESOURCE_EXHAUSTED, pushback ``store_retry_ms``; any
  other database failure: UNAVAILABLE, same pushback. Nothing that was not
  committed is ever acked, so the agent keeps it spooled and resends it;
- a message larger than ``MAX_MESSAGE_BYTES``: gRPC itself answers
  RESOURCE_EXHAUSTED before the message reaches this code.

Commands queued for the host (``CommandRouter``) are written to the newest
stream of that host. A bad message ends only its own stream; other streams
and the server go on. Outgoing messages go through a bounded queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from tocsin.collector.admission import Admission
from tocsin.collector.commands import CommandRouter
from tocsin.collector.decide import ts_s
from tocsin.collector.features import window_features
from tocsin.collector.groupcommit import GroupCommit
from tocsin.collector.intake import AcceptedWindow, Intake
from tocsin.collector.pipeline import Committed, JudgeStage
from tocsin.collector.ratelimit import AgentRateLimits, Refusal
from tocsin.collector.respond import Responder
from tocsin.collector.silence import SilenceWatch
from tocsin.collector.store import JudgedMark, Store, StoreFull, StoreUnavailable
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc
from tocsin.v1.errors import WireError
from tocsin.v1.evidence import carries_evidence

log = logging.getLogger("tocsin.collector.ingest")

PUSHBACK_KEY = "grpc-retry-pushback-ms"
PAUSE_CAPABILITY = "pause"
# A paused agent comes back by itself after this many pushbacks (the admission
# resumes it sooner when it has room).
PAUSE_FACTOR = 6
# A window that ended this long before it was read comes from the agent's spool.
CAUGHT_UP_S = 3.0
# Hosts whose last hello is remembered (``TelemetryService._hello``); past it, forgotten.
MAX_KNOWN_HOSTS = 200_000
# Windows judged ahead of their commit, remembered until their commit is known.
MAX_AHEAD = 100_000
# At a stream's end, how long the reports it carried may still take to be stored.
REPORTS_DRAIN_S = 10.0

HOST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
BOOT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# What a hello's free text may keep: a DNS name's 253 characters, a version, a mode.
# Unbounded, one hello's 256 KiB hostname made every ListHosts reply over the limit.
HELLO_TEXT_MAX_CHARS = {"hostname": 253, "agent_version": 64, "tripwire_mode": 16}


@dataclass(frozen=True)
class _End:
    code: grpc.StatusCode | None = None
    detail: str = ""
    retry_after_ms: int | None = None
    bad: bool = True  # counted in bad_streams (a load pushback is not)


class _PushedBack(Exception):
    """A quiet window refused while the collector is behind (``Admission``)."""

    def __init__(self, wait_ms: int) -> None:
        super().__init__(wait_ms)
        self.wait_ms = wait_ms


def peer_host(peer: str) -> str:
    """gRPC's peer string without its port: ``ipv4:10.0.0.5:41234`` -> ``ipv4:10.0.0.5``."""
    head, sep, port = peer.rpartition(":")
    return head if sep and port.isdigit() else peer


class _StreamSession:
    def __init__(self, host_id: str, max_outbound: int, peer: str = "") -> None:
        self.host_id = host_id
        self.peer_host = peer_host(peer)
        self.started_s = time.monotonic()
        self.grace = True  # all its windows admitted for the admission's grace (``Admission``)
        # The last window on its way (committing, then acked and handed on in order),
        # and how many are: a stream reads on while its windows commit.
        self.tail: asyncio.Task[None] | None = None
        self.committing = 0
        self.stored = 0
        self.duplicates = 0
        self.skewed = 0
        self.acked = 0  # highest seq acked on this stream (for the log of a refusal)
        self.failed = False  # a commit failed: the stream is ending
        self.can_pause = False  # its hello lists the capability "pause"
        self.paused = False  # sent a Pause: nothing taken until its next Hello
        self.resumed = False  # sent Pause(0): told to come back, its spool taken whole
        # Back from a pause with grace: windows older than ``CAUGHT_UP_S`` (its spool)
        # are all taken, however long they take to read; the first newer one ends it.
        self.spool_grace = False
        self.held = 0  # windows not taken while paused (the agent resends them)
        self.paused_s = 0.0  # when the last pause began (monotonic)
        self.early = 0  # attack windows judged ahead of the spool (``Window.ahead``)
        # Windows read and not yet handed to judgement (committing, or waiting for the
        # ack of the one before): a window with evidence takes them along ahead.
        self.unhanded: collections.deque[tuple[str, AcceptedWindow]] = collections.deque()
        self.out: asyncio.Queue[pb.CollectorMessage | _End] = asyncio.Queue(max_outbound)
        # The agent's reports, handled in order beside the windows, not ahead of them.
        self.reports: asyncio.Queue[pb.ActionResult] = asyncio.Queue(max_outbound)

    def bringing(self) -> int:
        """About how many windows the agent resends when called back now: one a
        second of the pause (its shipper's default window) and the one paused."""
        return 1 + int(time.monotonic() - self.paused_s)

    def displace(self) -> None:
        end = _End(grpc.StatusCode.ABORTED, "replaced by a newer stream from the same host")
        with contextlib.suppress(asyncio.QueueFull):
            self.out.put_nowait(end)


class LocalIntake:
    """The embedded collector's intake: group commit to the store, judge in this process.

    Its parts come from the assembly: the group commit (windows with evidence
    go first) and the judge stage. A new window is queued for judgement (its
    host ahead of the quiet ones when it carries evidence); a resend already
    stored settles its host (what was committed but not judged after a
    database failure is judged then).
    """

    def __init__(self, commits: GroupCommit, stage: JudgeStage, responder: Responder) -> None:
        self.commits, self.stage, self.responder = commits, stage, responder
        # Windows judged ahead of their commit -> whether their commit may have failed
        # (their judged mark then found no row: it is written again with the resend).
        self._ahead: collections.OrderedDict[tuple[str, str, int], bool] = collections.OrderedDict()

    async def commit(self, host_id: str, boot_id: str, window: AcceptedWindow) -> bool:
        try:
            return await self.commits.add(host_id, boot_id, window.stored(), urgent=window.evidence)
        except BaseException:
            key = (host_id, boot_id, window.seq)
            if key in self._ahead:
                self._ahead[key] = True
            raise

    async def touch(self, host_id: str, clean_disconnect: bool | None = None) -> None:
        self.commits.touch(host_id, clean_disconnect)

    def judge_ahead(
        self,
        host_id: str,
        windows: Sequence[tuple[str, AcceptedWindow]],
        stored_later: bool = False,
    ) -> int:
        judged = 0
        for boot_id, window in windows:
            key = (host_id, boot_id, window.seq)
            if key in self._ahead:
                continue  # a resend of a window judged ahead already
            # Stored later: its judged mark finds no row now, and is written again
            # with its commit.
            self._ahead[key] = stored_later
            while len(self._ahead) > MAX_AHEAD:
                self._ahead.popitem(last=False)
            self._enqueue(host_id, boot_id, window)
            judged += 1
        return judged

    async def judge(self, host_id: str, boot_id: str, window: AcceptedWindow, new: bool) -> None:
        maybe_unmarked = self._ahead.pop((host_id, boot_id, window.seq), None)
        if maybe_unmarked is not None and new:
            if maybe_unmarked:  # judged before a commit that failed: marked now
                await self.commits.judged([JudgedMark(host_id, boot_id, window.seq, None)])
            return
        if not new:
            await self.stage.settle(host_id)
            return
        self._enqueue(host_id, boot_id, window)

    def _enqueue(self, host_id: str, boot_id: str, window: AcceptedWindow) -> None:
        w = window.window
        item = Committed(boot_id, w, window_features(w), window.skew_s)
        self.stage.enqueue(host_id, item, urgent=window.evidence)

    async def action_result(self, host_id: str, result: pb.ActionResult) -> None:
        await self.responder.on_action_result(host_id, result)


def validate_hello(msg: pb.AgentMessage) -> pb.Hello:
    """The hello of a stream's first message, or ``WireError`` saying what is wrong.

    Its free text (hostname, agent version, tripwire mode) is cut to
    ``HELLO_TEXT_MAX_CHARS`` in place: what is stored, logged and listed stays small.
    """
    if msg.WhichOneof("body") != "hello":
        got = msg.WhichOneof("body") or "an empty message"
        raise WireError(f"first message must be hello, got {got}")
    hello = msg.hello
    if not HOST_ID_RE.fullmatch(hello.host_id):
        raise WireError(f"invalid host_id {hello.host_id[:80]!r}: want [A-Za-z0-9._-]{{1,64}}")
    if not BOOT_ID_RE.fullmatch(hello.boot_id):
        raise WireError(f"invalid boot_id {hello.boot_id[:80]!r}")
    for field, max_chars in HELLO_TEXT_MAX_CHARS.items():
        setattr(hello, field, getattr(hello, field)[:max_chars])
    return hello


class HostIdTaken(PermissionError):
    """An unauthenticated hello for a host id that a live stream holds."""


def clamp_window(w: pb.Window, received_s: float, clock_skew_s: float) -> float:
    """Re-date ``w`` in place if its end is over ``clock_skew_s`` from ``received_s``.

    Returns the shift applied to its end in seconds (0.0 when the agent's clock
    was within the skew). The duration is held to ``[0, clock_skew_s]`` either way.
    """
    start_s, end_s = ts_s(w.start), ts_s(w.end)
    shift = 0.0
    if abs(end_s - received_s) > clock_skew_s:
        shift = received_s - end_s
    duration = min(max(end_s - start_s, 0.0), clock_skew_s)
    new_end = end_s + shift
    if shift or new_end - duration != start_s:
        w.end.FromNanoseconds(int(new_end * 1e9))
        w.start.FromNanoseconds(int((new_end - duration) * 1e9))
    return shift


def _date(t_s: float) -> str:
    try:
        return dt.datetime.fromtimestamp(t_s, dt.UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{t_s:.0f} s after 1970"


class TelemetryService(pb_grpc.TelemetryServicer):
    def __init__(
        self,
        store: Store,
        router: CommandRouter,
        intake: Intake,
        admission: Admission | None = None,
        max_outbound: int = 256,
        limits: AgentRateLimits | None = None,
        silence: SilenceWatch | None = None,
        store_retry_ms: int = 5_000,
        clock_skew_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        taken_retry_ms: int = 5_000,
        max_committing: int = 64,
        respond_mode: str = "dry-run",
    ) -> None:
        self.store, self.router, self.intake = store, router, intake
        # Told to each agent whose tripwire follows the collector, when its stream opens.
        self.followed = pb.ConfigUpdate(
            tripwire_mode="enforce" if respond_mode == "enforce" else "dry-run"
        )
        self.admission = admission  # None: never behind (a gateway)
        self.max_committing = max_committing
        self.max_outbound = max_outbound
        self.limits = limits or AgentRateLimits()
        self.silence = silence
        self.store_retry_ms = store_retry_ms
        self.clock_skew_s = clock_skew_s
        self._clock = clock
        self.taken_retry_ms = taken_retry_ms
        self.clock_skew_windows = 0
        self.windows_stored = 0
        self.duplicates = 0
        self.bad_streams = 0
        self.store_refusals = 0
        self.rate_refusals = 0
        self.alarms = 0  # windows judged from an Alarm call
        self._closing_reports: set[asyncio.Task[None]] = set()
        # Per host: its last hello's facts (hostname, version, tripwire, boot) and the
        # highest seq acked for that boot (see ``_hello``).
        self._known: dict[str, tuple[tuple[str, str, str, str], int]] = {}

    async def Stream(
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage],
    ) -> None:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        except DecodeError:
            self.bad_streams += 1
            log.warning(
                "stream from %s refused: first message is not an AgentMessage", context.peer()
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed AgentMessage")
        peer = context.peer()
        try:
            hello = validate_hello(first)
            self._check_identity(hello.host_id, context)
        except WireError as exc:
            self.bad_streams += 1
            log.warning("stream from %s refused: %s", peer, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except HostIdTaken as exc:
            self.bad_streams += 1
            log.warning("stream from %s refused: %s", peer, exc)
            end = _End(grpc.StatusCode.ABORTED, str(exc), self.taken_retry_ms)
            await self._refuse(context, hello.host_id, end)
        except PermissionError as exc:
            self.bad_streams += 1
            log.warning("stream from %s refused: %s", peer, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

        host_id, boot_id = hello.host_id, hello.boot_id
        refusal = self.limits.admit(host_id, first.ByteSize())
        if refusal is not None:
            await self._refuse(context, host_id, self._rate_end(host_id, refusal))
        if self.silence is not None:
            self.silence.seen(host_id)
        try:
            committed = await self._hello(hello)
        except StoreUnavailable as exc:
            await self._refuse(context, host_id, self._store_end(host_id, exc, 0))
        session = _StreamSession(host_id, self.max_outbound, peer)
        session.can_pause = PAUSE_CAPABILITY in hello.capabilities
        if self.admission is not None:
            session.grace = self.admission.grace(host_id)
        displaced = self.router.attach(host_id, session)
        if displaced is not None:
            displaced.displace()
        log.info("agent %s connected (boot %s, version %s)", host_id, boot_id, hello.agent_version)
        await context.write(pb.CollectorMessage(ack=pb.Ack(boot_id=boot_id, seq=committed)))
        if hello.tripwire_mode.startswith("follow"):
            await context.write(pb.CollectorMessage(config=self.followed))

        reader = asyncio.create_task(self._read(request_iterator, session, boot_id, committed))
        pump = asyncio.create_task(self._pump(session))
        reporter = asyncio.create_task(self._report(session))
        end = _End()
        try:
            while True:
                item = await session.out.get()
                if isinstance(item, _End):
                    end = item
                    break
                await context.write(item)
        finally:
            # Detached before any wait: a cancelled call may be cancelled again meanwhile.
            self.router.detach(host_id, session)
            if self.admission is not None:
                self.admission.release(session)
                self.admission.returned(session)
            pump.cancel()
            reader.cancel()
            tail = [session.tail] if session.tail is not None else []
            for task in tail:  # committed and not acked: the agent resends them
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(pump, reader, *tail, return_exceptions=True)
            # The reports already read are still stored, after the stream has ended.
            closing = asyncio.create_task(self._end_reports(session, reporter))
            self._closing_reports.add(closing)
            closing.add_done_callback(self._closing_reports.discard)
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await self.intake.touch(host_id)
            log.info(
                "agent %s stream ended (windows stored %d, duplicates dropped %d,"
                " re-dated for clock skew %d, held back while paused %d, judged ahead %d)%s",
                host_id,
                session.stored,
                session.duplicates,
                session.skewed,
                session.held,
                session.early,
                f": {end.detail}" if end.detail else "",
            )
        if end.code is not None:
            self.bad_streams += end.bad
            await self._refuse(context, host_id, end)

    async def Alarm(
        self,
        request: pb.AlarmRequest,
        context: grpc.aio.ServicerContext[pb.AlarmRequest, pb.AlarmReply],
    ) -> pb.AlarmReply:
        """A window with evidence sent beside the stream (telemetry.proto): judged now.

        Its stream may hold a spool in front of it, or be paused, or be waiting
        for a pushback to end: the alarm is read by itself, never behind them.
        Only a host that said hello to this process, for the same boot, is
        heard; the window is judged ahead (``Intake.judge_ahead``), its stream's
        copy is committed and acked in order, and the command goes out on the
        stream (queued for the host while it has none).
        """
        try:
            hello = validate_hello(pb.AgentMessage(hello=request.hello))
            self._check_identity(hello.host_id, context)
            if request.window.seq <= 0:
                raise WireError("window seq must be > 0")
        except WireError as exc:
            self.bad_streams += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (HostIdTaken, PermissionError) as exc:
            self.bad_streams += 1
            log.warning("alarm from %s refused: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        host_id, boot_id, w = hello.host_id, hello.boot_id, request.window
        refusal = self.limits.admit(host_id, request.ByteSize())
        if refusal is not None:
            # Counted, not logged: a unary call costs its sender nothing, and a line
            # per refusal would let a flood of them fill the collector's log.
            self.rate_refusals += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(refusal))
        known = self._known.get(host_id)
        if known is None or known[0][3] != boot_id or w.seq <= known[1]:
            return pb.AlarmReply(judged=False)  # not this boot's, or acked (judged) already
        if not carries_evidence(w):
            return pb.AlarmReply(judged=False)
        window = self._accepted(host_id, w, None)
        judged = self.intake.judge_ahead(host_id, [(boot_id, window)], stored_later=True)
        self.alarms += judged
        return pb.AlarmReply(judged=judged > 0)

    async def _hello(self, hello: pb.Hello) -> int:
        """Register the host of a hello; the highest seq committed for its boot.

        A host back with the same hello (a reconnect after a pushback, a network
        blip) costs no transaction of its own: what this process acked it is
        known, and its last-seen is touched with the next batch. Under overload
        every quiet agent reconnects every few seconds, and a database round per
        hello queued the hello of an agent with an attack to report behind them.
        """
        facts = (hello.hostname, hello.agent_version, hello.tripwire_mode, hello.boot_id)
        known = self._known.get(hello.host_id)
        if known is not None and known[0] == facts:
            await self.intake.touch(hello.host_id, clean_disconnect=False)
            return known[1]
        committed = await asyncio.to_thread(self._register, hello)
        if len(self._known) >= MAX_KNOWN_HOSTS:
            self._known.clear()
        self._known[hello.host_id] = (facts, committed)
        return committed

    def _register(self, hello: pb.Hello) -> int:
        """Record the host of a hello; the highest seq stored for its boot (blocking)."""
        self.store.upsert_host(
            hello.host_id,
            hostname=hello.hostname,
            agent_version=hello.agent_version,
            tripwire_mode=hello.tripwire_mode,
        )
        return self.store.committed_seq(hello.host_id, hello.boot_id)

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage],
        host_id: str,
        end: _End,
    ) -> None:
        """End the stream with ``end``'s status (and pushback hint); never returns."""
        if end.retry_after_ms is not None:
            context.set_trailing_metadata(((PUSHBACK_KEY, str(end.retry_after_ms)),))
        assert end.code is not None
        await context.abort(end.code, end.detail)

    def _rate_end(self, host_id: str, refusal: Refusal) -> _End:
        self.rate_refusals += 1
        wait_ms = int(refusal.retry_after_s * 1000) + 1
        log.warning("agent %s: %s; stream ended, retry in %d ms", host_id, refusal, wait_ms)
        return _End(grpc.StatusCode.RESOURCE_EXHAUSTED, str(refusal), wait_ms)

    def _store_end(self, host_id: str, exc: StoreUnavailable, acked: int) -> _End:
        self.store_refusals += 1
        code = (
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if isinstance(exc, StoreFull)
            else grpc.StatusCode.UNAVAILABLE
        )
        log.error(
            "agent %s: %s; refusing its windows (acked up to seq %d, nothing more),"
            " the agent keeps them spooled",
            host_id,
            exc,
            acked,
        )
        return _End(code, f"collector cannot store now: {exc}", self.store_retry_ms)

    def _check_identity(
        self, host_id: str, context: grpc.aio.ServicerContext[pb.AgentMessage, pb.CollectorMessage]
    ) -> None:
        names = list(context.auth_context().get("x509_common_name") or [])
        if names and host_id.encode() not in names:
            cn = names[0].decode(errors="replace")
            raise PermissionError(f"host_id {host_id!r} does not match certificate name {cn!r}")
        live = self.router.session(host_id)
        if not names and live is not None and live.peer_host != peer_host(context.peer()):
            raise HostIdTaken(
                f"host id {host_id!r} is held by a live stream, and without TLS nothing"
                " proves this one is that host; retry once that stream has ended"
            )

    async def _report(self, session: _StreamSession) -> None:
        """The agent's reports, in order, off the windows' way: a report's writes (the
        tripwire's, sent as the window showing the attack closes) must not hold back the
        judgement of that window."""
        while True:
            r = await session.reports.get()
            try:
                await self.intake.action_result(session.host_id, r)
            except StoreUnavailable as exc:
                log.error("agent %s: report on %r not stored: %s", session.host_id, r.kind, exc)
            except Exception:
                log.exception("agent %s: report on %r failed", session.host_id, r.kind)
            finally:
                session.reports.task_done()

    async def _end_reports(self, session: _StreamSession, reporter: asyncio.Task[None]) -> None:
        """Let the reporter store what the ended stream carried (``REPORTS_DRAIN_S`` at most)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.reports.join(), REPORTS_DRAIN_S)
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)

    async def _pump(self, session: _StreamSession) -> None:
        queue = self.router.queue(session.host_id)
        while True:
            cmd = await queue.get()
            await session.out.put(pb.CollectorMessage(command=cmd))

    async def _read(
        self,
        requests: AsyncIterator[pb.AgentMessage],
        session: _StreamSession,
        boot_id: str,
        acked: int,
    ) -> None:
        host_id = session.host_id
        end = _End()
        try:
            async for msg in requests:
                refusal = self.limits.admit(host_id, msg.ByteSize())
                if refusal is not None:
                    end = self._rate_end(host_id, refusal)
                    break
                if self.silence is not None:
                    self.silence.seen(host_id)
                kind = msg.WhichOneof("body")
                if kind == "window":
                    acked = await self._window(host_id, boot_id, msg.window, session, acked)
                elif kind == "action_result":
                    await session.reports.put(msg.action_result)
                elif kind == "heartbeat":
                    await self.intake.touch(host_id)
                elif kind == "goodbye":
                    await self.intake.touch(host_id, clean_disconnect=True)
                    if self.silence is not None:
                        self.silence.goodbye(host_id)
                    break
                elif kind == "hello":
                    # A later hello switches boot: the agent resends an earlier
                    # boot's unacknowledged windows under a hello of that boot,
                    # then repeats its current hello before its own windows.
                    hello = validate_hello(msg)
                    if hello.host_id != host_id:
                        raise WireError(f"hello for {hello.host_id!r} on {host_id!r}'s stream")
                    if session.paused:  # back from a pause: its windows are taken again
                        session.paused = False
                        if self.admission is not None:
                            self.admission.release(session)
                            early = self.admission.grace(host_id)
                            session.grace = session.spool_grace = early or session.resumed
                            session.started_s = time.monotonic()
                    await self._drain(session)  # the earlier boot's windows acked first
                    if hello.boot_id != boot_id:
                        boot_id = hello.boot_id
                        acked = await asyncio.to_thread(self.store.committed_seq, host_id, boot_id)
                    await session.out.put(
                        pb.CollectorMessage(ack=pb.Ack(boot_id=boot_id, seq=acked))
                    )
                else:
                    raise WireError("empty AgentMessage")
            await self._drain(session)
        except WireError as exc:
            log.warning("agent %s: %s", host_id, exc)
            end = _End(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DecodeError:
            log.warning("agent %s: malformed AgentMessage", host_id)
            end = _End(grpc.StatusCode.INVALID_ARGUMENT, "malformed AgentMessage")
        except StoreUnavailable as exc:
            if session.failed:
                return  # said, and the end is on its way
            end = self._store_end(host_id, exc, session.acked)
        except _PushedBack as exc:
            log.debug("agent %s pushed back for %d ms: collector behind", host_id, exc.wait_ms)
            detail = "collector behind: quiet windows wait, evidence is taken"
            end = _End(grpc.StatusCode.RESOURCE_EXHAUSTED, detail, exc.wait_ms, bad=False)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            end = _End(None, f"stream broken: {exc.code().name}")
        except Exception as exc:
            log.exception("agent %s: stream failed", host_id)
            end = _End(grpc.StatusCode.INTERNAL, f"collector error: {type(exc).__name__}")
        # What was taken before the end is acked before it (or its failure ends the stream).
        try:
            await self._drain(session)
        except StoreUnavailable as exc:
            if session.failed:
                return  # said, and the end is on its way
            if end.code is None or not end.bad:  # not said already
                end = self._store_end(host_id, exc, session.acked)
        except Exception:
            pass  # ended already: the agent resends what was not acked
        await session.out.put(end)

    def _accepted(
        self, host_id: str, w: pb.Window, session: _StreamSession | None
    ) -> AcceptedWindow:
        """``w`` as taken: its wire bytes, re-dated if the agent's clock is off
        (said once a stream; an alarm's is said by its stream's copy)."""
        raw = w.SerializeToString()
        sent_end_s = ts_s(w.end)
        skew_s = clamp_window(w, self._clock(), self.clock_skew_s)
        if skew_s and session is not None:
            self.clock_skew_windows += 1
            session.skewed += 1
            if session.skewed == 1:
                log.warning(
                    "agent %s: window %d dated %s, %+.0f s from the collector's clock"
                    " (allowed: %g s); judged as received, and so are later ones",
                    host_id,
                    w.seq,
                    _date(sent_end_s),
                    -skew_s,
                    self.clock_skew_s,
                )
        return AcceptedWindow(w, raw, skew_s)

    def _resume(self, session: _StreamSession) -> int:
        """The admission has room: tell a paused agent to come back (``Pause(0)``);
        how many windows it will bring."""
        if session.paused and not session.resumed:
            with contextlib.suppress(asyncio.QueueFull):  # full: the stream is ending
                session.out.put_nowait(pb.CollectorMessage(pause=pb.Pause(quiet_ms=0)))
                session.resumed = True
                return session.bringing()
        return 0

    async def _drain(self, session: _StreamSession) -> None:
        """Wait until every window taken on the stream is acked (raises what failed)."""
        if session.tail is not None:
            await session.tail

    async def _window(
        self, host_id: str, boot_id: str, w: pb.Window, session: _StreamSession, acked: int
    ) -> int:
        if w.seq <= 0:
            raise WireError("window seq must be > 0")
        if w.ahead:
            # A copy of an attack window sent ahead of the agent's spool (it comes
            # again in order): judged now, neither stored nor acked.
            if session.can_pause and w.seq > acked and carries_evidence(w):
                window = self._accepted(host_id, w, session)
                self.intake.judge_ahead(host_id, [(boot_id, window)], stored_later=True)
                session.early += 1
            return acked
        if session.paused:
            session.held += 1
            return acked  # not taken: resent after the agent's next Hello
        if session.spool_grace and ts_s(w.end) > self._clock() - CAUGHT_UP_S:
            session.spool_grace = False  # caught up: its spool is in
            if self.admission is not None:
                self.admission.returned(session)
            session.started_s = time.monotonic()  # and the grace of a stream from here
        if self.admission is not None and not session.spool_grace:
            age_s = time.monotonic() - session.started_s if session.grace else math.inf
            wait_ms = self.admission.pushback_ms(host_id, w, age_s)
            if wait_ms is not None:
                if not session.can_pause:
                    raise _PushedBack(wait_ms)
                session.paused, session.resumed = True, False
                session.held += 1
                session.paused_s = time.monotonic()
                self.admission.hold(session, lambda: self._resume(session))
                pause = pb.Pause(quiet_ms=wait_ms * PAUSE_FACTOR)
                await session.out.put(pb.CollectorMessage(pause=pause))
                return acked
        window = self._accepted(host_id, w, session)
        committing = asyncio.ensure_future(self.intake.commit(host_id, boot_id, window))
        if w.seq > acked:  # not a resend of one taken already
            session.unhanded.append((boot_id, window))
            if window.evidence:
                # Judged now, while it commits (with the windows before it, in order):
                # an attack's suspend never waits for a disk that is slow to sync.
                self.intake.judge_ahead(host_id, list(session.unhanded))
                session.unhanded.clear()
        acked = max(acked, int(w.seq))
        session.tail = asyncio.ensure_future(
            self._committed(session, session.tail, committing, boot_id, acked, window)
        )
        session.committing += 1
        if session.committing >= self.max_committing or session.tail.done():
            await self._drain(session)  # bounded, and a failed commit ends the stream now
        return acked

    async def _committed(
        self,
        session: _StreamSession,
        before: asyncio.Task[None] | None,
        committing: asyncio.Future[bool],
        boot_id: str,
        acked: int,
        window: AcceptedWindow,
    ) -> None:
        """Once the window before it is acked and its commit done: ack it, hand it on."""
        host_id = session.host_id
        try:
            if before is not None:
                await before
            inserted = await committing
        except StoreUnavailable as exc:
            if not session.failed:  # the stream ends now, not at the agent's next message
                with contextlib.suppress(asyncio.QueueFull):  # full: the reader ends it
                    session.out.put_nowait(self._store_end(host_id, exc, session.acked))
                    session.failed = True
            raise
        finally:
            session.committing -= 1
        session.acked = max(session.acked, acked)
        if session.unhanded and session.unhanded[0][1] is window:
            session.unhanded.popleft()
        known = self._known.get(host_id)
        if known is not None and known[0][3] == boot_id and acked > known[1]:
            self._known[host_id] = (known[0], acked)
        await session.out.put(pb.CollectorMessage(ack=pb.Ack(boot_id=boot_id, seq=acked)))
        if inserted:
            self.windows_stored += 1
            session.stored += 1
        else:
            self.duplicates += 1
            session.duplicates += 1
        await self.intake.judge(host_id, boot_id, window, inserted)
