"""From a committed window to a response: score in micro-batches, judge, respond.

``BatchScorer.score(x)`` awaits the anomaly score of one feature vector.
Vectors that arrive within ``linger_s`` of each other are scored together in
one ``asyncio.to_thread`` call (scoring costs per call, not per row), at most
``max_batch`` at a time. The queue is bounded: when it is full the window is
judged without a score (deterministic evidence only) and ``dropped`` counts it.
A scorer error is logged and also yields no score: the evidence still counts.

``JudgeStage.judge_window(host_id, boot_id, window, features, clock_skew_s=0.0)``
is called after the window was committed, in seq order per host (the ingest
stream does); it returns the decisions taken for that window.
``clock_skew_s`` is how far ingest re-dated the window (see ``Judge.observe``).
Judgement is never lost (see ``JudgeStage``); a window judged from the store
has the times it was stored with (re-dated, if ingest re-dated it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from tocsin.collector.baseline import HostBaselines
from tocsin.collector.decide import Decision, Judge, ts_s
from tocsin.collector.features import window_features
from tocsin.collector.meter import WindowMeter
from tocsin.collector.protocols import Scorer
from tocsin.collector.respond import Responder
from tocsin.collector.store import Store, StoredWindow, StoreUnavailable
from tocsin.v1 import telemetry_pb2 as pb

log = logging.getLogger("tocsin.collector.pipeline")

_Item = tuple[npt.NDArray[np.float64], "asyncio.Future[float | None]", Scorer]


class BatchScorer:
    def __init__(
        self, scorer: Scorer, max_batch: int = 64, linger_s: float = 0.003, max_pending: int = 4096
    ) -> None:
        self.scorer = scorer
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.dropped = 0
        self.batches = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_pending)
        self._worker: asyncio.Task[None] | None = None

    async def score(self, x: npt.NDArray[np.float64], scorer: Scorer | None = None) -> float | None:
        """The score of ``x`` by ``scorer`` (default: the batch's), or None (dropped/failed)."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((x, fut, scorer or self.scorer))
        except asyncio.QueueFull:
            self.dropped += 1
            return None
        return await fut

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.linger_s > 0:
                await asyncio.sleep(self.linger_s)
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
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
            scores: Sequence[float] = (await asyncio.to_thread(scorer.score, X)).tolist()
        except Exception:
            log.exception("scorer failed on a batch of %d windows", len(items))
            scores = [float("nan")] * len(items)
        self.batches += 1
        for (_, fut, _), s in zip(items, scores, strict=True):
            if not fut.done():
                fut.set_result(None if s != s else float(s))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)


