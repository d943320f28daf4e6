"""The fleet guard with several fake agents (real gRPC clients) firing together,
and the responder's operator hooks (real scripts, real subprocesses)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc

from fakeagent import FakeAgent
from receiver import WebhookReceiver
from tocsin.collector.app import assemble
from tocsin.collector.commands import CommandRouter
from tocsin.collector.db import Database
from tocsin.collector.decide import Decision, ProcessInfo
from tocsin.collector.fleetguard import FleetGuard
from tocsin.collector.hooks import Hook, HookRunner
from tocsin.collector.outbox import Outbox, destination
from tocsin.collector.protocols import ThresholdScorer
from tocsin.collector.reasons import Reason
from tocsin.collector.respond import Responder
from tocsin.collector.store import MemoryStore, SqliteStore
from tocsin.collector.webhook import MemoryWebhookSink
from tocsin.v1 import operator_pb2 as op
from tocsin.v1 import operator_pb2_grpc as op_grpc

T0 = 1_700_000_000


async def _until(pred: Any, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.05)


def test_fleet_guard_holds_beyond_the_limit_and_an_operator_can_still_isolate(
    tmp_path: Path,
) -> None:
    with WebhookReceiver() as receiver:
        asyncio.run(_fleet(tmp_path, receiver))


async def _fleet(tmp_path: Path, receiver: WebhookReceiver) -> None:
    db = Database(tmp_path / "c.db")
    store = SqliteStore(db)
    outbox = Outbox(db, [destination({"url": receiver.url})], retry_initial_s=0.1)
    c = assemble(store, ThresholdScorer(), outbox, mode="enforce")
    c.responder.guard = FleetGuard(2)
    port = await c.start("127.0.0.1:0")
    outbox.start()
    agents = [FakeAgent(port, f"fs{i}") for i in range(5)]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        await _until(lambda: sum(1 for a in agents if "suspend" in a.kinds()) == 5)
        await asyncio.sleep(0.5)
        isolated = [a.host_id for a in agents if "isolate" in a.kinds()]
        held = sorted({a.host_id for a in agents} - set(isolated))
        assert len(isolated) == 2, [a.kinds() for a in agents]

        await _until(
            lambda: (
                {
                    r["body"]["host_id"]
                    for r in receiver.records
                    if r["body"]["event"] == "fleet_guard"
                }
                == set(held)
            )
        )
        guard_event = next(
            r["body"] for r in receiver.records if r["body"]["event"] == "fleet_guard"
        )
        assert guard_event["limit"] == 2 and "tocsin isolate" in guard_event["detail"]
        alerts = {
            r["body"]["host_id"]: r["body"]
            for r in receiver.records
            if r["body"]["event"] == "alert"
        }
        for host in held:
            statuses = {a["action"]: a["status"] for a in alerts[host]["actions"]}
            assert statuses == {"suspend": "sent", "isolate": "held"}, alerts[host]
        assert c.responder.actions_total[("isolate", "held")] == 3
        audit = [row for row in store.audit_log(200) if row[2] == "isolate held"]
        assert {row[3].split()[0] for row in audit} == set(held)

        # A human decides: isolate one held host by hand; the guard does not apply.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = await op_grpc.OperatorStub(ch).Isolate(
                op.HostActionRequest(host_id=held[0], operator="alice", timeout_s=5)
            )
        assert reply.status == "done", reply
        target = next(a for a in agents if a.host_id == held[0])
        assert target.kinds().count("isolate") == 1
        assert any(
            r[1] == "operator:alice" and r[2] == "isolate requested" for r in store.audit_log(200)
        )
    finally:
        for a in agents:
            a.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await c.stop(grace_s=1)
        await outbox.stop()
        outbox.close()


def test_fleet_guard_window_slides() -> None:
    now = [0.0]
    g = FleetGuard(2, clock=lambda: now[0])
    assert g.admit("a") and g.admit("b") and not g.admit("c")
    assert g.admit("a")  # the same host again is not a new isolation
    now[0] = 61.0
    assert g.admit("c") and g.held_total == 1
    assert FleetGuard(0).admit("x")


def _decision(severity: str = "critical") -> Decision:
    return Decision(
        kind="open",
        incident_id="inc1",
        host_id="fs1",
        root_pid=4242,
        severity=severity,  # type: ignore[arg-type]
        score=0.9,
        reasons=(Reason.counted("type_destroyed", 55),),
        window_start_s=T0,
        window_end_s=T0 + 1,
        process=ProcessInfo(pid=4242, name="cryptor", exe="/tmp/cryptor", tree_root_pid=4242),
    )


def test_hooks_run_without_shell_get_the_alert_and_are_audited(tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    ok = tmp_path / "switch-port.sh"
    ok.write_text(f'#!/bin/sh\necho "$@" > {out}.args\ncat > {out}\necho bye >&2\n')
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\necho 'no such port' >&2\nexit 3\n")
    for f in (ok, slow, bad):
        f.chmod(0o755)
    store, sink = MemoryStore(), MemoryWebhookSink()
    hooks = HookRunner(
        [
            Hook(str(ok), ("--port", "$HOST; rm -rf /"), 5.0, frozenset({"critical"})),
            Hook(str(slow), (), 0.5, frozenset({"critical"})),
            Hook(str(bad), (), 5.0, frozenset({"critical"})),
            Hook(str(ok), ("never",), 5.0, frozenset({"fleet_guard"})),
        ]
    )
    responder = Responder(store, sink, CommandRouter(), mode="dry-run", hooks=hooks)

    async def go() -> dict[str, Any] | None:
        payload = await responder.on_decision(_decision())
        await responder.drain()
        return payload

    t0 = time.monotonic()
    payload = asyncio.run(go())
    assert time.monotonic() - t0 < 5  # the slow hook was killed at its timeout
    assert payload is not None
    assert json.loads(out.read_text())["alert_id"] == payload["alert_id"]
    # No shell: the argument reached the script as one literal word.
    assert out.with_suffix(".out.args").read_text().strip() == "--port $HOST; rm -rf /"
    audit = {row[1]: row for row in store.audit_log(50) if row[1].startswith("hook:")}
    assert audit["hook:switch-port.sh"][2] == "hook done"
    assert audit["hook:slow.sh"][2] == "hook timeout"
    assert audit["hook:bad.sh"][2] == "hook failed" and "no such port" in audit["hook:bad.sh"][3]
    events = [e for e in sink.events if e["event"] == "action" and e["action"] == "hook"]
    assert sorted(e["status"] for e in events) == ["done", "failed", "timeout"]
    assert hooks.runs == {"done": 1, "timeout": 1, "failed": 1}


def _smb_decision() -> Decision:
    d = _decision()
    proc = ProcessInfo(
        4242, "smbd", "/usr/sbin/smbd", 4242, smb_client_addr="10.20.30.40", smb_user="compta"
    )
    return Decision(**{**d.__dict__, "process": proc})


def test_an_smb_worker_is_cut_with_its_client_and_the_server_stays_open(tmp_path: Path) -> None:
    """Enforce: suspend the worker, block the client; never isolate the file server.
    The hook gets the workstation's address and account in its environment."""
    out = tmp_path / "hook.env"
    script = tmp_path / "switch.sh"
    script.write_text(f"#!/bin/sh\nenv > {out}\n")
    script.chmod(0o755)
    store, sink, router = MemoryStore(), MemoryWebhookSink(), CommandRouter()
    hooks = HookRunner([Hook(str(script), (), 5.0, frozenset({"critical"}))])
    guard = FleetGuard(0)
    responder = Responder(store, sink, router, mode="enforce", guard=guard, hooks=hooks)

    async def go() -> tuple[dict[str, Any] | None, list[Any]]:
        payload = await responder.on_decision(_smb_decision())
        await responder.drain()
        q = router.queue("fs1")
        return payload, [q.get_nowait() for _ in range(q.qsize())]

    payload, sent = asyncio.run(go())
    assert payload is not None
    assert [(c.kind, list(c.pids), dict(c.parameters).get("addresses")) for c in sent] == [
        ("suspend", [4242], None),
        ("block_client", [], "10.20.30.40"),
    ]
    assert [a["action"] for a in payload["actions"]] == ["suspend", "block_client"]
    assert payload["process"]["smb_client_addr"] == "10.20.30.40"
    assert payload["process"]["smb_user"] == "compta"
    assert "SMB client 10.20.30.40 as user compta" in payload["summary"]
    assert "10.20.30.40" in payload["explanation"]
    env = out.read_text()
    assert "TOCSIN_CLIENT_ADDR=10.20.30.40" in env and "TOCSIN_SMB_USER=compta" in env

    # Dry-run says what it would do, and a local writer still isolates the host.
    dry = Responder(MemoryStore(), MemoryWebhookSink(), CommandRouter(), mode="dry-run")
    body = asyncio.run(dry.on_decision(_smb_decision()))
    assert body is not None
    assert [(a["action"], a["status"]) for a in body["actions"]] == [
        ("suspend", "dry-run"),
        ("block_client", "dry-run"),
    ]
    local = asyncio.run(dry.on_decision(_decision()))
    assert local is not None
    assert [a["action"] for a in local["actions"]] == ["suspend", "isolate"]
