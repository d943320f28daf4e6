"""A window with evidence is judged while it commits: the suspend never waits for the disk.

A file server's disk can take hundreds of milliseconds to sync (another writer, a
busy array); at 200 files a second that is dozens of files. Here a real SQLite file
is held by another writer while the attack window arrives on a real gRPC stream: the
suspend comes back before the window's ack, and the ack still waits for the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from test_collector_ingest import hello, quiet

from fakeagent import encrypting
from tocsin.collector.app import assemble
from tocsin.collector.protocols import ThresholdScorer
from tocsin.collector.server import Collector
from tocsin.collector.store import SqliteStore
from tocsin.collector.webhook import MemoryWebhookSink
from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def _judged(db: Path, host: str, seq: int) -> None:
    """Until the window is marked judged (its mark's group commit done)."""
    sql = f"SELECT judged FROM windows WHERE host_id='{host}' AND seq={seq}"
    while _rows(db, sql) != [(1,)]:
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _collector(
    db: Path,
) -> AsyncIterator[tuple[grpc.aio.Channel, sqlite3.Connection, Collector]]:
    """A real collector on ``db`` (enforce), a channel to it, and another connection to
    the same file: ``BEGIN IMMEDIATE`` on it is a disk that does not sync for now."""
    c = assemble(SqliteStore.open(db), ThresholdScorer(), MemoryWebhookSink(), mode="enforce")
    port = await c.start("127.0.0.1:0")
    other = sqlite3.connect(db, isolation_level=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
            yield ch, other, c
    finally:
        if other.in_transaction:
            other.execute("COMMIT")
        other.close()
        await c.stop(1.0)


async def _known(ch: grpc.aio.Channel, db: Path) -> Any:
    """A stream whose hello and window 1 are acked and judged (the host known, in sync)."""
    call = pb_grpc.TelemetryStub(ch).Stream()
    await call.write(hello())
    await call.write(quiet(1))
    async for msg in call:
        if msg.HasField("ack") and msg.ack.seq == 1:
            break
    await asyncio.wait_for(_judged(db, "srv-mairie", 1), 10)
    return call


def test_an_attack_window_is_suspended_before_its_commit_and_acked_after(
    tmp_path: Path,
) -> None:
    db = tmp_path / "tocsin.db"
    timeline: list[tuple[str, float]] = []

    async def main() -> None:
        async with _collector(db) as (ch, other, _):
            call = await _known(ch, db)
            it = call.__aiter__()
            other.execute("BEGIN IMMEDIATE")  # a slow disk: the commit must wait
            t0 = time.monotonic()
            await call.write(quiet(2))  # taken along ahead, in order
            await call.write(encrypting(3))
            released = False
            while True:
                msg = await asyncio.wait_for(it.__anext__(), 10)
                at = time.monotonic() - t0
                if msg.HasField("command"):
                    timeline.append((f"command {msg.command.kind}", at))
                elif msg.HasField("ack"):
                    timeline.append((f"ack {msg.ack.seq}", at))
                    if msg.ack.seq == 3:
                        break
                if not released and any(k == "command suspend" for k, _ in timeline):
                    await asyncio.sleep(0.3)  # the ack must not come while held
                    timeline.append(("released", time.monotonic() - t0))
                    other.execute("COMMIT")
                    released = True
            await call.done_writing()

    asyncio.run(main())
    kinds = [k for k, _ in timeline]
    assert kinds.index("command suspend") < kinds.index("released") < kinds.index("ack 3"), timeline
    suspend_s = dict(timeline)["command suspend"]
    assert suspend_s < 2.0, timeline  # not the 5 s busy timeout, nor the release
    # Committed after the release, every window judged once, one incident's alert.
    judged = _rows(db, "SELECT seq, judged FROM windows WHERE host_id='srv-mairie' ORDER BY seq")
    assert judged == [(1, 1), (2, 1), (3, 1)], judged
    alerts = _rows(db, "SELECT severity FROM alerts WHERE host_id='srv-mairie'")
    assert alerts == [("critical",)], alerts


def test_a_window_judged_ahead_whose_commit_failed_is_marked_when_resent_not_judged_twice(
    tmp_path: Path,
) -> None:
    """The database refuses the commit (held past its busy timeout) of a window whose
    suspend went out already: the stream ends unacked, the agent resends on a new
    stream; the window is stored and marked judged, one incident, one alert."""
    db = tmp_path / "tocsin.db"
    commands: list[str] = []

    async def read_until_ack(call: object, seq: int) -> grpc.StatusCode | None:
        try:
            async for msg in call:  # type: ignore[attr-defined]
                if msg.HasField("command"):
                    commands.append(msg.command.kind)
                elif msg.HasField("ack") and msg.ack.seq == seq:
                    return None
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async def main() -> grpc.StatusCode | None:
        async with _collector(db) as (ch, other, _):
            call = await _known(ch, db)
            other.execute("BEGIN IMMEDIATE")
            await call.write(encrypting(2))
            ending = asyncio.create_task(read_until_ack(call, 2))
            t0 = time.monotonic()
            while "suspend" not in commands:  # judged ahead, while the commit waits
                assert time.monotonic() - t0 < 3, commands
                await asyncio.sleep(0.02)
            # Held until the commit has failed (the store's 5 s busy timeout, counted from
            # whenever the commit thread took the window: a fixed hold raced a busy machine).
            ended = await asyncio.wait_for(ending, 30)
            other.execute("COMMIT")
            resent = pb_grpc.TelemetryStub(ch).Stream()
            await resent.write(hello())
            await resent.write(encrypting(2))
            assert await asyncio.wait_for(read_until_ack(resent, 2), 10) is None
            await resent.done_writing()
            await asyncio.sleep(0.5)  # the judged mark's group commit
            return ended

    ended = asyncio.run(main())
    assert ended is not None and ended != grpc.StatusCode.OK, ended  # refused, not acked
    assert commands[0] == "suspend", commands
    judged = _rows(db, "SELECT seq, judged FROM windows WHERE host_id='srv-mairie' ORDER BY seq")
    assert judged == [(1, 1), (2, 1)], judged
    alerts = _rows(db, "SELECT severity FROM alerts WHERE host_id='srv-mairie'")
    assert alerts == [("critical",)], alerts


def test_a_known_host_back_on_a_new_stream_is_answered_while_the_disk_is_held(
    tmp_path: Path,
) -> None:
    """Under overload every quiet agent reconnects every few seconds: a hello of a host
    already known (same boot, same facts) costs no transaction, so an agent coming back
    with an attack to report is neither queued behind the others' hellos nor behind a
    slow disk: its hello is answered and its attack suspended while the database is held."""
    db = tmp_path / "tocsin.db"
    seen: list[str] = []

    async def main() -> None:
        async with _collector(db) as (ch, other, _):
            first = await _known(ch, db)
            await first.done_writing()
            other.execute("BEGIN IMMEDIATE")
            back = pb_grpc.TelemetryStub(ch).Stream()
            await back.write(hello())
            await back.write(encrypting(2))
            t0 = time.monotonic()
            async for msg in back:
                if msg.HasField("ack"):
                    seen.append(f"ack {msg.ack.seq}")
                else:
                    seen.append(f"command {msg.command.kind}")
                if "command suspend" in seen:
                    break
            assert time.monotonic() - t0 < 2.0, seen  # not the 5 s busy timeout
            other.execute("COMMIT")
            await back.done_writing()

    asyncio.run(main())
    assert seen[:2] == ["ack 1", "command suspend"], seen  # the hello's ack, then the suspend


def test_an_attack_window_replayed_by_its_agent_is_not_judged_again(tmp_path: Path) -> None:
    """A rogue or confused agent resends an evidence window already taken, on the same
    stream and on a new one: a duplicate, never judged ahead a second time (its
    evidence would count twice)."""
    db = tmp_path / "tocsin.db"
    counted: list[int] = []

    async def main() -> None:
        async with _collector(db) as (ch, _, c):
            attack = encrypting(1)
            attack.window.events_created = 7
            call = pb_grpc.TelemetryStub(ch).Stream()
            await call.write(hello())
            await call.write(attack)
            await call.write(attack)  # the same seq again, on the same stream
            acks = 0
            async for msg in call:
                acks += msg.HasField("ack") and msg.ack.seq == 1
                if acks == 2:
                    break
            await call.done_writing()
            again = pb_grpc.TelemetryStub(ch).Stream()
            await again.write(hello())
            await again.write(attack)  # and on a new stream, after the hello's ack
            acks = 0
            async for msg in again:  # the hello's ack (seq 1 stored), then the resend's
                acks += msg.HasField("ack") and msg.ack.seq == 1
                if acks == 2:
                    break
            await again.done_writing()
            await asyncio.wait_for(_judged(db, "srv-mairie", 1), 10)
            await asyncio.sleep(0.5)  # a second judgement would have come by now
            counted.append(c.stage.meter.events["created"])

    asyncio.run(main())
    assert counted == [7], counted  # the window's events, judged once
