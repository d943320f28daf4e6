"""The shipper against a real gRPC Telemetry server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from tocsin.agent.ship import HelloInfo, Shipper
from tocsin.agent.spool import WindowSpool
from tocsin.v1 import CHANNEL_OPTIONS, telemetry_pb2_grpc
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import read_recording


class _Collector(telemetry_pb2_grpc.TelemetryServicer):
    """Records every message; acks windows unless ``ack`` is False; can send one command.

    ``ack_hello``: answer every hello at once, as the real collector does.
    """

    def __init__(
        self, ack: bool = True, command: pb.Command | None = None, ack_hello: bool = False
    ) -> None:
        self.received: list[pb.AgentMessage] = []
        self.ack = ack
        self.command = command
        self.ack_hello = ack_hello
        self.lock = threading.Lock()

    def Stream(
        self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.CollectorMessage]:
        boot = ""
        for msg in request_iterator:
            with self.lock:
                self.received.append(msg)
            which = msg.WhichOneof("body")
            if which == "hello":
                boot = msg.hello.boot_id
                if self.command is not None:
                    yield pb.CollectorMessage(command=self.command)
                if self.ack_hello:
                    yield pb.CollectorMessage(ack=pb.Ack(boot_id=boot, seq=0))
            elif which == "window" and self.ack:
                yield pb.CollectorMessage(ack=pb.Ack(boot_id=boot, seq=msg.window.seq))

    def kinds(self) -> list[str]:
        with self.lock:
            return [str(m.WhichOneof("body")) for m in self.received]


def _serve(servicer: _Collector, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(4), options=CHANNEL_OPTIONS)
    telemetry_pb2_grpc.add_TelemetryServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


def _wait(cond: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition never became true")


def _result(cmd: pb.Command) -> pb.ActionResult:
    return pb.ActionResult(command_id=cmd.id, kind=cmd.kind, status="dry-run", detail="test")


def test_hello_windows_acks_command_and_resend_after_restart(tmp_path: Path) -> None:
    first = _Collector(
        ack=False, command=pb.Command(id="cmd-1", kind="suspend", pids=[42], dry_run=True)
    )
    server, port = _serve(first)
    spool = WindowSpool(tmp_path / "spool.sqlite")
    shipper = Shipper(
        f"127.0.0.1:{port}",
        spool,
        HelloInfo("host-1", "boot-1", ["/srv"], ["suspend"]),
        _result,
        recorder=None,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )
    from tocsin.v1.recording import Recorder

    shipper.recorder = Recorder(tmp_path / "rec.jsonl")
    shipper.start()
    try:
        for _ in range(3):
            shipper.submit_window(pb.Window(files_modified=1))
        _wait(lambda: first.kinds().count("window") == 3 and "action_result" in first.kinds())
        assert first.kinds()[0] == "hello"
        assert first.received[0].hello.host_id == "host-1"
        seqs = [m.window.seq for m in first.received if m.WhichOneof("body") == "window"]
        assert seqs == [1, 2, 3]
        res = next(m.action_result for m in first.received if m.HasField("action_result"))
        assert res.command_id == "cmd-1"
        assert spool.depth == 3  # nothing acked yet

        server.stop(0).wait()
        shipper.submit_window(pb.Window(files_modified=4))  # spooled while disconnected
        second = _Collector(ack=True)
        server, _ = _serve(second, port)
        _wait(lambda: spool.depth == 0)
        seqs = [m.window.seq for m in second.received if m.WhichOneof("body") == "window"]
        assert second.kinds()[0] == "hello"
        assert seqs == [1, 2, 3, 4]  # every unacked window resent, in order
    finally:
        shipper.stop()
        server.stop(0)
    recorded = [m.WhichOneof("body") for m in read_recording(tmp_path / "rec.jsonl")]
    assert recorded[0] == "hello" and "action_result" in recorded and "window" in recorded


def test_previous_boot_windows_are_resent_under_their_boot(tmp_path: Path) -> None:
    spool = WindowSpool(tmp_path / "spool.sqlite")
    spool.put("old-boot", 7, pb.AgentMessage(window=pb.Window(seq=7)).SerializeToString())
    col = _Collector(ack=False)
    server, port = _serve(col)
    shipper = Shipper(f"127.0.0.1:{port}", spool, HelloInfo("h", "new-boot", []), _result)
    shipper.start()
    try:
        shipper.submit_window(pb.Window())
        _wait(lambda: col.kinds().count("window") == 2)
        seen = [(m.hello.boot_id if m.HasField("hello") else m.window.seq) for m in col.received]
        assert seen == ["old-boot", 7, "new-boot", 1]
    finally:
        shipper.stop()
        server.stop(0)


def _shipper(tmp_path: Path, port: int, **timing: float) -> tuple[WindowSpool, Shipper]:
    """Host h, boot-1, its spool in ``tmp_path``; ``timing``: the Shipper's backoff keywords."""
    spool = WindowSpool(tmp_path / "spool.sqlite")
    shipper = Shipper(f"127.0.0.1:{port}", spool, HelloInfo("h", "boot-1", []), _result, **timing)
    return spool, shipper


