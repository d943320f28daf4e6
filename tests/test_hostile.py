"""Hostile input (hypothesis): the collector never crashes, a good agent beside it loses nothing.

A real collector (grpc.aio on 127.0.0.1:0, SQLite file) runs in a thread with
small rate limits. One well-behaved agent (the real Shipper and an on-disk
spool) streams windows the whole time. Hypothesis opens stream after stream
with random bytes as frames, random AgentMessages (bad or missing hello,
seq 0 / huge / repeated / decreasing, unknown agents), oversized messages,
replays and floods. Each hostile stream must end with a clear status (never
UNKNOWN, which would be an unhandled exception in our code); afterwards the
collector still answers and every window of the good agent is stored once.

Impersonating the good agent's host id is not tried: without TLS anybody can
(that is what ``--insecure`` means); with mTLS the certificate decides
(tests/test_mtls.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tocsin.agent.ship import HelloInfo, Shipper
from tocsin.agent.spool import WindowSpool
from tocsin.collector.app import assemble
from tocsin.collector.protocols import ThresholdScorer
from tocsin.collector.ratelimit import RateLimits
from tocsin.collector.store import SqliteStore
from tocsin.collector.webhook import MemoryWebhookSink
from tocsin.v1 import MAX_MESSAGE_BYTES
from tocsin.v1 import telemetry_pb2 as pb

METHOD = "/tocsin.v1.Telemetry/Stream"
GOOD = "good-agent"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# gRPC itself answers a frame that is not an AgentMessage (before our code sees it).
ALLOWED_RAW = ALLOWED | {grpc.StatusCode.INTERNAL}


class CollectorThread:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.tmp = tmp
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        limits = RateLimits(
            messages_per_s=25, messages_burst=60, bytes_per_s=200_000, bytes_burst=1_000_000
        )
        self.collector = assemble(
            SqliteStore.open(self.tmp / "c.db"),
            ThresholdScorer(),
            MemoryWebhookSink(),
            mode="off",
            rate_limits=limits,
        )
        self.port = self.loop.run_until_complete(self.collector.start("127.0.0.1:0"))
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.collector.stop(0.5), self.loop)
        fut.result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CollectorThread, Shipper]]:
    tmp = tmp_path_factory.mktemp("hostile")
    col = CollectorThread(tmp)
    spool = WindowSpool(tmp / "good-spool.sqlite")
    good = Shipper(
        f"127.0.0.1:{col.port}",
        spool,
        HelloInfo(GOOD, "good-boot", ["/srv"]),
        lambda c: pb.ActionResult(command_id=c.id),
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )
    good.start()
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            good.submit_window(pb.Window(files_modified=1))
            stop.wait(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    yield col, good
    stop.set()
    producer.join(5)
    col.stop()
    good.stop()


def hostile_id() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"x[A-Za-z0-9._-]{0,20}", fullmatch=True),
        st.text(max_size=80),  # mostly invalid host ids
    )


windows = st.builds(
    lambda seq, n, paths: pb.AgentMessage(
        window=pb.Window(seq=seq, files_modified=n, example_paths=paths)
    ),
    st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1)),
    st.integers(0, 2**32 - 1),
    st.lists(st.text(max_size=50), max_size=5),
)
hellos = st.builds(
    lambda h, b: pb.AgentMessage(hello=pb.Hello(host_id=h, boot_id=b)),
    hostile_id(),
    st.one_of(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), st.text()),
)
others = st.sampled_from(
    [
        pb.AgentMessage(),
        pb.AgentMessage(heartbeat=pb.Heartbeat(spool_depth=1)),
        pb.AgentMessage(goodbye=pb.Goodbye(reason="bye")),
        pb.AgentMessage(
            action_result=pb.ActionResult(command_id="nope", kind="isolate", status="done")
        ),
    ]
)
messages = st.lists(st.one_of(hellos, windows, others), min_size=1, max_size=12)


@st.composite
def hostile_stream(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    kind = draw(
        st.sampled_from(["raw", "messages", "valid-then-junk", "oversized", "flood", "replay"])
    )
    host = draw(st.from_regex(r"x[a-z0-9]{1,8}", fullmatch=True))
    hello = pb.AgentMessage(hello=pb.Hello(host_id=host, boot_id="b1")).SerializeToString()
    if kind == "raw":
        return kind, draw(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
    if kind == "messages":
        return kind, [m.SerializeToString() for m in draw(messages)]
    if kind == "valid-then-junk":
        junk = [m.SerializeToString() for m in draw(messages)]
        return kind, [hello, *junk, *draw(st.lists(st.binary(max_size=100), max_size=3))]
    if kind == "oversized":
        big = pb.AgentMessage(window=pb.Window(seq=1, example_paths=["p" * (MAX_MESSAGE_BYTES)]))
        return kind, [hello, big.SerializeToString()]
    if kind == "flood":
        # Far past the burst (60) plus what the refill (25/s) adds while a loaded
        # machine reads the stream, so the flood is cut however slowly it is read.
        n = draw(st.integers(500, 800))
        w = [pb.AgentMessage(window=pb.Window(seq=i + 1)).SerializeToString() for i in range(n)]
        return kind, [hello, *w]
    seqs = draw(st.lists(st.integers(1, 5), min_size=1, max_size=10))  # replayed, out of order
    return kind, [
        hello,
        *(pb.AgentMessage(window=pb.Window(seq=s)).SerializeToString() for s in seqs),
    ]


def run_stream(port: int, frames: list[bytes]) -> grpc.StatusCode:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)]
    ) as ch:
        call = ch.stream_stream(
            METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            for _ in call(iter(frames), timeout=5):
                pass
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=hostile_stream())
def test_hostile_streams_end_cleanly(
    town: tuple[CollectorThread, Shipper], stream: tuple[str, list[bytes]]
) -> None:
    col, _ = town
    kind, frames = stream
    code = run_stream(col.port, frames)
    assert code in (ALLOWED_RAW if kind in ("raw", "valid-then-junk") else ALLOWED), (kind, code)
    if kind in ("oversized", "flood"):
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, kind


def test_after_the_storm_the_good_agent_lost_nothing(town: tuple[CollectorThread, Shipper]) -> None:
    col, good = town
    # The collector still takes a fresh, honest stream.
    ok = run_stream(
        col.port,
        [
            pb.AgentMessage(hello=pb.Hello(host_id="honest-2", boot_id="b")).SerializeToString(),
            pb.AgentMessage(window=pb.Window(seq=1)).SerializeToString(),
        ],
    )
    assert ok == grpc.StatusCode.OK
    end = time.monotonic() + 20
    while good.spool.depth > 0 and time.monotonic() < end:
        time.sleep(0.05)
    top = good._seq
    assert top > 20
    store = col.collector.store
    deadline = time.monotonic() + 10
    while store.committed_seq(GOOD, "good-boot") < top and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = store._exec(  # type: ignore[attr-defined]
        "SELECT seq FROM windows WHERE host_id=? AND boot_id=? ORDER BY seq", (GOOD, "good-boot")
    )
    assert [r[0] for r in rows][:top] == list(range(1, top + 1))
    assert col.collector.telemetry.limits.refusals > 0  # floods were cut
    assert good.last_status is None  # the good agent's stream was never refused
