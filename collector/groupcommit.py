"""Group commit: what every stream and the judge write, one store transaction per batch.

Contract of ``GroupCommit(store, held=(), max_batch=256)``:

- ``await add(host_id, boot_id, window, urgent=False)`` returns whether the
  window was new (``False``: already stored, a resend), once the transaction
  holding it has committed, or raises what the store raised for that batch.
- ``await judged(marks)`` returns once the marks (``JudgedMark``) are committed
  (or raises likewise): a window counts as judged only then.
- While one batch commits in a thread of the group commit's own, what
  arrives forms the next, at most ``max_batch`` items a transaction
  (``Store.add_window_batch``): one fsync serves them all
  (``synchronous=FULL`` kept), instead of one each.
  Each part of ``held`` (the incident book: what the judge saved while
  judging) writes what it holds in the same transaction (``flush``), so it is
  durable no later than the marks of the windows judged before it.
  Urgent windows (windows with evidence, ``tocsin.v1.evidence``), with the
  windows of the same host that wait before them, are taken first, then
  judged marks, then the other windows, each in arrival order: a host's
  windows are committed in the order they came. ``submit`` is ``add``
  without waiting (a stream reads on while its windows commit).
- ``touch(host_id, clean_disconnect=None)`` notes that a host was seen (a
  hello, a heartbeat, a stream's end: ``Store.touch_host``); the next
  transaction writes it, never one of its own, and the caller does not wait.
- ``waiting`` is how many items wait for a transaction; ``batches`` counts
  the transactions committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from tocsin.collector.store import JudgedMark, Store, StoredWindow, WindowItem

_Windows = list[tuple[WindowItem, "asyncio.Future[bool]"]]
_Marks = list[tuple[list[JudgedMark], "asyncio.Future[None]"]]


class Held(Protocol):
    def flush(self) -> None:
        """Write what is held, inside the transaction open on this thread."""


class GroupCommit:
    def __init__(self, store: Store, held: Sequence[Held] = (), max_batch: int = 256) -> None:
        self.store = store
        self.held = tuple(held)
        self.max_batch = max_batch
        self.batches = 0
        self._urgent: _Windows = []
        self._marks: _Marks = []
        self._windows: _Windows = []
        # Hosts seen since the last transaction -> their clean-disconnect flag (None: kept).
        self._touches: dict[str, bool | None] = {}
        self._worker: asyncio.Task[None] | None = None
        # A thread of its own: a transaction never queues behind other blocking calls
        # (a stream's hello waiting for the database) in the loop's default executor.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tocsin-commit")

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._marks) + len(self._windows) + len(self._touches)

    async def add(
        self, host_id: str, boot_id: str, window: StoredWindow, urgent: bool = False
    ) -> bool:
        return await self.submit(host_id, boot_id, window, urgent)

    def submit(
        self, host_id: str, boot_id: str, window: StoredWindow, urgent: bool = False
    ) -> asyncio.Future[bool]:
        """``add`` without waiting: the future of whether the window was new."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if urgent:
            # The host's windows waiting before it go first too: a host's windows are
            # committed in the order they came (an ack covers every lower seq).
            mine = [e for e in self._windows if e[0][0] == host_id]
            if mine:
                self._windows = [e for e in self._windows if e[0][0] != host_id]
                self._urgent += mine
        (self._urgent if urgent else self._windows).append(((host_id, boot_id, window), done))
        self._start()
        return done

    async def judged(self, marks: Sequence[JudgedMark]) -> None:
        if not marks:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append((list(marks), done))
        self._start()
        await done

    def touch(self, host_id: str, clean_disconnect: bool | None = None) -> None:
        if clean_disconnect is None:
            clean_disconnect = self._touches.get(host_id)
        self._touches[host_id] = clean_disconnect
        self._start()

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Commit batches while anything waits; then end (``add``/``judged`` start it again)."""
        while self.waiting:
            room = self.max_batch
            windows = _take(self._urgent, room)
            marks = _take(self._marks, room - len(windows))
            windows += _take(self._windows, room - len(windows) - len(marks))
            touches, self._touches = self._touches, {}
            await self._commit(windows, marks, touches)

    async def _commit(
        self, windows: _Windows, marks: _Marks, touches: dict[str, bool | None]
    ) -> None:
        futures: list[asyncio.Future[Any]] = [f for _, f in windows] + [f for _, f in marks]
        try:
            inserted = await asyncio.get_running_loop().run_in_executor(
                self._thread,
                self._write,
                [i for i, _ in windows],
                [m for ms, _ in marks for m in ms],
                touches,
            )
        except Exception as exc:  # every waiter of the batch learns what the store said
            # (the touches are dropped: the host's next message touches it again)
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        self.batches += 1
        for (_, done), new in zip(windows, inserted, strict=True):
            if not done.done():  # a stream cancelled meanwhile: its agent resends
                done.set_result(new)
        for _, marked in marks:
            if not marked.done():
                marked.set_result(None)

    def _write(
        self, items: list[WindowItem], marks: list[JudgedMark], touches: dict[str, bool | None]
    ) -> list[bool]:
        with self.store.atomic():
            inserted = self.store.add_window_batch(items, marks)
            for host_id, clean in touches.items():
                self.store.touch_host(host_id, clean_disconnect=clean)
            for part in self.held:
                part.flush()
        return inserted


def _take(pending: list[Any], n: int) -> list[Any]:
    """The first ``n`` items of ``pending``, removed from it."""
    taken = pending[: max(0, n)]
    del pending[: len(taken)]
    return taken
