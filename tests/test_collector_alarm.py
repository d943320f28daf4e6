"""The Alarm call: a window with evidence judged beside its stream (real collector, gRPC).

An agent's stream can hold a spool in front of its attack window (a collector that
was behind, a link that came back); the agent also sends that window alone in a
unary ``Alarm`` call, judged at once, neither stored nor acked. These tests use a
raw gRPC client for the agent, so that what is on the stream and what is in the
alarm is exactly what the test says.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from fakeagent import T0, encrypting
from tocsin.collector.admission import AdmissionConfig
from tocsin.collector.app import assemble
from tocsin.collector.protocols import ThresholdScorer
from tocsin.collector.ratelimit import RateLimits
from tocsin.collector.store import SqliteStore
from tocsin.collector.webhook import MemoryWebhookSink
from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc

HOST, BOOT = "alarm-host", "boot-1"


def quiet(seq: int) -> pb.AgentMessage:
    w = pb.Window(seq=seq, files_modified=1, files_probed=1, mean_entropy=4.0)
    w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
    return pb.AgentMessage(window=w)


def hello(host_id: str = HOST, boot_id: str = BOOT) -> pb.Hello:
    return pb.Hello(host_id=host_id, boot_id=boot_id, agent_version="test")


def rows(db: Path, sql: str) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute(sql).fetchone()[0])
    finally:
        con.close()


def test_an_alarm_is_judged_at_once_while_its_stream_has_not_sent_the_window(
    tmp_path: Path,
) -> None:
    """The stream has sent its hello and nothing else (49 quiet windows and the attack
    window still to come, as behind a spool); the Alarm carrying window 50 brings the
    suspend on the stream within a second. Sent again, or for a window without
    evidence, or by a host (or boot) that said no hello, it is not judged. The stream
    then sends windows 1 to 50: all stored, the attack judged once (one alert)."""

    async def main(db: Path) -> tuple[float, list[bool], int]:
        store = SqliteStore.open(db)
        c = assemble(
            store,
            ThresholdScorer(),
            MemoryWebhookSink(),
            mode="enforce",
            admission=AdmissionConfig(),
        )
        port = await c.start("127.0.0.1:0")
        out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        await out.put(pb.AgentMessage(hello=hello()))

        async def requests():  # type: ignore[no-untyped-def]
            while (m := await out.get()) is not None:
                yield m

        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=CHANNEL_OPTIONS
            ) as ch:
                stub = pb_grpc.TelemetryStub(ch)
                call = stub.Stream(requests())
                first = await call.read()
                assert first.WhichOneof("body") == "ack", first
                attack = encrypting(50).window
                sent = time.monotonic()
                reply = await stub.Alarm(pb.AlarmRequest(hello=hello(), window=attack))
                answers = [reply.judged]
                cmd = None
                while cmd is None:
                    msg = await asyncio.wait_for(call.read(), 10)
                    if msg.WhichOneof("body") == "command":
                        cmd = msg.command
                answered_s = time.monotonic() - sent
                assert cmd.kind == "suspend" and list(cmd.pids) == [4242], cmd
                again = await stub.Alarm(pb.AlarmRequest(hello=hello(), window=attack))
                no_evidence = await stub.Alarm(
                    pb.AlarmRequest(hello=hello(), window=quiet(51).window)
                )
                stranger = await stub.Alarm(
                    pb.AlarmRequest(hello=hello("nobody-said-hello"), window=attack)
                )
                other_boot = await stub.Alarm(
                    pb.AlarmRequest(hello=hello(boot_id="boot-0"), window=encrypting(52).window)
                )
                answers += [again.judged, no_evidence.judged, stranger.judged, other_boot.judged]
                for seq in range(1, 50):
                    await out.put(quiet(seq))
                await out.put(pb.AgentMessage(window=attack))
                acked = 0
                while acked < 50:
                    msg = await asyncio.wait_for(call.read(), 10)
                    if msg.WhichOneof("body") == "ack":
                        acked = msg.ack.seq
                await out.put(None)
                call.cancel()
                answers.append(c.telemetry.alarms == 1)  # tocsin_collector_alarms_total
        finally:
            await c.stop(0.5)
        return answered_s, answers, acked

    db = tmp_path / "tocsin.db"
    answered_s, answers, acked = asyncio.run(main(db))
    assert answered_s < 1.0, answered_s
    assert answers == [True, False, False, False, False, True], answers
    assert acked == 50
    assert rows(db, f"SELECT count(*) FROM windows WHERE host_id = '{HOST}'") == 50
    assert rows(db, "SELECT count(*) FROM alerts WHERE severity = 'critical'") == 1


def test_a_flood_of_alarms_past_the_rate_limit_is_refused_without_a_log_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rogue agent calling Alarm 300 times past its host's rate limit (burst 20) is
    refused RESOURCE_EXHAUSTED and counted, and the collector's log does not grow a
    line per call (a unary call costs the sender nothing); its stream still works."""

    async def main(db: Path) -> tuple[dict[str, int], int, int]:
        store = SqliteStore.open(db)
        c = assemble(
            store,
            ThresholdScorer(),
            MemoryWebhookSink(),
            mode="enforce",
            rate_limits=RateLimits(messages_per_s=1.0, messages_burst=20.0),
        )
        port = await c.start("127.0.0.1:0")
        out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        await out.put(pb.AgentMessage(hello=hello()))

        async def requests():  # type: ignore[no-untyped-def]
            while (m := await out.get()) is not None:
                yield m

        codes: dict[str, int] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.TelemetryStub(ch)
                call = stub.Stream(requests())
                await call.read()
                for seq in range(1, 301):
                    try:
                        reply = await stub.Alarm(
                            pb.AlarmRequest(hello=hello(), window=encrypting(seq).window)
                        )
                        key = f"judged={reply.judged}"
                    except grpc.aio.AioRpcError as exc:
                        key = exc.code().name
                    codes[key] = codes.get(key, 0) + 1
                await out.put(None)
                call.cancel()
                refusals = c.telemetry.rate_refusals
        finally:
            await c.stop(0.5)
        return codes, refusals, len(caplog.records)

    with caplog.at_level(logging.INFO, logger="tocsin"):
        codes, refusals, lines = asyncio.run(main(tmp_path / "tocsin.db"))
    assert codes.get("RESOURCE_EXHAUSTED", 0) >= 270, codes
    assert refusals == codes["RESOURCE_EXHAUSTED"]
    assert lines < 50, [r.getMessage() for r in caplog.records][-20:]


