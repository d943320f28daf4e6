"""From a committed window to a response: score in micro-batches, judge, respond.

``BatchScorer.score(x)`` awaits the anomaly score of one feature vector.
Vectors that arrive within ``linger_s`` of each other are scored together in
one ``asyncio.to_thread`` call (scoring costs per call, not per row), at most
``max_batch`` at a time. The queue is bounded: when it is full the window is
judged without a score (deterministic evidence only) and ``dropped`` counts it.
A scorer error is logged and also yields no score: the evidence still counts.

``JudgeStage.judge(host_id, boot_id, window, features)`` must be called in seq
order per host (the ingest stream does); it returns the decisions taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from tocsin.collector.decide import Decision, Judge
from tocsin.collector.protocols import Scorer
from tocsin.collector.respond import Responder
from tocsin.collector.store import Store
from tocsin.v1 import telemetry_pb2 as pb

log = logging.getLogger("tocsin.collector.pipeline")

_Item = tuple[npt.NDArray[np.float64], "asyncio.Future[float | None]"]


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

    async def score(self, x: npt.NDArray[np.float64]) -> float | None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((x, fut))
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
            X = np.vstack([x for x, _ in batch])
            try:
                scores: Sequence[float] = (await asyncio.to_thread(self.scorer.score, X)).tolist()
            except Exception:
                log.exception("scorer failed on a batch of %d windows", len(batch))
                scores = [float("nan")] * len(batch)
            self.batches += 1
            for (_, fut), s in zip(batch, scores, strict=True):
                if not fut.done():
                    fut.set_result(None if s != s else float(s))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)


class JudgeStage:
    def __init__(
        self, scorer: Scorer, judge: Judge, responder: Responder, store: Store,
        batch: BatchScorer | None = None,
    ) -> None:
        self.scorer, self.judge, self.responder, self.store = scorer, judge, responder, store
        self.batch = batch or BatchScorer(scorer)

    async def judge_window(
        self, host_id: str, boot_id: str, w: pb.Window, x: npt.NDArray[np.float64]
    ) -> list[Decision]:
        score = await self.batch.score(x)
        if score is not None:
            self.store.set_window_score(host_id, boot_id, int(w.seq), score)
        decisions = self.judge.observe(host_id, w, score)
        for d in decisions:
            explanation: list[tuple[str, float]] = []
            if d.posts:
                try:
                    explanation = list(await asyncio.to_thread(self.scorer.explain, x))
                except Exception:
                    log.exception("scorer could not explain a window")
            await self.responder.on_decision(d, explanation)
        return decisions
