"""From a committed window to a response: score in micro-batches, judge, respond.

``BatchScorer.score(x)`` awaits the anomaly score of one feature vector.
Vectors that arrive within ``linger_s`` of each other are scored together in
one call in a thread of the scorer's own (scoring costs per call, not per row;
a thread of its own so that scoring never waits behind blocking database calls
in the loop's default executor), at most ``max_batch`` at a time. The queue is
bounded: when it is full the window is judged without a score (deterministic
evidence only) and ``dropped`` counts it. A scorer error is logged and also
yields no score: the evidence still counts. Rows asked for ``urgent`` (a host
with a window carrying evidence) are scored before every row queued without:
an attack's judgement never waits for the scoring of a quiet backlog.

``JudgeStage.judge_window(host_id, boot_id, window, features, clock_skew_s=0.0)``
is called after the window was committed (a window with evidence, and the
host's windows before it: while they commit; see ``tocsin.collector.intake``),
in seq order per host (the ingest
stream does); it returns the decisions taken for that window.
``clock_skew_s`` is how far ingest re-dated the window (see ``Judge.observe``).
Judgement is never lost (see ``JudgeStage``); a window judged from the store
has the times it was stored with (re-dated, if ingest re-dated it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tocsin.collector.baseline import HostBaselines
from tocsin.collector.decide import Decision, Judge, ts_s
from tocsin.collector.features import window_features
from tocsin.collector.groupcommit import GroupCommit
from tocsin.collector.meter import WindowMeter
from tocsin.collector.protocols import Scorer
from tocsin.collector.respond import Responder
from tocsin.collector.store import JudgedMark, Store, StoredWindow, StoreUnavailable
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.evidence import carries_evidence

log = logging.getLogger("tocsin.collector.pipeline")

# Rows to score, the future of their scores, and the scorer.
_Item = tuple[npt.NDArray[np.float64], "asyncio.Future[list[float | None]]", Scorer]


class BatchScorer:
    def __init__(
        self,
        scorer: Scorer,
        max_batch: int = 1024,
        linger_s: float = 0.003,
        max_pending: int = 4096,
    ) -> None:
        self.scorer = scorer
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.dropped = 0
        self.batches = 0
        self.max_pending = max_pending
        # Urgent items first, then the others, each in arrival order.
        self._urgent: collections.deque[_Item] = collections.deque()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tocsin-score")

    async def score(self, x: npt.NDArray[np.float64], scorer: Scorer | None = None) -> float | None:
        """The score of ``x`` by ``scorer`` (default: the batch's), or None (dropped/failed)."""
        return (await self.score_rows(np.atleast_2d(x), scorer))[0]

    async def score_rows(
        self, X: npt.NDArray[np.float64], scorer: Scorer | None = None, urgent: bool = False
    ) -> list[float | None]:
        """The scores of the rows of ``X`` (one queue entry), None for each if dropped/failed."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[list[float | None]] = asyncio.get_running_loop().create_future()
        if len(self._urgent) + len(self._queue) >= self.max_pending:
            self.dropped += len(X)
            return [None] * len(X)
        (self._urgent if urgent else self._queue).append((X, fut, scorer or self.scorer))
        self._queued.set()
        return await fut

    def _next(self, urgent_only: bool) -> _Item | None:
        for queue in (self._urgent,) if urgent_only else (self._urgent, self._queue):
            if queue:
                return queue.popleft()
        return None

    async def _run(self) -> None:
        while True:
            urgent = bool(self._urgent)  # a batch of urgent rows only: a small, quick call
            first = self._next(urgent)
            if first is None:
                self._queued.clear()
                await self._queued.wait()
                continue
            batch = [first]
            if self.linger_s > 0 and not urgent:
                await asyncio.sleep(self.linger_s)
            rows = len(first[0])
            while rows < self.max_batch and (item := self._next(urgent)) is not None:
                batch.append(item)
                rows += len(item[0])
            groups: dict[int, list[_Item]] = {}
            for item in batch:
                groups.setdefault(id(item[2]), []).append(item)
            for items in groups.values():
                await self._score_group(items)

    async def _score_group(self, items: list[_Item]) -> None:
        """One scorer call for the items that share a scorer (a host's own or the shipped)."""
        X = np.vstack([x for x, _, _ in items])
        scorer = items[0][2]
        try:
            loop = asyncio.get_running_loop()
            scores: Sequence[float] = (
                await loop.run_in_executor(self._thread, scorer.score, X)
            ).tolist()
        except Exception:
            log.exception("scorer failed on a batch of %d windows", len(X))
            scores = [float("nan")] * len(X)
        self.batches += 1
        at = 0
        for x, fut, _ in items:
            mine = scores[at : at + len(x)]
            at += len(x)
            if not fut.done():
                fut.set_result([None if s != s else float(s) for s in mine])

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._thread.shutdown(wait=False)


@dataclass(frozen=True)
class Committed:
    """A committed window waiting for its judgement."""

    boot_id: str
    window: pb.Window
    x: npt.NDArray[np.float64]
    clock_skew_s: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.boot_id, int(self.window.seq))


class JudgeStage:
    """Score (with the host's own baseline once it has one), judge, respond, mark judged.

    Parts: the ``judge`` (holding the incident book), the ``responder``, the
    ``store``, the ``baselines`` (shipped model and per-host ones), the
    ``batch`` scorer, the ``meter`` and the group commit the judged marks go
    through (``commits``; a scale-out worker gives ``mark`` instead, which groups
    a batch's marks into one transaction of its own,
    ``tocsin.collector.worker.JudgedMarks``); all built by the caller
    (``tocsin.collector.app``). On construction the responder takes back the
    open alerts a previous collector on the same database left.

    Two lanes. ``enqueue(host_id, item, urgent)`` hands over a committed (and
    acked) window without waiting for its judgement; ``run()`` (started with
    the collector) judges, with ``workers`` tasks, one host at a time each, a
    host's queued windows in order, up to ``max_batch`` of them scored in one
    call and marked in one group commit (a worker waits for that commit, so
    there are many: their scorings and marks share calls and commits). Hosts
    with a window carrying evidence queued (``urgent``) are taken before every
    other: an attack window waits for its own host's earlier windows, never for
    the quiet backlog of other hosts. A host goes back to the end of its lane
    after each batch. ``queued`` counts the windows waiting
    (``tocsin.collector.admission`` pushes quiet agents back when there are too
    many).

    Judgement is never lost. A window counts as judged once its ``JudgedMark``
    is committed (in a group commit, ``commits``), after its decisions were
    stored and sent. A host is *in sync* when memory (its horizons, its
    incidents) matches what the store says was judged. A host not in sync
    (first window after a start, or a judgement that failed on the database) is
    first resynced: the judge's horizons are rebuilt from the host's judged
    windows of the last hour, its incidents taken back from the book, then
    every window committed but neither judged nor queued is judged in order.
    ``run_backlog`` does the same in the background every ``retry_s`` for hosts
    that need it, so a window acked before the database failed is judged once
    it is back, even if its agent sends nothing more. A judgement that fails
    leaves the host out of sync (and ``judge_window``, which judges one window
    at once, raises ``StoreUnavailable`` to its caller). ``owns`` says which
    hosts this stage judges (all, except in a scale-out worker: those of the
    partitions it holds); the backlog settles only those.
    """

    def __init__(
        self,
        judge: Judge,
        responder: Responder,
        store: Store,
        baselines: HostBaselines,
        batch: BatchScorer,
        meter: WindowMeter,
        commits: GroupCommit | None = None,
        retry_s: float = 5.0,
        workers: int = 256,
        max_batch: int = 256,
        owns: Callable[[str], bool] = lambda host_id: True,
        mark: Callable[[str, str, int, float | None], None] | None = None,
    ) -> None:
        self.judge, self.responder, self.store = judge, responder, store
        self.baselines, self.batch, self.meter = baselines, batch, meter
        if commits is None and mark is None:
            raise ValueError("a judge stage marks through a group commit or a mark of its own")
        self.commits, self._mark = commits, mark
        self.owns = owns
        self.retry_s, self.workers, self.max_batch = retry_s, workers, max_batch
        for alert in store.list_alerts(limit=10_000):
            if alert.open:
                self.responder.adopt(alert)
        self._in_sync: set[str] = set()
        # Per host, the windows its last resync judged from the backlog.
        self._caught_up: dict[str, set[tuple[str, int]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._learning: asyncio.Task[None] | None = None
        # The lanes: each host's queued windows, and hosts waiting for a worker
        # (a host in ``_lane`` is in one of the two deques, or in both after
        # evidence promoted it: its entry in the quiet deque is then skipped).
        self._queues: dict[str, collections.deque[Committed]] = {}
        self._urgent: collections.deque[str] = collections.deque()
        self._quiet: collections.deque[str] = collections.deque()
        self._lane: dict[str, bool] = {}  # host -> urgent, while it waits in a lane
        self._busy: set[str] = set()  # hosts a worker is judging
        # Workers waiting for a host, each on a future of its own: a host put in a
        # lane wakes one of them. (One event for all woke every idle worker for
        # every window, 256 tasks to find one host: most of a core at 300 windows/s.)
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        self.queued = 0
        self.resyncs = 0
        self.backlog_judged = 0

    def in_sync(self, host_id: str) -> bool:
        return host_id in self._in_sync

    def forget(self, which: Callable[[str], bool]) -> None:
        """Mark the hosts ``which`` selects out of sync: resynced from the store when next seen.

        A scale-out worker calls it for the hosts of a partition it takes or gives
        up: another worker may have judged them meanwhile."""
        self._in_sync -= {h for h in self._in_sync if which(h)}

    def enqueue(self, host_id: str, item: Committed, urgent: bool = False) -> None:
        """Queue a committed window for judgement (in order per host); never waits."""
        self._queues.setdefault(host_id, collections.deque()).append(item)
        self.queued += 1
        self._wake(host_id, urgent)

    def _wake(self, host_id: str, urgent: bool) -> None:
        lane = self._lane.get(host_id)
        if host_id in self._busy and lane is None:
            if urgent:
                self._lane[host_id] = True  # taken up again by the worker when it is done
            return
        if lane is None or (urgent and not lane):
            (self._urgent if urgent else self._quiet).append(host_id)
            self._lane[host_id] = urgent
        while self._idle:
            idle = self._idle.popleft()
            if not idle.done():
                idle.set_result(None)
                break

    def _next_host(self) -> str | None:
        for lane, urgent in ((self._urgent, True), (self._quiet, False)):
            while lane:
                host_id = lane.popleft()
                if host_id in self._busy or self._lane.get(host_id) is not urgent:
                    continue  # a stale entry: promoted, or taken already
                del self._lane[host_id]
                self._busy.add(host_id)
                return host_id
        return None

    async def run(self) -> None:
        """Forever: ``workers`` tasks judging queued windows, urgent hosts first."""
        await asyncio.gather(*(self._work() for _ in range(self.workers)))

    async def quiesce(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until nothing is queued or being judged.

        A collector stopping gives the windows it acked their judgement, and a
        decision whose commands went out its alert, before it cancels the
        workers; what is left is judged from the store at the next start."""
        end = time.monotonic() + timeout_s
        while self._busy or self.queued:
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _work(self) -> None:
        while True:
            host_id = self._next_host()
            if host_id is None:
                idle = asyncio.get_running_loop().create_future()
                self._idle.append(idle)
                await idle
                continue
            queue = self._queues.get(host_id, collections.deque())
            items = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
            self.queued -= len(items)
            try:
                await self._judge_queued(host_id, items)
            except StoreUnavailable:
                pass  # logged; the host is out of sync and its backlog is judged later
            except Exception:
                log.exception("host %s: judging %d window(s) failed", host_id, len(items))
            finally:
                self._busy.discard(host_id)
                urgent = self._lane.pop(host_id, False)
                if queue:
                    self._wake(host_id, urgent)
                else:
                    self._queues.pop(host_id, None)

    async def _judge_queued(self, host_id: str, items: list[Committed]) -> None:
        keys = {it.key for it in items} | {it.key for it in self._queues.get(host_id, ())}
        async with self._lock(host_id):
            if host_id not in self._in_sync:
                await self._resync(host_id, keys)
            caught_up = self._caught_up.get(host_id, set())
            # Committed, then judged by a resync before it was queued: not judged again.
            todo = [it for it in items if it.key not in caught_up]
            if todo:
                await self._judge_marked(host_id, todo)

    async def judge_window(
        self,
        host_id: str,
        boot_id: str,
        w: pb.Window,
        x: npt.NDArray[np.float64],
        clock_skew_s: float = 0.0,
    ) -> list[Decision]:
        """Judge a committed window now (first the host's backlog, if any); its decisions."""
        item = Committed(boot_id, w, x, clock_skew_s)
        async with self._lock(host_id):
            if host_id not in self._in_sync:
                await self._resync(host_id, {item.key})
            elif item.key in self._caught_up.get(host_id, ()):
                return []
            return await self._judge_marked(host_id, [item])

    async def settle(self, host_id: str) -> int:
        """Bring a host not in sync back in sync; how many backlog windows were judged."""
        if host_id in self._in_sync:
            return 0
        async with self._lock(host_id):
            if host_id in self._in_sync:
                return 0
            keys = {it.key for it in self._queues.get(host_id, ())}
            return await self._resync(host_id, keys)

    async def run_backlog(self) -> None:
        """Forever: every ``retry_s``, settle the hosts with windows acked but not judged."""
        while True:
            try:
                hosts = await asyncio.to_thread(self.store.unjudged_hosts)
            except StoreUnavailable as exc:
                log.warning("judgement backlog not checked: %s", exc)
                hosts = []
            for host_id in filter(self.owns, hosts):
                if host_id in self._queues or host_id in self._busy:
                    continue  # its windows are on their way: a worker resyncs it
                with contextlib.suppress(StoreUnavailable):
                    n = await self.settle(host_id)
                    if n:
                        log.warning("judged %d window(s) of %s left unjudged", n, host_id)
            await asyncio.sleep(self.retry_s)

    def _lock(self, host_id: str) -> asyncio.Lock:
        return self._locks.setdefault(host_id, asyncio.Lock())

    async def _resync(self, host_id: str, queued: Set[tuple[str, int]] = frozenset()) -> int:
        """Rebuild the host's memory from the store, judge its backlog; how many were judged.

        The backlog is judged in order up to the first window in ``queued`` (the
        host's windows waiting in its lane): what follows it in the store was
        committed after it, and is in the lane or about to be.
        """
        span_s = self.judge.config.long_s
        judged = await asyncio.to_thread(self.store.judged_since, host_id, span_s)
        self.judge.resync(host_id, (_parse(sw) for sw in judged))
        backlog = await asyncio.to_thread(self.store.unjudged, host_id)
        self.resyncs += 1
        caught_up = self._caught_up[host_id] = set()
        older: list[Committed] = []
        for boot_id, sw in backlog:
            if (boot_id, sw.seq) in queued:
                break
            w = _parse(sw)
            older.append(Committed(boot_id, w, window_features(w)))
        for at in range(0, len(older), self.max_batch):
            chunk = older[at : at + self.max_batch]
            await self._judge_marked(host_id, chunk)
            caught_up.update(it.key for it in chunk)
        self.backlog_judged += len(caught_up)
        self._in_sync.add(host_id)
        return len(caught_up)

    async def _judge_marked(self, host_id: str, items: list[Committed]) -> list[Decision]:
        try:
            return await self._judge(host_id, items)
        except asyncio.CancelledError:
            self._in_sync.discard(host_id)  # stopping: judged from the store next time
            raise
        except BaseException as exc:
            self._in_sync.discard(host_id)
            log.error(
                "host %s: %d window(s) from %s/%d stored and acked but not judged (%s);"
                " they will be judged again once the database is back",
                host_id,
                len(items),
                items[0].boot_id,
                int(items[0].window.seq),
                exc,
            )
            raise

    async def _judge(self, host_id: str, items: list[Committed]) -> list[Decision]:
        """Judge ``items`` (one host's, in order): one scoring call, one group commit."""
        scorer = self.baselines.scorer_for(host_id)
        urgent = any(carries_evidence(it.window) for it in items)
        X = np.vstack([it.x for it in items])
        scores = await self.batch.score_rows(X, scorer, urgent=urgent)
        decided: list[Decision] = []
        marks = []
        for it, score in zip(items, scores, strict=True):
            w = it.window
            self.meter.window(host_id, w)
            if score is not None:
                self.meter.score(score)
            decisions = self.judge.observe(
                host_id, w, score, float(scorer.threshold), clock_skew_s=it.clock_skew_s
            )
            for d in decisions:
                explanation: list[tuple[str, float]] = []
                if d.posts:
                    try:
                        explanation = list(scorer.explain(it.x))
                    except Exception:
                        log.exception("scorer could not explain a window")
                await self.responder.on_decision(d, explanation)
            decided += decisions
            marks.append(JudgedMark(host_id, it.boot_id, int(w.seq), score))
        if self._mark is not None:  # a scale-out worker commits a batch's marks itself
            for m in marks:
                self._mark(m.host_id, m.boot_id, m.seq, m.score)
        elif self.commits is not None:
            await self.commits.judged(marks)
        end_s = ts_s(items[-1].window.end)
        idle = self._learning is None or self._learning.done()
        try:
            due = idle and self.baselines.due(host_id, end_s, self.judge.in_incident(host_id))
        except StoreUnavailable as exc:
            log.warning("host %s: baseline not checked: %s", host_id, exc)
            due = False
        if due:
            self._learning = asyncio.get_running_loop().create_task(self._learn(host_id, end_s))
        return decided

    async def _learn(self, host_id: str, now_s: float) -> None:
        spans = self.judge.book.spans(host_id, "critical")
        try:
            learned = await asyncio.to_thread(self.baselines.learn, host_id, now_s, spans)
        except Exception:
            log.exception("learning the baseline of %s failed", host_id)
            return
        if learned:
            log.info("host %s now scored with its own baseline", host_id)

    async def close(self) -> None:
        await self.batch.close()
        if self._learning is not None:
            self._learning.cancel()
            await asyncio.gather(self._learning, return_exceptions=True)


def _parse(sw: StoredWindow) -> pb.Window:
    """The stored window as judged: its wire bytes, with the times it was stored with."""
    w = pb.Window()
    w.ParseFromString(sw.raw)
    w.start.FromNanoseconds(round(sw.start_s * 1e9))
    w.end.FromNanoseconds(round(sw.end_s * 1e9))
    return w
