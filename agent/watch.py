"""Filesystem events from inotify (watchdog), as compact records in a bounded queue.

Contract: ``FileWatcher(roots, queue_size)`` watches every root recursively once
``start()`` is called. Each event becomes one ``FsEvent`` put without blocking
into a queue of at most ``queue_size`` items; when the queue is full the event
is dropped and ``events_dropped`` grows. A kernel inotify queue overflow
(IN_Q_OVERFLOW, which watchdog reports by logging) grows ``queue_overflows``.
A directory that could not be watched because the inotify watch limit was
reached (watchdog swallows that error for subdirectories) grows
``watch_limit_hits`` and is logged once. Directories created later are watched
(watchdog adds them). A file closed without writing becomes a ``read`` event
(exfiltration staging); opens and directory-modified events are never asked of
the kernel. Paths under any ``ignore`` prefix (the agent's state dir,
recordings) are never queued. Counters only grow; readers take differences.
``wakeup`` is set whenever an event is queued, so a reader can sleep until
there is something to read instead of polling an empty queue. watchdog's
reader sleeps ``READ_BATCH_S`` before each read of the inotify descriptor, so
a storm is read in batches while the first event after a quiet spell comes at
once.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import AnyStr

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger(__name__)

KINDS = ("created", "modified", "deleted", "moved", "closed", "read")
# What the kernel is asked for: no IN_OPEN, no directory-modified echo of every create.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
]


@dataclass(frozen=True, slots=True)
class FsEvent:
    """One filesystem event. ``kind``: created, modified, deleted, moved or closed."""

    kind: str  # one of KINDS
    path: str
    dest_path: str
    is_dir: bool
    at_monotonic_s: float


def _text(p: bytes | str) -> str:
    return os.fsdecode(p)


class _OverflowCounter(logging.Handler):
    """Counts watchdog's "Inotify queue overflowed" warnings (its only overflow signal)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        # One line per kernel overflow (the per-watch "reconciling" lines are not counted).
        if "overflowed; filesystem events were lost" in record.getMessage():
            self.count += 1


_overflow = _OverflowCounter()
logging.getLogger("watchdog.observers.inotify_c").addHandler(_overflow)

# watchdog 7 warns when a directory's watch is added twice (its creation event and the walk
# of its new parent both add it): harmless, the same callback is kept, but the message holds
# the repr of every watch of the tree, kilobytes per new directory, to the journal.
warnings.filterwarnings(
    "ignore", message="Callback with id .* already exists", category=RuntimeWarning
)


def _count_overflows_in_old_watchdog() -> None:
    """watchdog 6 drops the kernel's IN_Q_OVERFLOW event silently: count it at parse time.

    (watchdog 7 logs it, which ``_OverflowCounter`` counts.)
    """
    from watchdog.observers import inotify_c

    if hasattr(inotify_c, "InotifyFD") or not hasattr(inotify_c, "Inotify"):
        return
    parse = inotify_c.Inotify._parse_event_buffer
    q_overflow = 0x4000

    def counting_parse(event_buffer: bytes) -> Iterator[tuple[int, int, int, bytes]]:
        for wd, mask, cookie, name in parse(event_buffer):
            if wd == -1 and mask & q_overflow:
                _overflow.count += 1
            yield wd, mask, cookie, name

    inotify_c.Inotify._parse_event_buffer = staticmethod(counting_parse)


_count_overflows_in_old_watchdog()


def _watchdog_method(candidates: tuple[tuple[str, str], ...]) -> tuple[type, str] | None:
    """The first (class, method) of ``inotify_c`` that this watchdog version has."""
    from watchdog.observers import inotify_c

    for cls_name, meth in candidates:
        cls = getattr(inotify_c, cls_name, None)
        if cls is not None and hasattr(cls, meth):
            return cls, meth
    return None


class _WatchLimit:
    """Counts directories watchdog could not watch for lack of inotify watches."""

    def __init__(self) -> None:
        self.count = 0
        self._installed = False

    def install(self) -> None:
        """Wrap watchdog's watch-adding call once, so ENOSPC (swallowed for subdirs) is seen.

        watchdog 7 adds watches in ``InotifyFD.add_callback``, watchdog 6 in
        ``Inotify._add_watch``; with neither, the limit is only seen by the kernel.
        """
        if self._installed:
            return
        self._installed = True
        found = _watchdog_method((("InotifyFD", "add_callback"), ("Inotify", "_add_watch")))
        if found is None:
            log.warning("this watchdog version hides the inotify watch limit; not counted")
            return
        cls, meth = found
        original = getattr(cls, meth)
        counter = self

        def add_watch(obj: object, path: bytes, *args: object, **kw: object) -> object:
            try:
                return original(obj, path, *args, **kw)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    if counter.count == 0:
                        log.error(
                            "inotify watch limit reached: %s and later directories are "
                            "NOT watched; raise fs.inotify.max_user_watches",
                            os.fsdecode(path),
                        )
                    counter.count += 1
                raise

        setattr(cls, meth, add_watch)


_watch_limit = _WatchLimit()

# watchdog's reader thread reads the inotify descriptor as soon as it is readable: in a
# storm, one read (and one wakeup of each of watchdog's three threads) per event or
# two. Sleeping READ_BATCH_S before each read lets a storm's events gather, so one read
# takes many (the storm figure of `make bench-agent` halves), while the first event
# after a quiet spell is read at once: the sleep is over before it comes.
READ_BATCH_S = 0.01


