"""A tiny Telemetry server on 127.0.0.1 for tests and benches: stores what agents send, acks it.

``GrpcSink()`` listens on 127.0.0.1:<port 0>; ``.target`` is "127.0.0.1:PORT";
``.messages`` holds every AgentMessage received (bounded by ``max_messages``,
then only counted in ``.dropped``); ``windows()`` returns the received windows.
Every window is acknowledged at once, so the agent's spool stays empty
(``ack_seq(window)`` says with which seq: the window's own unless a test lies).
``send(command)`` hands a Command to the connected agent (within 0.05 s), as a
collector would: what the agent does with it comes back in ``results()``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc


class _Servicer(pb_grpc.TelemetryServicer):
    def __init__(self, sink: GrpcSink) -> None:
        self._sink = sink

    def Stream(
        self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.CollectorMessage]:
        acks: queue.Queue[pb.CollectorMessage | None] = queue.Queue()

        def read() -> None:
            boot = ""
            for msg in request_iterator:
                self._sink.add(msg)
                kind = msg.WhichOneof("body")
                if kind == "hello":
                    boot = msg.hello.boot_id
                elif kind == "window":
                    seq = self._sink.ack_seq(msg.window)
                    acks.put(pb.CollectorMessage(ack=pb.Ack(boot_id=boot, seq=seq)))
            acks.put(None)

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                out = acks.get(timeout=0.05)
            except queue.Empty:
                try:
                    out = pb.CollectorMessage(command=self._sink.commands.get_nowait())
                except queue.Empty:
                    continue
            if out is None:
                return
            yield out


class GrpcSink:
    def __init__(
        self,
        max_messages: int = 100_000,
        ack_seq: Callable[[pb.Window], int] = lambda w: w.seq,
    ) -> None:
        self.ack_seq = ack_seq
        self.messages: list[pb.AgentMessage] = []
        self.dropped = 0
        self.commands: queue.Queue[pb.Command] = queue.Queue()
        self._max = max_messages
        self._lock = threading.Lock()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), options=CHANNEL_OPTIONS
        )
        pb_grpc.add_TelemetryServicer_to_server(_Servicer(self), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"
        self.server.start()

    def add(self, msg: pb.AgentMessage) -> None:
        with self._lock:
            if len(self.messages) < self._max:
                self.messages.append(msg)
            else:
                self.dropped += 1

    def send(self, command: pb.Command) -> None:
        self.commands.put(command)

    def windows(self) -> list[pb.Window]:
        with self._lock:
            return [m.window for m in self.messages if m.WhichOneof("body") == "window"]

    def results(self) -> list[pb.ActionResult]:
        with self._lock:
            return [
                m.action_result for m in self.messages if m.WhichOneof("body") == "action_result"
            ]

    def stop(self) -> None:
        self.server.stop(grace=0.5)
