"""The gRPC client: one Telemetry.Stream to the collector, kept open forever.

Contract: ``Shipper.submit_window(w)`` gives ``w`` the next seq of this boot
(starting at 1) and stores it in the spool before returning (durable); a
window too large for the wire (``MAX_MESSAGE_BYTES``) loses its example paths,
then its top writers, and is never refused by the collector for its size.
``submit_result(r)`` queues an ActionResult in memory (bounded, drops oldest,
counted). The sender thread connects, sends Hello, then every unacked spooled
window in spool order (earlier boots' windows under their own boot_id), then
new ones as they come (a window always follows a Hello of its own boot: a
repeated Hello switches boot); an Ack trims the spool (the collector acks only
what it committed; an Ack past ``MAX_SEQ`` is refused with a log line); a
Command is handed to ``on_command`` and its ActionResult sent back; a
``ConfigUpdate`` to ``on_config``. ``stop()`` sends Goodbye and half-closes.
Every message sent is written to the optional Recorder.

Retries follow the OpenTelemetry exporter rules: after a stream ends with a
retryable status (``RETRYABLE``; RESOURCE_EXHAUSTED only when the collector
sent a ``grpc-retry-pushback-ms`` hint) the shipper reconnects after an
exponential backoff with full jitter, capped at ``backoff_max_s``, or after
the collector's hint when it gave one (sooner as soon as a window with
evidence is spooled, ``tocsin.v1.evidence``: an overloaded collector pushes
back quiet windows and always takes evidence); the backoff restarts from
``backoff_initial_s`` once an ack shows progress. Without a hint, the wait
also ends as soon as gRPC has reconnected a channel that was down (its own
reconnect backoff is capped at 5 s): a stream opened before that fails at
once with the last connection error, and the link may be back already. A non-retryable status
(INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED, ...) is a problem for
a human: it is logged at ERROR and the shipper only tries again after
``refused_retry_s`` (an agent never gives up for good; its spool keeps
filling meanwhile). Keepalive pings (``CHANNEL_OPTIONS``) turn a dead link
into UNAVAILABLE within ~15 s. Keepalives prove the connection, not the
stream: a stream on which the collector answered nothing for
``answer_timeout_s`` while something waits for its answer (the hello before
the first answer, or windows still in the spool: the collector acks every
window as soon as it is committed) is cancelled and retried like UNAVAILABLE.
A connection attempt that hangs after a long partition, or a stream that
stops moving, costs that long, not the rest of the outage; the channel is then
replaced (otherwise one channel serves every stream of a collector's life).

Several collectors (``target`` then ``other_targets``: a gateway each, or
collectors sharing one store) are tried in turn. The shipper stays with the
one it streams to; when a stream to it ends retryably before it answered
anything (refused, unreachable, cancelled by the answer guard), the
collector is gone and the next one is tried at once, its spool resent from
the oldest unacked window (collectors dedupe on host, boot and seq, and ack
what they hold, so nothing is lost and nothing stored twice in one store).
Only when every collector failed in a row does the shipper back off as
above. A collector that pushes back (a hint) or refuses (non-retryable) is
alive: the shipper waits for it as with one collector.

The Hello lists the capability ``pause``: a collector that is behind then
sends ``Pause(quiet_ms)`` instead of ending the stream. The stream stays open
(no reconnect, no new hello to register), windows are still spooled, action
results and heartbeats still sent, but no window goes out until the collector
sends ``Pause(0)`` (it has room again), or a window with evidence is spooled
and not yet acked, or ``quiet_ms`` (capped like a pushback) has run out. Then
the shipper sends a Hello and every unacked window from the oldest, as on a
new stream: the collector took nothing after the window it paused, and acks
only what it holds. Back for evidence, it first sends a copy of the newest
window with evidence marked ``ahead`` (judged at once, not stored, not acked),
so that the suspend does not wait for the whole spool to be read before it.
Back because its own wait ran out, it sends the first
window alone and the rest once that one is acked: a collector still behind
pauses it again at the cost of one window, not of the whole spool.

Every window with evidence is also sent by itself, the moment it is spooled,
in a unary ``Telemetry.Alarm`` call beside the stream (on the same channel, a
stream of its own): the collector judges it at once and neither stores nor
acks it; the window still goes out on the stream in order. The suspend never
waits behind a spool being sent, a stream held by a pause, or a pushback's
wait. An alarm that fails is not retried (the stream's copy follows); a
collector that answers UNIMPLEMENTED (older than the call) is sent no more.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from tocsin.agent.spool import WindowSpool
from tocsin.v1 import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, telemetry_pb2_grpc
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.evidence import carries_evidence
from tocsin.v1.recording import Recorder

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
# The OpenTelemetry OTLP/gRPC retryable codes; RESOURCE_EXHAUSTED only with a hint.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
PUSHBACK_KEY = "grpc-retry-pushback-ms"
# What the shipper tells the collector it understands (Hello.capabilities).
PAUSE_CAPABILITY = "pause"
# The largest seq a window can have (Ack.seq is uint64 on the wire).
MAX_SEQ = 2**63 - 1
# How long an Alarm call may take: past it, the stream's copy is as quick.
ALARM_TIMEOUT_S = 5.0
# Room left under MAX_MESSAGE_BYTES for the AgentMessage envelope.
_WIRE_SLACK_BYTES = 1024


def retry_delay_s(
    code: grpc.StatusCode | None,
    pushback_ms: int | None,
    attempt: int,
    initial_s: float,
    max_s: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before reconnecting, or None if ``code`` is not retryable.

    The collector's hint wins when given (even for RESOURCE_EXHAUSTED); otherwise
    exponential backoff with full jitter: uniform(0.5, 1) * min(max_s, initial_s * 2**attempt).
    """
    if (
        pushback_ms is not None
        and pushback_ms >= 0
        and (code in RETRYABLE or code == grpc.StatusCode.RESOURCE_EXHAUSTED)
    ):
        return min(pushback_ms / 1000.0, max_s * 4) * (1.0 + 0.1 * rand())
    if code is not None and code not in RETRYABLE:
        return None
    # 2**attempt as a float overflows past attempt 1023 (a long outage): cap the exponent.
    return min(max_s, initial_s * 2 ** min(attempt, 64)) * (0.5 + 0.5 * rand())