def _guarded_shipper(tmp_path: Path, port: int) -> tuple[WindowSpool, Shipper]:
    """A shipper whose answer guard gives a stream 1 s, retrying within 0.2 s."""
    return _shipper(tmp_path, port, backoff_initial_s=0.1, backoff_max_s=0.2, answer_timeout_s=1.0)


def test_a_stream_the_collector_never_answers_is_started_over(tmp_path: Path) -> None:
    """A stream stuck without any answer is cancelled and retried; once answered, it stays."""
    mute = _Collector(ack=False)
    server, port = _serve(mute)
    spool, shipper = _guarded_shipper(tmp_path, port)
    shipper.start()
    try:
        shipper.submit_window(pb.Window())
        _wait(lambda: shipper.unanswered >= 2 and mute.kinds().count("hello") >= 3)
        assert shipper.connections == 0 and spool.depth == 1
        mute.ack = True  # the collector answers again: the window goes, no more restarts
        _wait(lambda: spool.depth == 0)
        before = shipper.unanswered
        time.sleep(2.5)
        assert shipper.unanswered == before and shipper.connections == 1
    finally:
        shipper.stop()
        server.stop(0)
        spool.close()


def test_a_stream_that_stops_answering_is_started_over(tmp_path: Path) -> None:
    """Answered at first, then silent while a window waits: cancelled and retried.

    Keepalive pings go on over such a stream (the connection is fine), so only the
    missing acks show it is stuck. An idle stream owes nothing and is left alone.
    """
    col = _Collector(ack=False, ack_hello=True)
    server, port = _serve(col)
    spool, shipper = _guarded_shipper(tmp_path, port)
    shipper.start()
    try:
        _wait(lambda: shipper.connections == 1)
        time.sleep(1.5)  # idle and answered: nothing is due, nothing restarts
        assert shipper.unanswered == 0 and shipper.connections == 1
        shipper.submit_window(pb.Window())
        _wait(lambda: shipper.unanswered >= 2 and col.kinds().count("window") >= 3)
        assert spool.depth == 1 and shipper.connections >= 3
        col.ack = True
        _wait(lambda: spool.depth == 0)
        before = (shipper.unanswered, shipper.connections)
        time.sleep(2.5)
        assert (shipper.unanswered, shipper.connections) == before
    finally:
        shipper.stop()
        server.stop(0)
        spool.close()


def test_a_collector_back_is_reached_within_grpcs_reconnect_not_the_shippers_backoff(
    tmp_path: Path,
) -> None:
    """The collector comes back while the shipper backs off after a connection failure.

    gRPC reconnects the channel by itself (0.5 s, then x1.6) and fails a stream opened
    before it has at once with the stale connection error; the shipper's own backoff
    (here 10-20 s) ends as soon as the channel is READY, not later.
    """
    server, port = _serve(_Collector())
    server.stop(0).wait()  # the port, now refusing connections
    spool, shipper = _shipper(tmp_path, port, backoff_initial_s=20.0, backoff_max_s=20.0)
    shipper.start()
    try:
        shipper.submit_window(pb.Window())
        _wait(lambda: shipper.last_status == grpc.StatusCode.UNAVAILABLE)
        time.sleep(1.0)
        server, _ = _serve(_Collector(), port)
        back = time.monotonic()
        _wait(lambda: spool.depth == 0, 25)
        assert time.monotonic() - back < 4.0  # gRPC's next attempt; the shipper's: >= 9 s
    finally:
        shipper.stop()
        server.stop(0)
        spool.close()


class _Pausing(_Collector):
    """Acks windows; pauses the stream (``Pause(pause_ms)``) on the window ``pause_at``
    and takes nothing after it until the next hello, as a collector behind does."""

    def __init__(self, pause_ms: int, pause_at: int = 2) -> None:
        super().__init__()
        self.pause_ms, self.pause_at = pause_ms, pause_at
        self.arrivals: list[tuple[float, str, int]] = []  # (when, kind, seq)

    def Stream(
        self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.CollectorMessage]:
        boot, paused, acked = "", False, 0
        for msg in request_iterator:
            which = str(msg.WhichOneof("body"))
            with self.lock:
                self.received.append(msg)
                self.arrivals.append((time.monotonic(), which, msg.window.seq))
            if which == "hello":
                boot, paused = msg.hello.boot_id, False
                yield pb.CollectorMessage(ack=pb.Ack(boot_id=boot, seq=acked))
            elif which == "window" and not paused:
                if msg.window.seq == self.pause_at:
                    paused, self.pause_at = True, -1
                    yield pb.CollectorMessage(pause=pb.Pause(quiet_ms=self.pause_ms))
                else:
                    acked = msg.window.seq
                    yield pb.CollectorMessage(ack=pb.Ack(boot_id=boot, seq=acked))


def _evidence_window() -> pb.Window:
    return pb.Window(files_type_destroyed=12, files_modified=12)