@pytest.mark.parametrize("end_s", [221_845_392_000, -62_135_596_900, 2**62], ids=str)
def test_an_alarm_with_a_forged_date_is_judged_as_received(tmp_path: Path, end_s: int) -> None:
    """An alarm dated year 9000, before year 1 or past any calendar is re-dated to its
    arrival like a stream's window (``max_clock_skew_s``): judged, the suspend sent,
    nothing raised in the collector."""

    async def main(db: Path) -> tuple[bool, str]:
        store = SqliteStore.open(db)
        c = assemble(store, ThresholdScorer(), MemoryWebhookSink(), mode="enforce")
        port = await c.start("127.0.0.1:0")
        out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        await out.put(pb.AgentMessage(hello=hello()))

        async def requests():  # type: ignore[no-untyped-def]
            while (m := await out.get()) is not None:
                yield m

        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.TelemetryStub(ch)
                call = stub.Stream(requests())
                await call.read()
                w = encrypting(3).window
                w.start.seconds, w.end.seconds = end_s - 1, end_s
                reply = await stub.Alarm(pb.AlarmRequest(hello=hello(), window=w))
                kind = ""
                while kind != "command":
                    msg = await asyncio.wait_for(call.read(), 10)
                    kind = msg.WhichOneof("body")
                await out.put(None)
                call.cancel()
        finally:
            await c.stop(0.5)
        return reply.judged, msg.command.kind

    assert asyncio.run(main(tmp_path / "tocsin.db")) == (True, "suspend")