def pushback_ms_of(exc: grpc.RpcError) -> int | None:
    """The collector's ``grpc-retry-pushback-ms`` trailer, if any."""
    try:
        trailers = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:
        return None
    for key, value in trailers:
        if key == PUSHBACK_KEY:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def fit_window(w: pb.Window, max_bytes: int = MAX_MESSAGE_BYTES - _WIRE_SLACK_BYTES) -> bool:
    """Shrink ``w`` in place under ``max_bytes``; False if even the counts do not fit."""
    if w.ByteSize() <= max_bytes:
        return True
    del w.example_paths[:]
    while w.ByteSize() > max_bytes and w.top_writers:
        del w.top_writers[-1]
    return w.ByteSize() <= max_bytes


@dataclass
class HelloInfo:
    host_id: str
    boot_id: str
    watched_roots: list[str]
    capabilities: list[str] = field(default_factory=list)
    tripwire_mode: Callable[[], str] = lambda: "dry-run"  # read at each hello
    hostname: str = field(default_factory=socket.gethostname)


class Shipper:
    """Spool-backed, reconnecting telemetry stream (see module contract)."""

    def __init__(
        self,
        target: str,
        spool: WindowSpool,
        hello: HelloInfo,
        on_command: Callable[[pb.Command], pb.ActionResult],
        credentials: grpc.ChannelCredentials | None = None,
        recorder: Recorder | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 15.0,
        heartbeat_s: float = 10.0,
        max_results: int = 1000,
        refused_retry_s: float = 300.0,
        answer_timeout_s: float = 30.0,
        other_targets: Sequence[str] = (),
        on_config: Callable[[pb.ConfigUpdate], None] = lambda config: None,
    ) -> None:
        self.targets = (target, *other_targets)
        self._target_at = 0  # the collector streamed to (or tried next)
        self.failovers = 0  # moves to the next collector
        self.spool = spool
        self.hello = hello
        self.on_command = on_command
        self.on_config = on_config  # a collector's ConfigUpdate, on the reading thread
        self.credentials = credentials
        self.recorder = recorder
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.heartbeat_s = heartbeat_s
        self.refused_retry_s = refused_retry_s
        self.answer_timeout_s = answer_timeout_s
        self.windows_trimmed = 0
        self.last_status: grpc.StatusCode | None = None
        self._progress = False
        self._answered = False  # the current stream got at least one message
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._wake = threading.Condition()
        self._submitted = 0  # grows (under _wake) with every window or result submitted
        self._results: collections.deque[pb.ActionResult] = collections.deque(maxlen=max_results)
        self.results_dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tocsin-ship", daemon=True)
        self._call: grpc.Future | None = None
        self._backing_off: threading.Event | None = None  # set to end a backoff early
        self._evidence = threading.Event()  # a window with evidence spooled since the stream
        self.connected = threading.Event()
        self.connections = 0
        self.unanswered = 0  # streams cancelled by the answer guard
        # Since when the current stream owes an answer (None: nothing due): set when it
        # opens or a window is sent, moved on by every answer, cleared when all is acked.
        self._due_since: float | None = None
        self.acked: tuple[str, int] = ("", 0)
        # The collector's pause (``Pause``): no window goes out before this instant
        # (monotonic) unless evidence waits; the next window sent follows a new Hello.
        self._paused_until = 0.0
        self._rewind = False
        self._probe: tuple[str, int] | None = None  # (boot, seq) sent alone after a pause
        self._called_back = False  # the pause ended by the collector's Pause(0)
        self.pauses = 0
        self._evidence_seq: tuple[str, int] | None = None  # (boot, seq) of the newest
        self._evidence_payload = b""  # its AgentMessage, for a copy sent ahead
        # The collector streamed to (or tried last) and its stub, for Alarm calls;
        # None while it is not known to take them.
        self._alarm_to: tuple[str, telemetry_pb2_grpc.TelemetryStub] | None = None
        self._no_alarms: set[str] = set()  # collectors that answered UNIMPLEMENTED
        self.alarms_sent = 0
        self.alarms_judged = 0  # answered judged=True

    @property
    def target(self) -> str:
        """HOST:PORT of the collector the shipper streams to (or tries next)."""
        return self.targets[self._target_at]

    # ------------------------------------------------------------ producers
    def submit_window(self, w: pb.Window) -> int:
        """Assign the next seq, spool durably, wake the sender; returns the seq."""
        if w.ByteSize() > MAX_MESSAGE_BYTES - _WIRE_SLACK_BYTES:
            self.windows_trimmed += 1
            if not fit_window(w):  # only counts left: cannot happen with proto3 scalars
                log.error("window too large for the wire even without paths and writers")
        with self._seq_lock:
            self._seq += 1
            w.seq = self._seq
            payload = pb.AgentMessage(window=w).SerializeToString()
            self.spool.put(self.hello.boot_id, w.seq, payload)
            if carries_evidence(w):
                self._evidence_payload = payload
                self._evidence_seq = (self.hello.boot_id, w.seq)
        if carries_evidence(w):
            self._evidence.set()
            self._alarm(w)
        with self._wake:
            self._submitted += 1
            self._wake.notify_all()
        return w.seq

    def _alarm(self, w: pb.Window) -> None:
        """Send ``w`` (with evidence) in an Alarm call beside the stream; never blocks."""
        to = self._alarm_to
        if to is None:
            return  # no collector known to take alarms (none yet, or UNIMPLEMENTED)
        target, stub = to
        request = pb.AlarmRequest(
            hello=pb.Hello(host_id=self.hello.host_id, boot_id=self.hello.boot_id),
            window=w,
        )
        try:
            call = stub.Alarm.future(request, timeout=ALARM_TIMEOUT_S)
        except Exception as exc:  # a channel closed meanwhile: the stream's copy follows
            log.debug("alarm for window %d not sent: %s", w.seq, exc)
            return
        self.alarms_sent += 1

        def answered(done: grpc.Future) -> None:
            try:
                if done.result().judged:
                    self.alarms_judged += 1
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    self._no_alarms.add(target)  # an older collector: the stream alone
                    if self._alarm_to is to:
                        self._alarm_to = None
                log.debug("alarm for window %d: %s", w.seq, code)
            except Exception as exc:  # cancelled with its channel
                log.debug("alarm for window %d: %s", w.seq, exc)

        call.add_done_callback(answered)

    def submit_result(self, r: pb.ActionResult) -> None:
        with self._wake:
            if len(self._results) == self._results.maxlen:
                self.results_dropped += 1
            self._results.append(r)
            self._submitted += 1
            self._wake.notify_all()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Send Goodbye (if connected), half-close, and stop reconnecting."""
        self._stop.set()
        self._evidence.set()  # ends a pushback wait
        with self._wake:
            self._wake.notify_all()
        backing_off = self._backing_off
        if backing_off is not None:
            backing_off.set()
        self._thread.join(timeout=timeout_s)
        call = self._call
        if call is not None and self._thread.is_alive():
            call.cancel()
            self._thread.join(timeout=1)

    # ------------------------------------------------------------ the stream
    def _send(self, msg: pb.AgentMessage) -> pb.AgentMessage:
        if self.recorder is not None:
            self.recorder.write(msg)
        return msg

    def _hello(self, boot_id: str) -> pb.AgentMessage:
        h = self.hello
        return self._send(
            pb.AgentMessage(
                hello=pb.Hello(
                    host_id=h.host_id,
                    boot_id=boot_id,
                    agent_version=AGENT_VERSION,
                    watched_roots=h.watched_roots,
                    capabilities=[*h.capabilities, PAUSE_CAPABILITY],
                    hostname=h.hostname,
                    tripwire_mode=h.tripwire_mode(),
                )
            )
        )

    def _requests(self) -> Iterator[pb.AgentMessage]:
        # Windows of an earlier boot are preceded by a Hello carrying that boot_id, and the
        # current boot's Hello is repeated before its own windows: the windows after a
        # Hello belong to its boot.
        pending = self.spool.pending(limit=1)
        boot = pending[0][1].boot_id if pending else self.hello.boot_id
        yield self._hello(boot)
        last_row = 0
        last_sent = time.monotonic()
        while True:
            with self._wake:
                seen = self._submitted
            sent_any = False
            while True:
                with self._wake:
                    r = self._results.popleft() if self._results else None
                if r is None:
                    break
                yield self._send(pb.AgentMessage(action_result=r))
                sent_any = True
            probe_next = False
            if not self._holding() and self._rewind:
                # Back from a pause: the collector took nothing after the window it
                # paused; everything unacked again, after a Hello. Back on schedule,
                # the first window goes alone: if the collector is still behind and
                # pauses again, one window was sent for nothing, not the whole spool.
                self._rewind, self._probe = False, None
                last_row = 0
                pending = self.spool.pending(limit=1)
                with self._seq_lock:
                    evidence, payload = self._evidence_seq, self._evidence_payload
                if self._evidence_waiting() and evidence is not None and evidence[0] == boot:
                    # The attack window first, a copy ahead of the spool (before the
                    # hello: it belongs to the boot the stream is in).
                    early = pb.AgentMessage.FromString(payload)
                    early.window.ahead = True
                    yield self._send(early)
                boot = pending[0][1].boot_id if pending else self.hello.boot_id
                yield self._hello(boot)
                probe_next = not self._evidence_waiting() and not self._called_back
            for row_id, sw in self.spool.pending(after_id=last_row, limit=256):
                if self._holding() or self._probing():
                    break
                last_row = row_id
                if sw.boot_id != boot:
                    boot = sw.boot_id
                    yield self._hello(boot)
                msg = pb.AgentMessage.FromString(sw.payload)
                if self._due_since is None:
                    self._due_since = time.monotonic()
                if probe_next:
                    self._probe, probe_next = (boot, msg.window.seq), False
                yield self._send(msg)
                sent_any = True
            if sent_any:
                last_sent = time.monotonic()
                continue
            if self._stop.is_set():
                yield self._send(pb.AgentMessage(goodbye=pb.Goodbye(reason="agent stopping")))
                return
            if time.monotonic() - last_sent >= self.heartbeat_s:
                hb = pb.Heartbeat(spool_depth=self.spool.depth, spool_dropped=self.spool.dropped)
                hb.at.GetCurrentTime()
                yield self._send(pb.AgentMessage(heartbeat=hb))
                last_sent = time.monotonic()
            # Woken by a window, a result or stop (each notifies); else the heartbeat,
            # or the end of a pause.
            due = self.heartbeat_s - (time.monotonic() - last_sent)
            if self._rewind:
                due = min(due, self._paused_until - time.monotonic())
            with self._wake:
                if self._submitted == seen and not self._stop.is_set():
                    self._wake.wait(timeout=max(due, 0.05))

    def _channel(self, target: str) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(target, self.credentials, options=CHANNEL_OPTIONS)
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)

    def _run(self) -> None:
        # One channel per collector for the shipper's life: gRPC reconnects it by itself,
        # and closing a channel while its calls wind down is where gRPC Python has
        # crashed. It is replaced only when the answer guard gave up on a stream (a
        # connection that may be wedged), and closed by this thread once it is done.
        attempt = 0
        missed = 0  # collectors in a row whose stream ended before they answered
        channels: dict[str, grpc.Channel] = {}
        try:
            while not self._stop.is_set():
                target = self.target
                if target not in channels:
                    channels[target] = self._channel(target)
                guarded = self.unanswered
                code, pushback = self._stream(channels[target])
                if self._stop.is_set():
                    break
                if self.unanswered != guarded:
                    channels.pop(target).close()
                if self._progress:
                    attempt = missed = 0
                gone = pushback is None and (code is None or code in RETRYABLE)
                if len(self.targets) > 1 and gone and not self._answered:
                    missed += 1
                    self._target_at = (self._target_at + 1) % len(self.targets)
                    self.failovers += 1
                    log.warning("collector %s does not answer; trying %s", target, self.target)
                    if missed % len(self.targets):
                        continue  # the next collector at once; back off once all were tried
                delay = retry_delay_s(
                    code, pushback, attempt, self.backoff_initial_s, self.backoff_max_s
                )
                attempt += 1
                if delay is None:
                    self._stop.wait(self.refused_retry_s)
                elif pushback is None:
                    if self.target not in channels:
                        channels[self.target] = self._channel(self.target)
                    self._back_off(channels[self.target], delay)
                else:
                    self._evidence.wait(delay)
        finally:
            for channel in channels.values():
                channel.close()

    def _back_off(self, channel: grpc.Channel, delay_s: float) -> None:
        """Wait ``delay_s``, or only until the channel is READY again if it was not.

        While its connection is down, gRPC reconnects the channel by itself (its backoff
        capped at 5 s by ``CHANNEL_OPTIONS``) and fails every stream opened meanwhile at
        once with the last connection error, even when the network is already back
        (after a partition: "Network is unreachable" for up to 6 s after the link
        returned). Each such failure used to cost a whole backoff of the shipper's own,
        up to ``backoff_max_s``, on top of gRPC's: a real agent came back up to 20 s
        after its collector could be reached. A connection that comes back ends the wait.
        """
        back = threading.Event()
        down = False

        def watch(state: grpc.ChannelConnectivity) -> None:
            nonlocal down
            if state is not grpc.ChannelConnectivity.READY:
                down = True
            elif down:
                back.set()

        self._backing_off = back
        channel.subscribe(watch, try_to_connect=True)
        try:
            if not self._stop.is_set():
                back.wait(delay_s)
        finally:
            channel.unsubscribe(watch)
            self._backing_off = None

    def _stream(self, channel: grpc.Channel) -> tuple[grpc.StatusCode | None, int | None]:
        """One Telemetry.Stream until it ends: (its status, the collector's pushback)."""
        self._progress = self._answered = False
        self._paused_until, self._rewind, self._probe = 0.0, False, None  # a new stream starts over
        if not self._stop.is_set():
            self._evidence.clear()  # what is spooled now goes out on this stream
        try:
            stub = telemetry_pb2_grpc.TelemetryStub(channel)
            self._alarm_to = None if self.target in self._no_alarms else (self.target, stub)
            call = stub.Stream(self._requests())
            self._call = call
            self._due_since = time.monotonic()
            self._arm_guard(call, self.answer_timeout_s)
            for reply in call:
                self._answered = True
                if not self.connected.is_set():
                    self.connected.set()
                    self.connections += 1
                self._handle(reply)
                owed = self.spool.depth and not self._holding()
                self._due_since = time.monotonic() if owed else None
            log.info("collector closed the stream")
            return None, None
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            self.last_status = code
            pushback = pushback_ms_of(exc)
            if self._stop.is_set():
                return code, pushback
            if code in RETRYABLE or pushback is not None:
                log.info("stream to %s lost (%s: %s); reconnecting", self.target, code, details)
            else:
                log.error(
                    "collector %s refused the stream (%s: %s); not retrying for %.0f s",
                    self.target,
                    code,
                    details,
                    self.refused_retry_s,
                )
            return code, pushback
        finally:
            self.connected.clear()
            self._call = None

    def _arm_guard(self, call: grpc.Future, after_s: float) -> None:
        guard = threading.Timer(after_s, self._check_answers, (call,))
        guard.daemon = True
        guard.start()

    def _check_answers(self, call: grpc.Future) -> None:
        """The answer guard: cancel ``call`` if it owes an answer for ``answer_timeout_s``.

        Runs on a timer while the stream lives, at most once per ``answer_timeout_s``
        when nothing is due, so an idle agent wakes for it no more than for its heartbeat.
        """
        if call.done() or self._stop.is_set():
            return
        now = time.monotonic()
        if self._due_since is None and self.spool.depth and not self._holding():
            self._due_since = now  # sent while the last ack was being handled
        since = self._due_since
        if since is not None and now - since >= self.answer_timeout_s:
            self.unanswered += 1
            log.warning(
                "no answer from %s for %.0f s (%d windows waiting); starting over",
                self.target,
                now - since,
                self.spool.depth,
            )
            call.cancel()
            return
        wait_s = self.answer_timeout_s if since is None else since + self.answer_timeout_s - now
        self._arm_guard(call, max(wait_s, 0.0) + 0.01)

    def _acked_past(self, ref: tuple[str, int]) -> bool:
        return self.acked[0] == ref[0] and self.acked[1] >= ref[1]

    def _evidence_waiting(self) -> bool:
        """Whether a window with evidence spooled by this process is not acked yet."""
        evidence = self._evidence_seq
        return evidence is not None and not self._acked_past(evidence)

    def _holding(self) -> bool:
        """Whether windows wait: paused by the collector, no evidence unacked."""
        return time.monotonic() < self._paused_until and not self._evidence_waiting()

    def _probing(self) -> bool:
        """Whether the window sent alone after a pause waits for its ack (no evidence)."""
        probe = self._probe
        if probe is None:
            return False
        if self._acked_past(probe) or self._evidence_waiting():
            self._probe = None
            return False
        return True

    def _handle(self, reply: pb.CollectorMessage) -> None:
        which = reply.WhichOneof("body")
        if which == "ack":
            if reply.ack.seq > MAX_SEQ:
                # No window ever has such a seq (the spool's SQLite keeps signed 64-bit).
                log.warning(
                    "collector %s acked seq %d, beyond any window sent; ignored",
                    self.target,
                    reply.ack.seq,
                )
                return
            if self.spool.ack(reply.ack.boot_id, reply.ack.seq):
                self._progress = True
            self.acked = (reply.ack.boot_id, reply.ack.seq)
            if self._probe is not None:
                with self._wake:  # the sender waits for this ack to send the rest
                    self._submitted += 1
                    self._wake.notify_all()
        elif which == "command":
            result = self.on_command(reply.command)
            self.submit_result(result)
        elif which == "pause":
            wait_s = min(reply.pause.quiet_ms / 1000.0, self.backoff_max_s * 4)
            with self._wake:
                if wait_s > 0:
                    self.pauses += 1
                    log.debug("collector %s behind: windows held %.1f s", self.target, wait_s)
                    self._paused_until = time.monotonic() + wait_s
                    self._rewind, self._called_back = True, False
                elif self._rewind:  # called back (a Pause(0) when not paused: back already)
                    self._paused_until, self._called_back = 0.0, True
                self._submitted += 1  # the sender looks again
                self._wake.notify_all()
        elif which == "config":
            self.on_config(reply.config)