def _batch_reads() -> None:
    """Wrap watchdog's per-read call once (watchdog 7 ``InotifyFD``, 6 ``Inotify``)."""
    found = _watchdog_method((("InotifyFD", "read_events"), ("Inotify", "read_events")))
    if found is None or getattr(found[0], "_tocsin_batched", False):
        return
    cls, meth = found
    original = getattr(cls, meth)

    def read_events(obj: object, *args: object, **kw: object) -> object:
        time.sleep(READ_BATCH_S)
        return original(obj, *args, **kw)

    setattr(cls, meth, read_events)
    cls._tocsin_batched = True  # type: ignore[attr-defined]


def walk(
    top: AnyStr,
    topdown: bool = True,
    onerror: Callable[[OSError], object] | None = None,
    followlinks: bool = False,
) -> Iterator[tuple[AnyStr, list[AnyStr], list[AnyStr]]]:
    """``os.walk`` (top-down) without recursion.

    Python 3.11's ``os.walk`` recurses once per level: a tree a share user made
    ~1,000 levels deep (``mkdir`` through directory descriptors has no depth
    limit) raises RecursionError in whoever walks it, watchdog's reader thread
    included, and the agent went blind or could not start. Here the pending
    directories are a list; a path past PATH_MAX fails like any unreadable
    directory (``onerror``). ``topdown`` is accepted for os.walk's signature.
    """
    pending = [top]
    while pending:
        root = pending.pop()
        try:
            with os.scandir(root) as it:
                entries = list(it)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs: list[AnyStr] = []
        files: list[AnyStr] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
        yield root, dirs, files
        for name in reversed(dirs):  # the order os.walk visits them in
            path = os.path.join(root, name)
            if followlinks or not os.path.islink(path):
                pending.append(path)


def _iterative_walks() -> None:
    """Give watchdog's modules an ``os`` whose ``walk`` is ``walk`` (once).

    watchdog walks a tree to watch it (at start, and for a directory moved in)
    and to report what a new directory holds, with ``os.walk``.
    """
    import watchdog.events
    from watchdog.observers import inotify, inotify_c

    patched = SimpleNamespace(**{**vars(os), "walk": walk})
    for module in (watchdog.events, inotify, inotify_c):
        if getattr(module, "os", None) is os:
            module.os = patched  # type: ignore[attr-defined]


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher) -> None:
        self._w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind == "closed_no_write":
            if event.is_directory:
                return
            kind = "read"
        elif kind not in KINDS:
            return
        self._w.push(
            FsEvent(
                kind=kind,
                path=_text(event.src_path),
                dest_path=_text(event.dest_path) if event.dest_path else "",
                is_dir=event.is_directory,
                at_monotonic_s=time.monotonic(),
            )
        )


class FileWatcher:
    """Recursive inotify watch over ``roots`` feeding a bounded queue (see module contract)."""

    def __init__(
        self, roots: list[str], queue_size: int = 65536, ignore: list[str] | None = None
    ) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        # A deque: append/popleft are atomic under the GIL, no lock per event.
        self.queue: deque[FsEvent] = deque()
        self.queue_size = queue_size
        self._ignore = tuple(os.path.realpath(p) for p in (ignore or []))
        self._lock = threading.Lock()
        self._dropped = 0
        self.wakeup = threading.Event()
        self._overflow_base = _overflow.count
        self._limit_base = _watch_limit.count
        self._observer = Observer()
        self._observer.daemon = True

    @property
    def events_dropped(self) -> int:
        return self._dropped

    @property
    def queue_overflows(self) -> int:
        return _overflow.count - self._overflow_base

    @property
    def watch_limit_hits(self) -> int:
        return _watch_limit.count - self._limit_base

    def _ignored(self, path: str) -> bool:
        return any(path == p or path.startswith(p + os.sep) for p in self._ignore)

    def push(self, ev: FsEvent) -> None:
        """Queue ``ev`` unless ignored; never blocks, counts a drop when full."""
        if self._ignored(ev.path):
            return
        if len(self.queue) >= self.queue_size:
            with self._lock:
                self._dropped += 1
            return
        self.queue.append(ev)
        if not self.wakeup.is_set():  # a plain read: no lock per event in a storm
            self.wakeup.set()

    def start(self) -> None:
        _watch_limit.install()
        _batch_reads()
        _iterative_walks()
        handler = _Handler(self)
        for root in self.roots:
            self._observer.schedule(handler, root, recursive=True, event_filter=EVENT_FILTER)
        try:
            self._observer.start()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # watchdog 6 gives up on a whole tree at the first directory it cannot
            # watch (7 skips that directory): keep at least each root's top level.
            self._observer = Observer()
            for root in self.roots:
                self._observer.schedule(handler, root, recursive=False, event_filter=EVENT_FILTER)
            try:
                self._observer.start()
            except OSError:
                log.error("no inotify watch left: %s not watched at all", ", ".join(self.roots))
                self._started = False
                return
        self._started = True

    def stop(self) -> None:
        if not getattr(self, "_started", False):
            return
        self._observer.stop()
        self._observer.join(timeout=5)

    def drain(self, max_events: int = 100_000) -> list[FsEvent]:
        """Take up to ``max_events`` queued events without blocking."""
        out: list[FsEvent] = []
        q = self.queue
        while q and len(out) < max_events:
            out.append(q.popleft())
        return out