def test_a_pause_holds_windows_on_the_open_stream_then_resends_them_after_a_hello(
    tmp_path: Path,
) -> None:
    """Paused for 1.5 s on its second window, the shipper keeps its stream (no new
    connection), sends no window until the pause is over, then a hello and every window
    from the one paused on, in order; all are acked. Its hello says it can pause."""
    servicer = _Pausing(pause_ms=1500)
    server, port = _serve(servicer)
    spool, shipper = _shipper(tmp_path, port)
    shipper.start()
    try:
        shipper.submit_window(pb.Window())
        _wait(lambda: spool.depth == 0)
        shipper.submit_window(pb.Window())  # paused on this one
        _wait(lambda: shipper.pauses == 1)
        paused_at = time.monotonic()
        for _ in range(3):
            shipper.submit_window(pb.Window())
            time.sleep(0.2)
        _wait(lambda: spool.depth == 0, timeout_s=10)
    finally:
        shipper.stop()
        server.stop(0)
    assert shipper.connections == 1
    first = servicer.received[0].hello
    assert "pause" in first.capabilities
    after = [(t, kind, seq) for t, kind, seq in servicer.arrivals if t > paused_at]
    assert after[0][1] == "hello" and after[0][0] - paused_at >= 1.3, after
    assert [seq for _, kind, seq in after if kind == "window"] == [2, 3, 4, 5], after


def test_evidence_spooled_during_a_pause_goes_out_at_once(tmp_path: Path) -> None:
    """Paused for 30 s, the shipper sends a window with evidence (tocsin.v1.evidence) as
    soon as it is spooled: a hello, the quiet windows before it, then it."""
    servicer = _Pausing(pause_ms=30_000)
    server, port = _serve(servicer)
    spool, shipper = _shipper(tmp_path, port)
    shipper.start()
    try:
        shipper.submit_window(pb.Window())
        shipper.submit_window(pb.Window())  # paused on this one
        _wait(lambda: shipper.pauses == 1)
        shipper.submit_window(pb.Window())
        time.sleep(0.3)
        held = spool.depth
        spooled_at = time.monotonic()
        shipper.submit_window(_evidence_window())
        _wait(lambda: spool.depth == 0, timeout_s=5)
        acked_in = time.monotonic() - spooled_at
    finally:
        shipper.stop()
        server.stop(0)
    assert held == 2, "windows went out during the pause"
    assert acked_in < 2.0, acked_in
    assert shipper.connections == 1
    kinds = [(kind, seq) for _, kind, seq in servicer.arrivals if kind in ("hello", "window")]
    assert kinds[-4:] == [("hello", 0), ("window", 2), ("window", 3), ("window", 4)], kinds


class _Alarmed(_Collector):
    """Reads the stream and acks nothing (a collector behind the agent's spool); takes
    Alarm calls, noting when each came."""

    def __init__(self) -> None:
        super().__init__(ack=False, ack_hello=True)
        self.alarms: list[tuple[float, pb.AlarmRequest]] = []

    def Alarm(self, request: pb.AlarmRequest, context: grpc.ServicerContext) -> pb.AlarmReply:
        with self.lock:
            self.alarms.append((time.monotonic(), request))
        return pb.AlarmReply(judged=True)


def test_a_window_with_evidence_is_also_sent_alone_in_an_alarm(tmp_path: Path) -> None:
    """Behind 30 unacked quiet windows, a window with evidence goes out at once in an
    Alarm call naming its host, boot and seq (the stream still carries it in order)."""
    servicer = _Alarmed()
    server, port = _serve(servicer)
    spool, shipper = _shipper(tmp_path, port)
    shipper.start()
    try:
        _wait(lambda: shipper.connected.is_set())
        for _ in range(30):
            shipper.submit_window(pb.Window())
        spooled_at = time.monotonic()
        seq = shipper.submit_window(_evidence_window())
        _wait(lambda: shipper.alarms_judged == 1, timeout_s=5)
        _wait(lambda: seq in [m.window.seq for m in servicer.received if m.HasField("window")])
    finally:
        shipper.stop()
        server.stop(0)
    assert spool.depth == 31  # nothing acked: the alarm is no ack
    ((at, request),) = servicer.alarms
    assert at - spooled_at < 1.0, at - spooled_at
    assert (request.hello.host_id, request.hello.boot_id) == ("h", "boot-1")
    assert request.window.seq == seq == 31 and request.window.files_type_destroyed == 12


def test_a_collector_without_alarms_is_sent_one_and_then_only_the_stream(
    tmp_path: Path,
) -> None:
    """An older collector answers the first Alarm UNIMPLEMENTED: the shipper sends it no
    more (a second attack window goes on the stream only), and nothing is lost."""
    servicer = _Collector(ack_hello=True)
    server, port = _serve(servicer)
    spool, shipper = _shipper(tmp_path, port)
    shipper.start()
    try:
        _wait(lambda: shipper.connected.is_set())
        shipper.submit_window(_evidence_window())
        _wait(lambda: shipper._alarm_to is None, timeout_s=5)
        shipper.submit_window(_evidence_window())
        _wait(lambda: spool.depth == 0)
    finally:
        shipper.stop()
        server.stop(0)
    assert shipper.alarms_sent == 1 and shipper.alarms_judged == 0
    assert [m.window.seq for m in servicer.received if m.HasField("window")] == [1, 2]
