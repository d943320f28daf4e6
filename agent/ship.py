"""The gRPC client: one Telemetry.Stream to the collector, kept open forever.

Contract: ``Shipper.submit_window(w)`` gives ``w`` the next seq of this boot
(starting at 1) and stores it in the spool before returning (durable);
``submit_result(r)`` queues an ActionResult in memory (bounded, drops oldest,
counted). The sender thread connects, sends Hello, then every unacked spooled
window in spool order (earlier boots' windows under their own boot_id), then
new ones as they come (a window always follows a Hello of its own boot: a
repeated Hello switches boot); an Ack trims the spool; a Command is handed to
``on_command`` and its ActionResult sent back. On any stream failure it
reconnects with exponential backoff (jitter, cap) and resends all unacked
windows. ``stop()`` sends Goodbye and half-closes. Every message sent is
written to the optional Recorder.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from tocsin.agent.spool import WindowSpool
from tocsin.v1 import CHANNEL_OPTIONS, telemetry_pb2_grpc
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import Recorder

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
})


@dataclass
class HelloInfo:
    host_id: str
    boot_id: str
    watched_roots: list[str]
    capabilities: list[str] = field(default_factory=list)
    tripwire_mode: str = "dry-run"
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
    ) -> None:
        self.target = target
        self.spool = spool
        self.hello = hello
        self.on_command = on_command
        self.credentials = credentials
        self.recorder = recorder
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.heartbeat_s = heartbeat_s
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._wake = threading.Condition()
        self._results: collections.deque[pb.ActionResult] = collections.deque(maxlen=max_results)
        self.results_dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tocsin-ship", daemon=True)
        self._call: grpc.Future | None = None
        self.connected = threading.Event()
        self.connections = 0
        self.acked: tuple[str, int] = ("", 0)

    # ------------------------------------------------------------ producers
    def submit_window(self, w: pb.Window) -> int:
        """Assign the next seq, spool durably, wake the sender; returns the seq."""
        with self._seq_lock:
            self._seq += 1
            w.seq = self._seq
            payload = pb.AgentMessage(window=w).SerializeToString()
            self.spool.put(self.hello.boot_id, w.seq, payload)
        with self._wake:
            self._wake.notify_all()
        return w.seq

    def submit_result(self, r: pb.ActionResult) -> None:
        with self._wake:
            if len(self._results) == self._results.maxlen:
                self.results_dropped += 1
            self._results.append(r)
            self._wake.notify_all()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Send Goodbye (if connected), half-close, and stop reconnecting."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
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
        return self._send(pb.AgentMessage(hello=pb.Hello(
            host_id=h.host_id, boot_id=boot_id, agent_version=AGENT_VERSION,
            watched_roots=h.watched_roots, capabilities=h.capabilities, hostname=h.hostname,
            tripwire_mode=h.tripwire_mode)))

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
            sent_any = False
            while True:
                with self._wake:
                    r = self._results.popleft() if self._results else None
                if r is None:
                    break
                yield self._send(pb.AgentMessage(action_result=r))
                sent_any = True
            for row_id, sw in self.spool.pending(after_id=last_row, limit=256):
                last_row = row_id
                if sw.boot_id != boot:
                    boot = sw.boot_id
                    yield self._hello(boot)
                msg = pb.AgentMessage.FromString(sw.payload)
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
            with self._wake:
                if not self._results and not self._stop.is_set():
                    self._wake.wait(timeout=0.2)

    def _channel(self) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS)
        return grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with self._channel() as channel:
                    stub = telemetry_pb2_grpc.TelemetryStub(channel)
                    call = stub.Stream(self._requests())
                    self._call = call
                    for reply in call:
                        if not self.connected.is_set():
                            self.connected.set()
                            self.connections += 1
                        self._handle(reply)
                    log.info("collector closed the stream")
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if self._stop.is_set():
                    break
                if code in RETRYABLE:
                    log.info("stream to %s lost (%s); reconnecting", self.target, code)
                else:
                    log.error("stream to %s failed (%s: %s); retrying", self.target, code,
                              exc.details() if hasattr(exc, "details") else exc)
            finally:
                self.connected.clear()
                self._call = None
            if self._stop.is_set():
                break
            if time.monotonic() - started > 10:
                attempt = 0
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2**attempt)
            attempt += 1
            self._stop.wait(delay * random.uniform(0.5, 1.0))

    def _handle(self, reply: pb.CollectorMessage) -> None:
        which = reply.WhichOneof("body")
        if which == "ack":
            self.spool.ack(reply.ack.boot_id, reply.ack.seq)
            self.acked = (reply.ack.boot_id, reply.ack.seq)
        elif which == "command":
            result = self.on_command(reply.command)
            self.submit_result(result)
        elif which == "config":
            log.info("config update received (tripwire_mode=%s); not applied yet",
                     reply.config.tripwire_mode)