class JudgeStage:
    """Score (with the host's own baseline once it has one), judge, respond, mark judged.

    Parts: the ``judge`` (holding the incident book), the ``responder``, the
    ``store``, the ``baselines`` (shipped model and per-host ones), the
    ``batch`` scorer and the ``meter``; all built by the caller
    (``tocsin.collector.app``). On construction the responder takes back the
    open alerts a previous collector on the same database left.

    Judgement is never lost. A window counts as judged once
    ``store.mark_judged`` recorded it, after its decisions were stored and
    sent. A host is *in sync* when memory (its horizons, its incidents) matches
    what the store says was judged. A host not in sync (first window after a
    start, or a judgement that failed on the database) is first resynced: the
    judge's horizons are rebuilt from the host's judged windows of the last
    hour, its incidents taken back from the book, then every window committed
    but not judged is judged in order. ``run_backlog`` does the same in the
    background every ``retry_s`` for hosts that need it, so a window acked
    before the database failed is judged once it is back, even if its agent
    sends nothing more. A judgement that fails raises ``StoreUnavailable`` to
    the caller (the agent is pushed back) and leaves the host out of sync.
    ``owns`` says which hosts this stage judges (all, except in a scale-out
    worker: those of the partitions it holds); the backlog settles only those.
    ``mark`` records a window judged (default ``store.mark_judged``); a worker
    gives one that groups the marks of a batch into one transaction
    (``tocsin.collector.worker.JudgedMarks``), committed before the batch is acked.
    """

    def __init__(
        self,
        judge: Judge,
        responder: Responder,
        store: Store,
        baselines: HostBaselines,
        batch: BatchScorer,
        meter: WindowMeter,
        retry_s: float = 5.0,
        owns: Callable[[str], bool] = lambda host_id: True,
        mark: Callable[[str, str, int, float | None], None] | None = None,
    ) -> None:
        self.judge, self.responder, self.store = judge, responder, store
        self.baselines, self.batch, self.meter = baselines, batch, meter
        self.retry_s = retry_s
        self.owns = owns
        self._mark = mark or store.mark_judged
        for alert in store.list_alerts(limit=10_000):
            if alert.open:
                self.responder.adopt(alert)
        self._in_sync: set[str] = set()
        # Per host, the windows its last resync judged from the backlog.
        self._caught_up: dict[str, set[tuple[str, int]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._learning: asyncio.Task[None] | None = None
        self.resyncs = 0
        self.backlog_judged = 0

    def in_sync(self, host_id: str) -> bool:
        return host_id in self._in_sync

    def forget(self, which: Callable[[str], bool]) -> None:
        """Mark the hosts ``which`` selects out of sync: resynced from the store when next seen.

        A scale-out worker calls it for the hosts of a partition it takes or gives
        up: another worker may have judged them meanwhile."""
        self._in_sync -= {h for h in self._in_sync if which(h)}

    async def judge_window(
        self,
        host_id: str,
        boot_id: str,
        w: pb.Window,
        x: npt.NDArray[np.float64],
        clock_skew_s: float = 0.0,
    ) -> list[Decision]:
        """Judge a committed window (first the host's backlog, if any); its decisions."""
        self.meter.window(host_id, w)
        key = (boot_id, int(w.seq))
        async with self._lock(host_id):
            if host_id not in self._in_sync:
                await self._resync(host_id, skip=key)
            elif key in self._caught_up.get(host_id, ()):
                return []  # committed, then judged by a resync before its stream got here
            return await self._judge_marked(host_id, boot_id, w, x, clock_skew_s)

    async def settle(self, host_id: str) -> int:
        """Bring a host not in sync back in sync; how many backlog windows were judged."""
        if host_id in self._in_sync:
            return 0
        async with self._lock(host_id):
            if host_id in self._in_sync:
                return 0
            return await self._resync(host_id)

    async def run_backlog(self) -> None:
        """Forever: every ``retry_s``, settle the hosts with windows acked but not judged."""
        while True:
            try:
                hosts = await asyncio.to_thread(self.store.unjudged_hosts)
            except StoreUnavailable as exc:
                log.warning("judgement backlog not checked: %s", exc)
                hosts = []
            for host_id in filter(self.owns, hosts):
                with contextlib.suppress(StoreUnavailable):
                    n = await self.settle(host_id)
                    if n:
                        log.warning("judged %d window(s) of %s left unjudged", n, host_id)
            await asyncio.sleep(self.retry_s)

    def _lock(self, host_id: str) -> asyncio.Lock:
        return self._locks.setdefault(host_id, asyncio.Lock())

    async def _resync(self, host_id: str, skip: tuple[str, int] | None = None) -> int:
        """Rebuild the host's memory from the store, judge its backlog (but ``skip``)."""
        span_s = self.judge.config.long_s
        judged = await asyncio.to_thread(self.store.judged_since, host_id, span_s)
        self.judge.resync(host_id, (_parse(sw) for sw in judged))
        backlog = await asyncio.to_thread(self.store.unjudged, host_id)
        self.resyncs += 1
        caught_up = self._caught_up[host_id] = set()
        for boot_id, sw in backlog:
            if (boot_id, sw.seq) == skip:
                continue
            w = _parse(sw)
            await self._judge_marked(host_id, boot_id, w, window_features(w))
            caught_up.add((boot_id, sw.seq))
        self.backlog_judged += len(caught_up)
        self._in_sync.add(host_id)
        return len(caught_up)

    async def _judge_marked(
        self,
        host_id: str,
        boot_id: str,
        w: pb.Window,
        x: npt.NDArray[np.float64],
        clock_skew_s: float = 0.0,
    ) -> list[Decision]:
        try:
            return await self._judge(host_id, boot_id, w, x, clock_skew_s)
        except BaseException as exc:
            self._in_sync.discard(host_id)
            log.error(
                "host %s: window %s/%d stored and acked but not judged (%s);"
                " it will be judged again once the database is back",
                host_id,
                boot_id,
                int(w.seq),
                exc,
            )
            raise

    async def _judge(
        self,
        host_id: str,
        boot_id: str,
        w: pb.Window,
        x: npt.NDArray[np.float64],
        clock_skew_s: float = 0.0,
    ) -> list[Decision]:
        scorer = self.baselines.scorer_for(host_id)
        score = await self.batch.score(x, scorer)
        if score is not None:
            self.meter.score(score)
        decisions = self.judge.observe(
            host_id, w, score, float(scorer.threshold), clock_skew_s=clock_skew_s
        )
        for d in decisions:
            explanation: list[tuple[str, float]] = []
            if d.posts:
                try:
                    explanation = list(scorer.explain(x))
                except Exception:
                    log.exception("scorer could not explain a window")
            await self.responder.on_decision(d, explanation)
        self._mark(host_id, boot_id, int(w.seq), score)
        end_s = ts_s(w.end)
        idle = self._learning is None or self._learning.done()
        try:
            due = idle and self.baselines.due(host_id, end_s, self.judge.in_incident(host_id))
        except StoreUnavailable as exc:
            log.warning("host %s: baseline not checked: %s", host_id, exc)
            due = False
        if due:
            self._learning = asyncio.get_running_loop().create_task(self._learn(host_id, end_s))
        return decisions

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
