"""From a committed window to a response: score in micro-batches, judge, respond.

``BatchScorer.score(x)`` awaits the anomaly score of one feature vector.
Vectors that arrive within ``linger_s`` of each other are scored together in
one ``asyncio.to_thread`` call (scoring costs per call, not per row), at most
``max_batch`` at a time. The queue is bounded: when it is full the window is
judged without a score (deterministic evidence only) and ``dropped`` counts it.
A scorer error is logged and also yields no score: the evidence still counts.

``JudgeStage.judge_window(host_id, boot_id, window, features, clock_skew_s=0.0)``
must be called in seq order per host (the ingest stream does); it returns the
decisions taken. ``clock_skew_s`` is how far ingest re-dated the window (see
``Judge.observe``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tocsin.collector.baseline import HostBaselines
from tocsin.collector.decide import Decision, Judge, ts_s
from tocsin.collector.incidents import IncidentBook, book_for
from tocsin.collector.protocols import Scorer
from tocsin.collector.respond import Responder
from tocsin.collector.score import ForestScorer
from tocsin.collector.store import Store
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
    """Score (with the host's own baseline once it has one), judge, respond.

    On construction it takes back what a previous collector on the same
    database left open: the judge's open incidents (``tocsin.collector.incidents``)
    and the responder's open alerts, so a window after a restart updates them.
    The decision's commands go out before the window's score is written back.
    """

    def __init__(
        self,
        scorer: Scorer,
        judge: Judge,
        responder: Responder,
        store: Store,
        batch: BatchScorer | None = None,
        baselines: HostBaselines | None = None,
        book: IncidentBook | None = None,
    ) -> None:
        self.scorer, self.judge, self.responder, self.store = scorer, judge, responder, store
        self.batch = batch or BatchScorer(scorer)
        path = getattr(store, "path", None)
        if baselines is None:
            learnable = isinstance(scorer, ForestScorer) and path is not None
            baselines = HostBaselines(scorer, Path(path) if learnable else None)
        self.baselines = baselines
        self.judge.adopt_book(book if book is not None else book_for(store))
        for alert in store.list_alerts(limit=10_000):
            if alert.open:
                self.responder.adopt(alert)
        self._learning: asyncio.Task[None] | None = None

    async def judge_window(
        self,
        host_id: str,
        boot_id: str,
        w: pb.Window,
        x: npt.NDArray[np.float64],
        clock_skew_s: float = 0.0,
    ) -> list[Decision]:
        scorer = self.baselines.scorer_for(host_id)
        score = await self.batch.score(x, scorer)
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
        if score is not None:
            self.store.set_window_score(host_id, boot_id, int(w.seq), score)
        end_s = ts_s(w.end)
        idle = self._learning is None or self._learning.done()
        if idle and self.baselines.due(host_id, end_s, self.judge.in_incident(host_id)):
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
