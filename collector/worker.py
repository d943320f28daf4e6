"""The scale-out worker: judge the windows the gateways put on the bus.

``tocsin-collector worker --bus nats://... --store postgresql://...`` holds some
of the bus's partitions (``tocsin.collector.bus``) and, for each, consumes its
messages in order with the same judge stage and responder as the embedded
collector (built by ``tocsin.collector.app``):

- a batch of messages is fetched; its windows are stored in one transaction
  (the store dedupes host/boot/seq: a message delivered twice is stored once);
  then, host by host in order (hosts side by side), each new window is judged
  and each resent one settles its host (what was stored but not judged is
  judged then); action results go to the responder; the judged marks of the
  batch are committed together (``JudgedMarks``); then the batch is acked.
  A failure leaves the batch unacked: it is delivered again.
- Partitions are shared through leases. Every ``renew_s`` the worker says it is
  alive, renews the leases it holds, and takes free ones up to its share
  (``ceil(PARTITIONS / live workers)``), or gives back what is past its share,
  so two workers split the partitions and one takes all of a dead one's within
  the lease TTL plus one renewal (about 4 s by default). A lease it fails to
  renew is given up at once: another worker may hold it.
- On taking a partition, the previous holder's consumer is replaced
  (``Bus.consume``), the open alerts of its hosts are adopted by the responder
  and the stage forgets what it knew of them, so it resyncs them from the
  store; its judgement backlog loop settles only hosts of partitions held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from tocsin.collector.bus import PARTITIONS, Bus, BusErrors, InMessage, partition_of
from tocsin.collector.features import window_features
from tocsin.collector.groupcommit import Held
from tocsin.collector.pipeline import JudgeStage
from tocsin.collector.respond import Responder
from tocsin.collector.store import Store, StoreUnavailable

log = logging.getLogger("tocsin.collector.worker")


class JudgedMarks:
    """The judged marks of a batch, committed in one transaction instead of one each.

    ``add`` is the judge stage's ``mark``; ``flush`` commits what was added (the
    worker calls it before it acks the batch's messages). A crash before the flush
    leaves the windows stored but not marked, and their messages not acked: they
    are delivered again and the judge stage takes them up, as after any crash
    between a judgement and its mark.
    """

    def __init__(self, store: Store, held: Sequence[Held] = ()) -> None:
        self.store = store
        self.held = tuple(held)  # the incident book: what the judge saved, written alongside
        self._pending: list[tuple[str, str, int, float | None]] = []

    def add(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None:
        self._pending.append((host_id, boot_id, seq, score))

    async def flush(self) -> None:
        marks, self._pending = self._pending, []
        if marks:
            await asyncio.to_thread(self._commit, marks)

    def _commit(self, marks: list[tuple[str, str, int, float | None]]) -> None:
        with self.store.atomic():
            for mark in marks:
                self.store.mark_judged(*mark)
            for part in self.held:
                part.flush()


class Holdings:
    """The partitions this worker holds now: what the judge stage may settle."""

    def __init__(self) -> None:
        self.partitions: set[int] = set()

    def owns(self, host_id: str) -> bool:
        return partition_of(host_id) in self.partitions


@dataclass
class _Held:
    revision: int
    task: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    def __init__(
        self,
        bus: Bus,
        store: Store,
        stage: JudgeStage,
        responder: Responder,
        holdings: Holdings,
        marks: JudgedMarks,
        name: str,
        batch: int = 64,
        renew_s: float = 1.0,
        grace_s: float = 5.0,
    ) -> None:
        self.bus, self.store, self.stage, self.responder = bus, store, stage, responder
        self.holdings, self.marks, self.name = holdings, marks, name
        self.batch, self.renew_s = batch, renew_s
        self.windows_stored = 0
        self.duplicates = 0
        self.batches_failed = 0
        self.taken = 0
        self.grace_s = grace_s
        self._held: dict[int, _Held] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._letting_go: set[asyncio.Task[None]] = set()

    async def start(self, listen: str | None = None) -> int:
        """Start tending leases and judging; a worker listens on nothing (returns 0)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._tend_forever()),
            loop.create_task(self.stage.run_backlog()),
        ]
        return 0

    async def stop(self, grace_s: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._let_go(p, release=True) for p in list(self._held)))
        await asyncio.gather(*self._letting_go, return_exceptions=True)
        await self.stage.close()
        await self.responder.drain()
        try:
            self.responder.updates.flush()
        except StoreUnavailable as exc:  # the incidents and alerts stand; their last refresh not
            log.warning("stopping: refreshed alerts not written: %s", exc)
        await self.bus.close()
        self.store.close()
        self.stage.judge.book.close_db()
        self.stage.baselines.close()

    # ------------------------------------------------------------ leases

    async def _tend_forever(self) -> None:
        while True:
            try:
                await self._tend()
            except BusErrors as exc:
                log.warning("leases not tended: bus unavailable (%s)", exc or type(exc).__name__)
            await asyncio.sleep(self.renew_s)

    async def _tend(self) -> None:
        live = await self.bus.heartbeat(self.name)
        held_now = sorted(self._held.items())
        renewed = await asyncio.gather(  # all at once: one round trip, well within the TTL
            *(self.bus.renew_lease(p, self.name, held.revision) for p, held in held_now)
        )
        for (p, held), revision in zip(held_now, renewed, strict=True):
            if revision is None:
                log.warning("partition %d: lease lost; another worker may hold it", p)
                # Stopped in the background: the other leases are renewed meanwhile.
                self._spawn(self._let_go(p, release=False))
            else:
                held.revision = revision
        share = math.ceil(PARTITIONS / live)
        extra = sorted(self._held, reverse=True)[: max(len(self._held) - share, 0)]
        await asyncio.gather(*(self._let_go(p, release=True) for p in extra))
        start = sum(map(ord, self.name)) % PARTITIONS  # workers start looking apart
        for i in range(PARTITIONS):
            if len(self._held) >= share:
                break
            p = (start + i) % PARTITIONS
            if p not in self._held:
                revision = await self.bus.take_lease(p, self.name)
                if revision is not None:
                    await self._take(p, revision)

    async def _take(self, p: int, revision: int) -> None:
        try:
            sub = await self.bus.consume(p, f"{self.name}-p{p}-r{revision}")
        except BusErrors:
            await self.bus.drop_lease(p, revision)
            raise
        self.holdings.partitions.add(p)
        self.stage.forget(lambda h: partition_of(h) == p)
        for alert in await asyncio.to_thread(self.store.list_alerts, "", 10_000):
            if alert.open and partition_of(alert.host_id) == p:
                self.responder.adopt(alert)
        held = self._held[p] = _Held(revision)
        held.task = asyncio.get_running_loop().create_task(self._consume(p, sub, held))
        self.taken += 1
        log.info("partition %d taken (%d held)", p, len(self._held))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._letting_go.add(task)
        task.add_done_callback(self._letting_go.discard)

    async def _let_go(self, p: int, release: bool) -> None:
        """Stop consuming ``p`` after the batch in hand (or ``grace_s``, then at once: what
        was not acked is delivered again); give the lease back if ``release``."""
        held = self._held.pop(p)
        held.stopping.set()
        if held.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, *BusErrors):
                await asyncio.wait_for(held.task, timeout=self.grace_s)
        self.holdings.partitions.discard(p)
        self.stage.forget(lambda h: partition_of(h) == p)
        if release:
            await self.bus.drop_lease(p, held.revision)
        log.info("partition %d given up (%d held)", p, len(self._held))

    # ------------------------------------------------------------ messages

    async def _consume(self, p: int, sub: object, held: _Held) -> None:
        fetch = sub.fetch  # type: ignore[attr-defined]
        while not held.stopping.is_set():
            try:
                # Wait for one message (returned as soon as it comes), then take what
                # else is there: a batch never waits to be filled.
                msgs = await fetch(1, timeout=1.0)
                with contextlib.suppress(TimeoutError):
                    msgs += await fetch(self.batch - 1, timeout=0.02)
            except TimeoutError:
                continue
            except BusErrors as exc:
                log.warning("partition %d: fetch failed (%s)", p, exc or type(exc).__name__)
                await asyncio.sleep(self.renew_s)
                continue
            await self._handle(p, msgs)

    async def _handle(self, p: int, msgs: Sequence[object]) -> None:
        items: list[InMessage] = []
        for msg in msgs:
            try:
                items.append(self.bus.decode(msg))  # type: ignore[arg-type]
            except (ValueError, KeyError) as exc:
                log.error("partition %d: message dropped, not tocsin's: %s", p, exc)
                with contextlib.suppress(*BusErrors):
                    await msg.term()  # type: ignore[attr-defined]
        try:
            await self._judge(items)
            await self.marks.flush()
        except (StoreUnavailable, *BusErrors) as exc:
            self.batches_failed += 1
            log.error(
                "partition %d: %d messages not judged (%s); they are delivered again",
                p,
                len(items),
                exc,
            )
            for item in items:
                with contextlib.suppress(*BusErrors):
                    await item.msg.nak(delay=self.renew_s)
            await asyncio.sleep(self.renew_s)
            return
        for item in items:
            with contextlib.suppress(*BusErrors):
                await item.ack()

    async def _judge(self, items: list[InMessage]) -> None:
        windows = [i for i in items if i.window is not None]
        rows = [(i.host_id, i.boot_id, i.window.stored()) for i in windows if i.window]
        inserted = await asyncio.to_thread(self.store.add_window_batch, rows) if rows else []
        new = {id(i): ok for i, ok in zip(windows, inserted, strict=True)}
        self.windows_stored += sum(inserted)
        self.duplicates += len(inserted) - sum(inserted)
        by_host: dict[str, list[InMessage]] = {}
        for item in items:
            by_host.setdefault(item.host_id, []).append(item)
        await asyncio.gather(*(self._host(h, its, new) for h, its in by_host.items()))

    async def _host(self, host_id: str, items: list[InMessage], new: dict[int, bool]) -> None:
        """One host's messages of the batch, in order."""
        for item in items:
            if item.result is not None:
                await self.responder.on_action_result(host_id, item.result)
            elif item.window is not None and new[id(item)]:
                w = item.window.window
                await self.stage.judge_window(
                    host_id,
                    item.boot_id,
                    w,
                    window_features(w),
                    clock_skew_s=item.window.skew_s,
                )
            else:
                await self.stage.settle(host_id)
