"""The response does not wait for the disk: a critical decision's commands go out first.

A real SQLite file held by another writer (a backup, a slow disk: its fsync can take
hundreds of milliseconds on a busy server) must not hold back the suspend of an
attacker encrypting 200 files a second.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from tocsin.collector.commands import CommandRouter
from tocsin.collector.decide import Decision, ProcessInfo
from tocsin.collector.reasons import Reason
from tocsin.collector.respond import Responder
from tocsin.collector.store import SqliteStore
from tocsin.collector.webhook import MemoryWebhookSink

T0 = 1_700_000_000


def _critical() -> Decision:
    return Decision(
        kind="open",
        incident_id="inc1",
        host_id="fs1",
        root_pid=4242,
        severity="critical",
        score=0.9,
        reasons=(Reason.counted("type_destroyed", 6),),
        window_start_s=T0,
        window_end_s=T0 + 0.1,
        process=ProcessInfo(
            pid=4242,
            name="cryptor",
            exe="/tmp/cryptor",
            tree_root_pid=4242,
            tree_root_start_ticks=77,
        ),
    )


def test_the_suspend_is_sent_while_another_writer_holds_the_database(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "c.db")
    store.upsert_host("fs1", hostname="fs1", agent_version="t", tripwire_mode="dry-run")
    router = CommandRouter()
    sink = MemoryWebhookSink()
    responder = Responder(store, sink, router, mode="enforce")
    other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)

    async def go() -> tuple[float, bool]:
        other.execute("BEGIN IMMEDIATE")  # the database is someone else's for now
        t0 = time.monotonic()
        task = asyncio.create_task(responder.on_decision(_critical()))
        while router.pending("fs1") < 1 and time.monotonic() - t0 < 3.0:
            await asyncio.sleep(0.01)
        queued_s = time.monotonic() - t0
        waiting = not task.done()  # the alert itself still waits for the database
        other.execute("COMMIT")
        await asyncio.wait_for(task, 10)
        return queued_s, waiting

    queued_s, waiting = asyncio.run(go())
    assert queued_s < 0.5, f"the suspend waited {queued_s:.2f} s for the database"
    assert waiting
    q = router.queue("fs1")
    sent = [q.get_nowait() for _ in range(q.qsize())]
    assert [c.kind for c in sent] == ["suspend", "isolate"]
    # Once the database is free, what was sent is recorded with the alert.
    assert {store.get_action(c.id).kind for c in sent} == {"suspend", "isolate"}  # type: ignore[union-attr]
    assert [a.severity for a in store.list_alerts()] == ["critical"]
    assert [e["severity"] for e in sink.events] == ["critical"]


def test_a_report_back_before_its_command_is_recorded_waits_for_the_record(
    tmp_path: Path,
) -> None:
    """A quick agent answers the suspend while the alert still waits for the database:
    its report is kept (action done, host suspended), not refused as never sent."""
    from tocsin.v1 import telemetry_pb2 as pb

    store = SqliteStore.open(tmp_path / "c.db")
    store.upsert_host("fs1", hostname="fs1", agent_version="t", tripwire_mode="dry-run")
    router = CommandRouter()
    responder = Responder(store, MemoryWebhookSink(), router, mode="enforce")
    other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)

    async def go() -> pb.Command:
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(responder.on_decision(_critical()))
        t0 = time.monotonic()
        while router.pending("fs1") < 1 and time.monotonic() - t0 < 3.0:
            await asyncio.sleep(0.01)
        cmd = router.queue("fs1").get_nowait()
        report = asyncio.create_task(
            responder.on_action_result(
                "fs1",
                pb.ActionResult(command_id=cmd.id, kind=cmd.kind, status="done", pids=[4242]),
            )
        )
        await asyncio.sleep(0.2)
        assert not report.done()  # it waits for the command's row
        other.execute("COMMIT")
        await asyncio.wait_for(task, 10)
        await asyncio.wait_for(report, 10)
        return cmd

    cmd = asyncio.run(go())
    assert cmd.kind == "suspend"
    assert store.get_action(cmd.id).status == "done"  # type: ignore[union-attr]
    assert responder.results_refused == 0
