"""An overloaded collector stays able to see an attack (real collector, real gRPC, SQLite).

Quiet agents' windows are committed and acked at once and judged from a queue; a
window with evidence puts its host ahead of that queue. While the collector is
behind, quiet agents are paused on their open stream (the agent's shipper) or pushed
back (RESOURCE_EXHAUSTED with a retry pushback: a client that cannot pause), keep
their windows spooled and send them later: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fakeagent import T0, encrypting
from tocsin.agent.ship import HelloInfo, Shipper
from tocsin.agent.spool import WindowSpool
from tocsin.collector.admission import Admission, AdmissionConfig
from tocsin.collector.app import assemble
from tocsin.collector.features import window_features
from tocsin.collector.ingest import PUSHBACK_KEY
from tocsin.collector.pipeline import BatchScorer, Committed
from tocsin.collector.protocols import ThresholdScorer
from tocsin.collector.server import Collector
from tocsin.collector.store import SqliteStore, StoredWindow
from tocsin.collector.webhook import MemoryWebhookSink
from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc
from tocsin.v1.evidence import carries_evidence


def busy(seq: int) -> pb.AgentMessage:
    """A window of a backup: many files written, no evidence of destruction."""
    w = pb.Window(
        seq=seq,
        files_created=40,
        files_modified=20,
        files_probed=16,
        files_high_entropy=16,
        mean_entropy=7.9,
        bytes_written=40_000_000,
        dirs_touched=6,
        extensions_touched=3,
        example_paths=[f"/srv/partage/backup/part-{seq:05d}.tar.gz"],
    )
    w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
    w.top_writers.add(pid=900, ppid=1, name="tar", tree_root_pid=900, files_touched=60)
    return pb.AgentMessage(window=w)


@dataclass
class SpoolAgent:
    """A real gRPC client that behaves like the agent's shipper: it makes a window every
    ``period_s`` and keeps it spooled until acked; a stream that ends is reopened after
    the collector's pushback, or as soon as it has evidence to send, and the unacked
    windows are resent in order."""

    port: int
    host_id: str
    windows: list[pb.AgentMessage]
    period_s: float = 0.0
    made: int = 0
    acked: int = 0
    ends: list[tuple[grpc.StatusCode, int | None, float]] = field(default_factory=list)
    commands: list[tuple[float, pb.Command]] = field(default_factory=list)
    evidence_at: float | None = None  # when the first window with evidence was made
    _news: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, timeout_s: float = 60.0) -> None:
        await asyncio.wait_for(asyncio.gather(self._make(), self._ship()), timeout_s)

    async def _make(self) -> None:
        for m in self.windows:
            if self.period_s:
                await asyncio.sleep(self.period_s)
            if self.evidence_at is None and carries_evidence(m.window):
                self.evidence_at = time.monotonic()
            self.made += 1
            self._news.set()

    def _done(self) -> bool:
        answered = self.evidence_at is None or bool(self.commands)
        return self.acked == len(self.windows) and answered

    async def _ship(self) -> None:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{self.port}", options=CHANNEL_OPTIONS
        ) as ch:
            while not self._done():
                wait_s = await self._stream(ch)
                evidence = any(
                    carries_evidence(m.window) for m in self.windows[self.acked : self.made]
                )
                self._news.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._until_evidence(evidence), wait_s)

    async def _until_evidence(self, already: bool) -> None:
        while not already:
            await self._news.wait()
            self._news.clear()
            already = any(carries_evidence(m.window) for m in self.windows[self.acked : self.made])

    async def _stream(self, ch: grpc.aio.Channel) -> float:
        hello = pb.AgentMessage(hello=pb.Hello(host_id=self.host_id, boot_id="b1"))

        async def requests() -> Any:
            yield hello
            sent = self.acked
            while True:  # the stream stays open, as the agent's does
                while sent < self.made:
                    yield self.windows[sent]
                    sent += 1
                self._news.clear()
                await self._news.wait()

        call = pb_grpc.TelemetryStub(ch).Stream(requests())
        try:
            async for reply in call:
                if reply.HasField("ack"):
                    self.acked = max(self.acked, int(reply.ack.seq))
                elif reply.HasField("command"):
                    self.commands.append((time.monotonic(), reply.command))
                if self._done():
                    call.cancel()
                    return 0.0
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return 0.0
            hint = dict(exc.trailing_metadata() or ()).get(PUSHBACK_KEY)
            pushback = int(hint) if hint is not None else None
            if exc.details() == "Internal error from Core":
                # grpc.aio's client reports a write racing the server's end so, in place of
                # the server's status (grpc/grpc#36066); the agent's sync client does not.
                return 0.3
            self.ends.append((exc.code(), pushback, time.monotonic()))
            return (pushback if pushback is not None else 1000) / 1000.0
        return 0.5


async def started(tmp_path: Path, admission: AdmissionConfig) -> tuple[Collector, int]:
    store = SqliteStore.open(tmp_path / "tocsin.db")
    c = assemble(store, ThresholdScorer(), MemoryWebhookSink(), mode="enforce", admission=admission)
    return c, await c.start("127.0.0.1:0")


def count(db: Path, where: str = "1") -> int:
    """Windows stored that match ``where`` (read beside the collector, as an operator would)."""
    con = sqlite3.connect(db)
    try:
        return int(con.execute(f"SELECT count(*) FROM windows WHERE {where}").fetchone()[0])
    finally:
        con.close()


def test_judge_takes_a_host_with_evidence_before_a_quiet_backlog(tmp_path: Path) -> None:
    """2,000 committed quiet windows of 20 hosts wait for judgement; an attack window
    queued after them is judged (its suspend sent) while most of them still wait."""
    db = tmp_path / "tocsin.db"

    async def main() -> None:
        store = SqliteStore.open(db)
        c = assemble(store, ThresholdScorer(), MemoryWebhookSink(), mode="enforce")
        for i in range(20):
            host = f"quiet-{i:02d}"
            msgs = [busy(s) for s in range(1, 101)]
            store.add_windows(host, "b1", [stored(m.window) for m in msgs])
            for m in msgs:
                c.stage.enqueue(host, Committed("b1", m.window, window_features(m.window)))
        attack = encrypting(1).window
        store.add_windows("attacked", "b1", [stored(attack)])
        c.stage.enqueue("attacked", Committed("b1", attack, window_features(attack)), urgent=True)
        commands = c.router.queue("attacked")
        port = await c.start("127.0.0.1:0")  # the judges start with the collector
        assert port
        try:
            cmd = await asyncio.wait_for(commands.get(), 10)
            left = count(db, "judged=0 AND host_id LIKE 'quiet-%'")
            assert cmd.kind == "suspend" and list(cmd.pids) == [4242]
            assert left >= 1000, left
            await asyncio.wait_for(_all_judged(db), 60)  # and the quiet backlog after it
        finally:
            await c.stop(0.5)

    asyncio.run(main())


def stored(w: pb.Window) -> StoredWindow:
    return StoredWindow(
        int(w.seq), float(w.start.seconds), float(w.end.seconds), w.SerializeToString()
    )


async def _all_judged(db: Path) -> None:
    while count(db, "judged=0"):
        await asyncio.sleep(0.05)


def test_quiet_agents_are_pushed_back_while_behind_and_an_attack_is_still_answered(
    tmp_path: Path,
) -> None:
    """20 agents make a backup window every 50 ms, more than the collector may hold (4
    windows): past their stream's grace, quiet streams end RESOURCE_EXHAUSTED with a
    pushback, and the agents spool. An attack window made meanwhile is answered within a
    second, while quiet agents are being pushed back; then every quiet window arrives
    (created = stored)."""
    db = tmp_path / "tocsin.db"
    per_agent = 60

    async def main() -> None:
        admission = AdmissionConfig(max_in_flight=4, grace_s=0.2, pushback_ms=300)
        c, port = await started(tmp_path, admission)
        try:
            quiet = [
                SpoolAgent(port, f"quiet-{i:02d}", [busy(s) for s in range(1, per_agent + 1)], 0.05)
                for i in range(20)
            ]
            attacked = SpoolAgent(
                port, "attacked", [*(busy(s) for s in range(1, 21)), encrypting(21)], 0.05
            )
            flood = asyncio.gather(*(a.run() for a in quiet))
            await attacked.run(30)
            assert attacked.evidence_at is not None
            at, cmd = attacked.commands[0]
            await flood
            await asyncio.wait_for(_all_judged(db), 30)
        finally:
            await c.stop(0.5)
        assert cmd.kind == "suspend" and list(cmd.pids) == [4242]
        assert at - attacked.evidence_at < 1.0, (at - attacked.evidence_at, attacked.ends)
        pushed = [e for a in quiet for e in a.ends]
        assert pushed, "no quiet agent was pushed back"
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _, _ in pushed), pushed
        assert all(ms is not None and 300 <= ms < 600 for _, ms, _ in pushed), pushed
        # Answered while quiet agents were being pushed back around it.
        assert any(at - 1.0 < t < at + 1.0 for _, _, t in pushed), (at, pushed)
        assert count(db, "host_id LIKE 'quiet-%'") == 20 * per_agent  # created = stored

    asyncio.run(main())


def test_the_agents_shipper_is_paused_on_its_open_stream_and_its_attack_still_answered(
    tmp_path: Path,
) -> None:
    """The agent's own shipper against an overloaded collector: 20 agents spool a backup
    window every 50 ms, more than the collector may hold (4 windows). Past their grace,
    quiet agents are sent a Pause instead of losing their stream: each connects once and
    never again, holds its windows for the pause and sends them after. An attack window
    spooled meanwhile goes out at once (after the windows before it) and is answered
    within a second; every quiet window is stored (created = stored)."""
    db = tmp_path / "tocsin.db"
    per_agent = 60

    async def main() -> tuple[list[Shipper], Shipper, float, list[tuple[float, pb.Command]]]:
        admission = AdmissionConfig(max_in_flight=4, grace_s=0.2, pushback_ms=300)
        c, port = await started(tmp_path, admission)
        commands: list[tuple[float, pb.Command]] = []

        def on_command(cmd: pb.Command) -> pb.ActionResult:
            commands.append((time.monotonic(), cmd))
            return pb.ActionResult(command_id=cmd.id, kind=cmd.kind, status="done")

        def shipper(host: str) -> Shipper:
            spool = WindowSpool(tmp_path / f"{host}.sqlite")
            return Shipper(f"127.0.0.1:{port}", spool, HelloInfo(host, "b1", []), on_command)

        quiet = [shipper(f"quiet-{i:02d}") for i in range(20)]
        attacked = shipper("attacked")
        evidence_at = 0.0

        def produce() -> None:
            nonlocal evidence_at
            for k in range(1, per_agent + 1):
                for s in quiet:
                    s.submit_window(busy(k).window)
                if k < 20:
                    attacked.submit_window(busy(k).window)
                elif k == 20:
                    evidence_at = time.monotonic()
                    attacked.submit_window(encrypting(k).window)
                time.sleep(0.05)

        for s in (*quiet, attacked):
            s.start()
        try:
            await asyncio.to_thread(produce)
            for _ in range(600):
                if not any(s.spool.depth for s in (*quiet, attacked)):
                    break
                await asyncio.sleep(0.05)
            await asyncio.wait_for(_all_judged(db), 30)
        finally:
            for s in (*quiet, attacked):
                await asyncio.to_thread(s.stop)
            await c.stop(0.5)
        return quiet, attacked, evidence_at, commands

    quiet, attacked, evidence_at, commands = asyncio.run(main())
    assert commands, "the attack was never answered"
    at, cmd = commands[0]
    assert cmd.kind == "suspend" and list(cmd.pids) == [4242]
    assert at - evidence_at < 1.0, at - evidence_at
    assert sum(s.pauses for s in quiet) > 0, "no quiet agent was paused"
    assert [s.connections for s in (*quiet, attacked)] == [1] * 21, "a stream was ended"
    assert count(db, "host_id LIKE 'quiet-%'") == 20 * per_agent  # created = stored
    assert count(db, "host_id = 'attacked'") == 20


class ThreadNotingStore(SqliteStore):
    """The real store, noting the thread of every alert it writes."""

    alert_threads: list[str]

    def save_alert(self, alert: Any) -> None:
        self.alert_threads.append(threading.current_thread().name)
        super().save_alert(alert)


def test_an_open_incident_refreshes_its_alert_without_a_transaction_on_the_event_loop(
    tmp_path: Path,
) -> None:
    """Each window of a host under attack refreshes its alert (end, score, reasons): the
    refresh rides the next group commit, never a transaction (and its fsync) of its own
    on the event loop, where it held every stream's acks and the next attack's judgement."""
    db = tmp_path / "tocsin.db"

    async def main() -> None:
        store = ThreadNotingStore.open(db)
        store.alert_threads = []
        c = assemble(store, ThresholdScorer(), MemoryWebhookSink(), mode="enforce")
        windows = [encrypting(s).window for s in range(1, 7)]
        store.add_windows("attacked", "b1", [stored(w) for w in windows])
        for w in windows:
            c.stage.enqueue("attacked", Committed("b1", w, window_features(w)), urgent=True)
        await c.start("127.0.0.1:0")
        try:
            await asyncio.wait_for(_all_judged(db), 20)
        finally:
            await c.stop(0.5)
        loop_thread = threading.current_thread().name
        assert store.alert_threads and loop_thread not in store.alert_threads, store.alert_threads

    asyncio.run(main())
    con = sqlite3.connect(db)
    rows = con.execute("SELECT window_end, open FROM alerts WHERE host_id='attacked'").fetchall()
    con.close()
    assert len(rows) == 1 and rows[0][0] == T0 + 7, rows  # refreshed to the last window


def test_admission_grace_is_for_agents_back_early_and_hosts_under_attack_stay() -> None:
    """While behind: an agent back before its pushback ran out has spooled evidence and
    gets its stream's grace; one back on schedule does not (its spool would flood the
    collector again); a host under attack is never pushed back."""
    now = [100.0]
    adm = Admission(
        AdmissionConfig(max_in_flight=0, grace_s=1.0, pushback_ms=1000),
        lambda: 10,  # behind: more in flight than allowed
        lambda host_id: host_id == "attacked",
        clock=lambda: now[0],
        rand=lambda: 0.0,
    )
    w = busy(1).window
    assert adm.grace("new-agent")  # never pushed back
    assert adm.pushback_ms("early", w, 5.0) == 1000
    assert adm.pushback_ms("on-time", w, 5.0) == 1000
    now[0] += 0.5
    assert adm.grace("early")
    now[0] += 0.6
    assert not adm.grace("on-time")
    assert adm.pushback_ms("on-time", w, 0.1) is None  # a stream with grace
    assert adm.pushback_ms("attacked", w, 5.0) is None
    assert adm.pushback_ms("x", encrypting(1).window, 5.0) is None  # evidence


def test_paused_streams_are_called_back_only_for_the_windows_there_is_room_for() -> None:
    """Streams called back bring their spools: what they bring is promised until they
    caught up, and no more are called back while in flight + promised passes half of
    ``max_in_flight``. Without the promise every tick called back more streams while
    the first spools were still on their way."""
    in_flight = [0]
    adm = Admission(AdmissionConfig(max_in_flight=2000), lambda: in_flight[0])
    called: list[int] = []
    for key in range(10):
        adm.hold(key, lambda key=key: called.append(key) or 300)  # type: ignore[func-returns-value]
    assert [adm.resume_some() for _ in range(4)] == [1, 2, 1, 0]  # 300, 900, 1200: full
    assert called == [0, 1, 2, 3] and adm.promised == 1200
    in_flight[0] = 500  # their windows are read: in flight and still promised
    assert adm.resume_some() == 0
    for key in (0, 1, 2):
        adm.returned(key)  # caught up
    in_flight[0] = 0
    assert adm.promised == 300 and adm.resume_some() == 1  # 600
    assert called == [0, 1, 2, 3, 4]
    adm.returned(3)
    adm.returned(3)  # a stream that caught up and then ended: counted once
    assert adm.promised == 300


def test_a_late_loop_is_overload_only_while_the_collector_is_busy() -> None:
    """A tick 200 ms late while the process used a core: behind. The same lateness
    while it used a tenth of a core (the machine lent it no CPU, a thread waited for
    the disk): not behind, and paused agents are still called back."""
    idle = Admission(AdmissionConfig(max_lag_s=0.1), lambda: 0)
    busy = Admission(AdmissionConfig(max_lag_s=0.1), lambda: 0)
    called: list[str] = []
    idle.hold("a", lambda: called.append("a") or 1)  # type: ignore[func-returns-value]
    for _ in range(30):
        idle.tick(0.25, 0.025)
        busy.tick(0.25, 0.25)
    assert idle.lag_s == 0.0 and not idle.behind and called == ["a"]
    assert busy.lag_s > 0.1 and busy.behind


class SlowScorer(ThresholdScorer):
    """The threshold scorer, 50 ms a call, noting the first value of each call's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.firsts: list[float] = []

    def score(self, X: Any) -> Any:
        time.sleep(0.05)
        self.firsts.append(float(X[0][0]))
        return super().score(X)


def test_an_urgent_scoring_goes_before_the_quiet_rows_queued_ahead_of_it() -> None:
    """While one scoring call runs, 200 quiet requests and then one urgent one queue up:
    the urgent one is scored in the next call, alone, before any of the quiet ones."""

    async def main() -> list[float]:
        scorer = SlowScorer()
        batch = BatchScorer(scorer, max_batch=64)
        try:
            first = asyncio.ensure_future(batch.score_rows(np.full((1, 4), 1.0)))
            await asyncio.sleep(0.02)  # the first call is running
            quiet = [
                asyncio.ensure_future(batch.score_rows(np.full((1, 4), 2.0))) for _ in range(200)
            ]
            urgent = asyncio.ensure_future(batch.score_rows(np.full((1, 4), 3.0), urgent=True))
            await asyncio.gather(first, urgent, *quiet)
        finally:
            await batch.close()
        return scorer.firsts

    firsts = asyncio.run(main())
    assert firsts[:2] == [1.0, 3.0], firsts
    assert len(firsts) == 2 + 200 // 64 + 1  # the quiet rows after it, 64 a call
