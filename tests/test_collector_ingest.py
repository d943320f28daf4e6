"""The real collector in-process: grpc.aio on 127.0.0.1:0, SQLite file, HTTP webhook receiver."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from fakeagent import KERNEL_BOOT_ID, STARTED_AT_TICKS, T0, encrypting
from receiver import WebhookReceiver
from tocsin.collector.app import assemble
from tocsin.collector.protocols import ThresholdScorer
from tocsin.collector.server import Collector
from tocsin.collector.store import JudgedMark, SqliteStore, WindowItem
from tocsin.collector.webhook import HttpWebhookSink
from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import operator_pb2 as op
from tocsin.v1 import operator_pb2_grpc as op_grpc
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def hello(host: str = "srv-mairie", boot: str = "boot1") -> pb.AgentMessage:
    return pb.AgentMessage(
        hello=pb.Hello(
            host_id=host,
            boot_id=boot,
            agent_version="0.1.0",
            hostname=host,
            tripwire_mode="enforce",
        )
    )


def quiet(seq: int) -> pb.AgentMessage:
    w = pb.Window(seq=seq, files_modified=1)
    w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
    return pb.AgentMessage(window=w)


async def run_collector(tmp_path: Path, url: str, mode: str) -> tuple[Collector, int]:
    store = SqliteStore.open(tmp_path / "tocsin.db")
    c = assemble(store, ThresholdScorer(), HttpWebhookSink([url], attempts=2), mode=mode)
    port = await c.start("127.0.0.1:0")
    return c, port


async def until(pred: Any, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def stream(
    port: int, messages: list[pb.AgentMessage], want_commands: int = 0
) -> tuple[list[int], list[pb.Command]]:
    """Send messages, read until every window is acked and ``want_commands`` commands came."""
    acks: list[int] = []
    cmds: list[pb.Command] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
        call = pb_grpc.TelemetryStub(ch).Stream()
        for m in messages:
            await call.write(m)
        n_acks = sum(1 for m in messages if m.HasField("window") or m.HasField("hello"))

        async def read() -> None:
            async for resp in call:
                if resp.HasField("ack"):
                    acks.append(resp.ack.seq)
                else:
                    cmds.append(resp.command)
                if len(acks) >= n_acks and len(cmds) >= want_commands:
                    return

        await asyncio.wait_for(read(), 10)
        await call.done_writing()
    return acks, cmds


def test_enforce_encryption_alerts_suspends_isolates_and_dedupes(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    async def main() -> None:
        c, port = await run_collector(tmp_path, receiver.url, "enforce")
        try:
            msgs = [hello(), quiet(1), encrypting(2), encrypting(3), encrypting(4)]
            acks, cmds = await stream(port, msgs, want_commands=2)
            assert acks[0] == 0 and acks[-1] == 4 and acks == sorted(acks)
            assert [(x.kind, list(x.pids)) for x in cmds] == [("suspend", [4242]), ("isolate", [])]
            await until(lambda: receiver.of("alert"))
            (alert,) = receiver.of("alert")
            for key in (
                "alert_id",
                "host_id",
                "severity",
                "score",
                "detected_at",
                "window_start",
                "window_end",
                "reasons",
                "process",
                "actions",
                "summary",
                "example_paths",
                "incident_id",
                "mode",
            ):
                assert key in alert, key
            assert alert["severity"] == "critical" and alert["host_id"] == "srv-mairie"
            assert alert["detected_at"].endswith("Z") and alert["window_start"].endswith("Z")
            assert "type_destroyed:55" in alert["reasons"]
            assert any(r.startswith("anomaly_score:") for r in alert["reasons"])
            assert alert["process"] == {"pid": 4242, "name": "python3", "exe": "/usr/bin/python3"}
            assert {a["action"]: a["status"] for a in alert["actions"]} == {
                "suspend": "sent",
                "isolate": "sent",
            }
            assert "python3" in alert["summary"] and "srv-mairie" in alert["summary"]

            # Reconnect and resend: duplicates acked, not judged or stored again. Without
            # TLS a second stream of a host is refused while the first lives: wait for
            # the collector to see the first one end, as a real agent's retry would.
            await until(lambda: not c.router.is_connected("srv-mairie"))
            result = pb.AgentMessage(
                action_result=pb.ActionResult(
                    command_id=cmds[0].id,
                    kind="suspend",
                    status="done",
                    pids=[4242],
                    detail="stopped 3 processes",
                )
            )
            acks2, _ = await stream(port, [hello(), encrypting(3), result, encrypting(4)])
            assert acks2[0] == 4 and acks2[-1] == 4
            assert c.telemetry.duplicates == 2 and c.telemetry.windows_stored == 4
            await until(lambda: receiver.of("action"))
            (action,) = receiver.of("action")
            assert action["alert_id"] == alert["alert_id"] and action["status"] == "done"
            assert action["action"] == "suspend" and action["pids"] == [4242]
            host = c.store.get_host("srv-mairie")
            assert host is not None and host.suspended_pids == [4242] and host.windows == 4
            assert len(receiver.of("alert")) == 1
        finally:
            await c.stop(0.5)

    asyncio.run(main())


def test_dry_run_sends_no_commands_and_says_what_it_would_do(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    async def main() -> None:
        c, port = await run_collector(tmp_path, receiver.url, "dry-run")
        try:
            acks, cmds = await stream(port, [hello(), encrypting(1), encrypting(2)])
            assert cmds == [] and acks[-1] == 2
            await until(lambda: receiver.of("alert"))
            (alert,) = receiver.of("alert")
            assert alert["mode"] == "dry-run"
            assert [a["status"] for a in alert["actions"]] == ["dry-run", "dry-run"]
            assert alert["actions"][0]["detail"] == "would suspend pid 4242 (python3)"
            assert c.router.pending("srv-mairie") == 0
        finally:
            await c.stop(0.5)

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["enforce", "dry-run"])
def test_drill_is_suspended_but_never_isolated(
    tmp_path: Path, receiver: WebhookReceiver, mode: str
) -> None:
    """Even in dry-run: a drill proves the chain before enforce is switched on."""

    async def main() -> None:
        c, port = await run_collector(tmp_path, receiver.url, mode)
        try:
            _, cmds = await stream(port, [hello(), encrypting(1, drill=True)], want_commands=1)
            assert [x.kind for x in cmds] == ["suspend"]
            # The suspend names the tree root by the identity the window sampled.
            assert [(r.pid, r.start_ticks, r.kernel_boot_id) for r in cmds[0].processes] == [
                (4242, STARTED_AT_TICKS, KERNEL_BOOT_ID)
            ]
            assert cmds[0].deadline.seconds > 0
            await until(lambda: receiver.of("alert"))
            actions = {a["action"]: a["status"] for a in receiver.of("alert")[0]["actions"]}
            assert actions == {"suspend": "sent", "isolate": "skipped: drill"}
        finally:
            await c.stop(0.5)

    asyncio.run(main())


def test_first_message_not_hello_is_refused_and_server_goes_on(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    async def main() -> None:
        c, port = await run_collector(tmp_path, receiver.url, "off")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = pb_grpc.TelemetryStub(ch).Stream()
                await call.write(quiet(1))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in call:
                        pass
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "first message must be hello" in (err.value.details() or "")
                bad = pb_grpc.TelemetryStub(ch).Stream()
                await bad.write(hello(host="bad host/../x"))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in bad:
                        pass
                assert "invalid host_id" in (err.value.details() or "")
            acks, _ = await stream(port, [hello(), quiet(1)])
            assert acks[-1] == 1
        finally:
            await c.stop(0.5)

    asyncio.run(main())


def test_operator_isolate_waits_for_agent_and_release_lists_stopped(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    async def main() -> None:
        c, port = await run_collector(tmp_path, receiver.url, "off")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                opstub = op_grpc.OperatorStub(ch)
                call = pb_grpc.TelemetryStub(ch).Stream()
                await call.write(hello())
                it = call.__aiter__()
                assert (await it.__anext__()).HasField("ack")
                c.store.set_host_state("srv-mairie", suspended_pids=[77])

                isolate = asyncio.ensure_future(
                    opstub.Isolate(
                        op.HostActionRequest(host_id="srv-mairie", operator="alice", timeout_s=5)
                    )
                )
                cmd = (await it.__anext__()).command
                assert cmd.kind == "isolate"
                await call.write(
                    pb.AgentMessage(
                        action_result=pb.ActionResult(
                            command_id=cmd.id, kind="isolate", status="done", detail="table tocsin"
                        )
                    )
                )
                reply = await isolate
                assert reply.status == "done" and list(reply.still_suspended) == [77]

                hosts = await opstub.ListHosts(op.ListHostsRequest())
                (h,) = hosts.hosts
                assert h.connected and h.isolated

                release = asyncio.ensure_future(
                    opstub.Release(
                        op.HostActionRequest(host_id="srv-mairie", operator="alice", timeout_s=5)
                    )
                )
                cmd = (await it.__anext__()).command
                assert cmd.kind == "release"
                await call.write(
                    pb.AgentMessage(
                        action_result=pb.ActionResult(
                            command_id=cmd.id, kind="release", status="done"
                        )
                    )
                )
                reply = await release
                assert reply.status == "done" and list(reply.still_suspended) == [77]
                await call.done_writing()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await opstub.Isolate(op.HostActionRequest(host_id="nope"))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            whats = [a[2] for a in c.store.audit_log()]
            assert "isolate requested" in whats and "release done" in whats
        finally:
            await c.stop(0.5)

    asyncio.run(main())


def test_bad_seq_and_oversized_message_end_only_their_stream(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    async def refused(port: int, msgs: list[pb.AgentMessage]) -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = pb_grpc.TelemetryStub(ch).Stream()
            for m in msgs:
                await call.write(m)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            return err.value

    async def main() -> None:
        c, port = await run_collector(tmp_path, receiver.url, "off")
        try:
            err = await refused(port, [hello(), quiet(0)])
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "seq must be > 0" in (err.details() or "")
            huge = quiet(1)
            huge.window.example_paths.extend(["/x" * 1000] * 200)  # ~400 KB
            err = await refused(port, [hello(boot="b2"), huge])
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            acks, _ = await stream(port, [hello(boot="b3"), quiet(1), quiet(2)])
            assert acks[-1] == 2 and c.telemetry.windows_stored == 2
        finally:
            await c.stop(0.5)

    asyncio.run(main())


def test_later_hello_switches_boot_for_resent_windows(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """An agent resends an earlier boot's windows under that boot's hello, then its own."""

    async def main() -> None:
        c, port = await run_collector(tmp_path, receiver.url, "off")
        try:
            msgs = [hello(boot="boot-old"), quiet(7), quiet(8), hello(boot="boot-new"), quiet(1)]
            acks, _ = await stream(port, [*msgs, quiet(2)])
            assert c.store.committed_seq("srv-mairie", "boot-old") == 8
            assert c.store.committed_seq("srv-mairie", "boot-new") == 2
            assert 8 in acks and acks[-1] == 2
            # Another host's hello on this stream is refused.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stream(port, [hello(), quiet(1), hello(host="other"), quiet(1)])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await c.stop(0.5)

    asyncio.run(main())


def test_windows_of_many_streams_share_commits_and_no_ack_precedes_its_commit(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """Group commit: 20 agents' windows committed together, every ack after its commit."""
    committed: dict[str, int] = {}
    batches: list[int] = []
    lock = threading.Lock()

    class RecordingStore(SqliteStore):
        def add_window_batch(
            self, items: Sequence[WindowItem], judged: Sequence[JudgedMark] = ()
        ) -> list[bool]:
            inserted = super().add_window_batch(items, judged)
            with lock:
                if items:
                    batches.append(len(items))
                for host, _, w in items:
                    committed[host] = max(committed.get(host, 0), w.seq)
            return inserted

    early: list[tuple[str, int, int]] = []

    async def agent(port: int, host: str, windows: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
            call = pb_grpc.TelemetryStub(ch).Stream()
            await call.write(hello(host))
            for seq in range(1, windows + 1):
                await call.write(quiet(seq))
            async for resp in call:
                if resp.HasField("ack") and resp.ack.seq:
                    with lock:
                        if resp.ack.seq > committed.get(host, 0):
                            early.append((host, resp.ack.seq, committed.get(host, 0)))
                    if resp.ack.seq == windows:
                        break
            await call.done_writing()

    async def main() -> None:
        store = RecordingStore.open(tmp_path / "tocsin.db")
        c = assemble(store, ThresholdScorer(), HttpWebhookSink([receiver.url]), mode="off")
        port = await c.start("127.0.0.1:0")
        try:
            await asyncio.wait_for(
                asyncio.gather(*(agent(port, f"h{i:02d}", 30) for i in range(20))), 60
            )
        finally:
            await c.stop(0.5)

    asyncio.run(main())
    assert not early, early[:5]
    assert sum(batches) == 600 and max(batches) > 1 and len(batches) < 300, batches
