"""One-second windows: raw events in, one ``tocsin.v1.Window`` of counts out.

Contract: ``WindowAccumulator`` is bookkeeping without threads: ``add(event)``
for every event of the window; ``probe_more(...)`` probes the files whose
writing finished since the last call (closed, or renamed into place) within the
window's budget and says how many show damage; ``close(...)`` probes the rest
within the budget and returns the filled Window (without ``seq``, which the
shipper assigns), then starts the next window. ``WindowLoop`` is the windowing
thread: it sleeps until the first event of a window (no polling while nothing
happens), then drains the watcher every ``poll_s`` in a long window, as events
come in a short one (an onset, which wants only a few events, or one after
damage), and probes files as they finish. It closes a window every
``window_s``, earlier once ``burst_events`` events arrived, once
``DAMAGE_CLOSE_FILES`` of its files showed damage, or once a probe showed some
and the window's activity lasted ``DAMAGE_CLOSE_S`` (see ``_should_close``);
then it asks the attributor for the top writers, lets the tripwire act, and
hands the window to ``sink``. Windows without file activity are handed over at
most every ``idle_every_s`` seconds (still with counts).

Spreading evidence counts only directories where something was destroyed
(a file deleted, renamed away, or whose type was destroyed) within the name
horizon: a backup that writes ``.gpg`` copies and a manifest into every folder
of its own tree deletes nothing there and stays quiet; ransomware that leaves a
note and replaces the originals does not. Reads (files closed without writing)
give ``files_read``/``read_dirs``; archives written give ``archives_created``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.agent import limits
from tocsin.agent.attribute import Attributor
from tocsin.agent.probe import SIGNATURES, ProbeResult, ProbeSummary, expected_type, probe_file
from tocsin.agent.watch import FileWatcher, FsEvent, walk
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.text import wire_text

log = logging.getLogger(__name__)

_EXT_RE = re.compile(r"^[a-z0-9]{1,12}$")
NEW_EXT_HORIZON_S = 600.0
NAME_HORIZON_S = 120.0
MAX_TRACKED = 4096
# A window in which a probe showed damage closes once its activity lasted this long,
# or at once when this many of its files show damage (the tripwire's threshold).
DAMAGE_CLOSE_S = 0.1
DAMAGE_CLOSE_FILES = 5
MAX_EXAMPLE_PATHS = 5
MAX_PATH_CHARS = 512
ARCHIVE_EXTENSIONS = frozenset({"zip", "7z", "rar", "tar", "tgz", "gz", "bz2", "xz", "zst", "cab"})


def extension(path: str) -> str:
    """Lower-case last extension of ``path`` ("" when none or not a plain token)."""
    name = os.path.basename(path)
    if "." not in name.lstrip("."):
        return ""
    ext = name.rsplit(".", 1)[1].lower()
    return ext if _EXT_RE.match(ext) else ""


def scan_tree(roots: list[str], max_files: int = limits.SCAN_MAX_FILES) -> tuple[set[str], int]:
    """(extensions present, directories seen) in ``roots``, walking at most ``max_files`` files."""
    seen: set[str] = set()
    n = 0
    dirs = 0
    for root in roots:
        for _dir, _subdirs, files in walk(root):  # os.walk recurses: not on a share
            dirs += 1
            for f in files:
                e = extension(f)
                if e:
                    seen.add(e)
            n += len(files)
            if n >= max_files:
                return seen, dirs
    return seen, dirs


def scan_extensions(roots: list[str], max_files: int = limits.SCAN_MAX_FILES) -> set[str]:
    """Extensions present in ``roots`` (walks at most ``max_files`` files)."""
    return scan_tree(roots, max_files)[0]


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


@dataclass
class WindowAccumulator:
    """Counts for the window being built, plus the short memories windows share."""

    known_extensions: set[str]
    canaries: frozenset[str] = frozenset()
    counts: dict[str, int] = field(default_factory=dict)
    created: dict[str, None] = field(default_factory=dict)
    modified: dict[str, None] = field(default_factory=dict)
    closed: dict[str, None] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    renamed: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    exts: set[str] = field(default_factory=set)
    canary_touches: int = 0
    canary_paths: set[str] = field(default_factory=set)
    own_reads: set[str] = field(default_factory=set)
    # Probes, done as files finish (``probe_more``) and at close: the files waiting,
    # the results (None: unreadable), the budget spent, and this window's probe
    # reads whose inotify echo has not arrived yet.
    to_probe: dict[str, None] = field(default_factory=dict)
    probed: dict[str, ProbeResult | None] = field(default_factory=dict)
    probe_files_done: int = 0
    probe_bytes_done: int = 0
    probe_echoes: set[str] = field(default_factory=set)
    probing: str = ""  # the file being probed right now
    # the canaries touched in the window last closed (for attribution)
    last_canary_paths: set[str] = field(default_factory=set)
    # memories across windows (bounded)
    new_ext_first_seen: dict[str, float] = field(default_factory=dict)
    new_ext_dirs: dict[str, set[str]] = field(default_factory=dict)
    name_dirs: dict[str, dict[str, float]] = field(default_factory=dict)
    prev_created: set[str] = field(default_factory=set)
    prev_deleted: set[str] = field(default_factory=set)
    twinned: set[str] = field(default_factory=set)
    destroyed_dirs: dict[str, float] = field(default_factory=dict)
    name_reported: dict[str, int] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    @property
    def file_activity(self) -> bool:
        return bool(self.created or self.modified or self.closed or self.deleted or self.renamed)

    def add(self, ev: FsEvent) -> None:
        if ev.kind == "read" and (ev.path in self.own_reads or ev.path in self.probe_echoes):
            self.own_reads.discard(ev.path)  # the probe's own read, echoed by inotify:
            self.probe_echoes.discard(ev.path)  # not an event of the watched tree
            return
        if ev.kind != "closed":
            self.counts[ev.kind] = self.counts.get(ev.kind, 0) + 1
        if ev.kind != "read" and (ev.path in self.canaries or ev.dest_path in self.canaries):
            self.canary_touches += 1
            self.canary_paths.add(ev.path)
        if ev.is_dir:
            return
        if ev.kind == "read":
            if len(self.read) < MAX_TRACKED:
                self.read.add(ev.path)
            return
        written = ev.dest_path if ev.kind == "moved" else ev.path
        self.dirs.add(os.path.dirname(ev.path))
        if ev.kind == "created":
            self.created[ev.path] = None
        elif ev.kind == "modified":
            self.modified[ev.path] = None
        elif ev.kind == "closed":
            self.closed[ev.path] = None
            self._finished(ev.path)
        elif ev.kind == "deleted":
            self.deleted.add(ev.path)
        elif ev.kind == "moved":
            self.renamed.add(ev.path)
            self.deleted.add(ev.path)
            self.created[ev.dest_path] = None
            self._finished(ev.dest_path)
            self.dirs.add(os.path.dirname(ev.dest_path))
        if ev.kind != "deleted":
            e = extension(written)
            if e:
                self.exts.add(e)

    def _mark_destroyed(self, now: float, destroyed_paths: list[str]) -> None:
        """Remember the directories where something was destroyed in this window."""
        for p in (*self.deleted, *destroyed_paths):
            d = os.path.dirname(p)
            if d in self.destroyed_dirs or len(self.destroyed_dirs) < MAX_TRACKED:
                self.destroyed_dirs[d] = now
        self.destroyed_dirs = {
            d: t for d, t in self.destroyed_dirs.items() if now - t < NAME_HORIZON_S
        }

    def _destroyed_count(self, dirs: set[str] | dict[str, float]) -> int:
        return sum(1 for d in dirs if d in self.destroyed_dirs)

    def _new_extensions(self, now: float) -> tuple[int, str, int]:
        for p in self.created:
            e = extension(p)
            # An extension that names a type the probe can check (.gz, .pdf...)
            # is not "new" evidence: if its content lies, the file counts as
            # type-destroyed instead. Log rotation spreading .gz stays quiet.
            if not e or e in self.known_extensions or expected_type(p):
                continue
            if e not in self.new_ext_first_seen and len(self.new_ext_first_seen) < MAX_TRACKED:
                self.new_ext_first_seen[e] = now
            dirs = self.new_ext_dirs.setdefault(e, set())
            if len(dirs) < MAX_TRACKED:
                dirs.add(os.path.dirname(p))
        for e, t in list(self.new_ext_first_seen.items()):
            if now - t > NEW_EXT_HORIZON_S:
                del self.new_ext_first_seen[e]
                self.new_ext_dirs.pop(e, None)
                self.known_extensions.add(e)
        fresh = self.exts & set(self.new_ext_first_seen)
        if not fresh:
            return 0, "", 0
        spread = {e: self._destroyed_count(self.new_ext_dirs.get(e, set())) for e in fresh}
        top = max(fresh, key=lambda e: spread[e])
        if spread[top] == 0:
            return len(fresh), "", 0
        return len(fresh), top, spread[top]

    def _repeated_name(self, now: float) -> tuple[str, int]:
        for p in self.created:
            name = os.path.basename(p)
            if name not in self.name_dirs and len(self.name_dirs) >= MAX_TRACKED:
                continue
            self.name_dirs.setdefault(name, {})[os.path.dirname(p)] = now
        for name in list(self.name_dirs):
            dirs = {d: t for d, t in self.name_dirs[name].items() if now - t < NAME_HORIZON_S}
            if dirs:
                self.name_dirs[name] = dirs
            else:
                del self.name_dirs[name]
        self.name_reported = {n: c for n, c in self.name_reported.items() if n in self.name_dirs}
        best, best_n = "", 0
        for name, dirs in self.name_dirs.items():
            n = self._destroyed_count(dirs)
            if n > best_n and n > self.name_reported.get(name, 0):
                best, best_n = name, n
        if best_n < 2:
            return "", 0
        self.name_reported[best] = best_n
        return best, best_n

    def _twins(self) -> int:
        created = set(self.created) | self.prev_created
        deleted = self.deleted | self.prev_deleted
        # Index every created name by each of its "stem." prefixes: linear, not
        # deleted x created (a storm of 10,000 files made that quadratic).
        stems: set[str] = set()
        for c in created:
            if expected_type(c) in SIGNATURES:
                continue  # a.txt -> a.txt.gz: a real container of its own
            base = c.rfind(os.sep) + 1
            pos = c.find(".", base + 1)
            while pos != -1:
                stems.add(c[:pos])
                pos = c.find(".", pos + 1)
        n = 0
        for d in deleted:
            if d not in self.twinned and d in stems:
                self.twinned.add(d)
                n += 1
        self.prev_created = set(self.created)
        self.prev_deleted = set(self.deleted)
        self.twinned &= deleted
        return n

    def _finished(self, path: str) -> None:
        """``path`` was closed after writing or renamed into place: (re)probe it.

        Only such files are probed. A file still open for writing waits for the
        window in which it is closed: read mid-write (on tmpfs a reader can see a
        page before its bytes land), an honest new document looks destroyed.
        """
        self.probed.pop(path, None)  # newer content than what was probed
        self.to_probe[path] = None

    def probe_more(self, max_files: int, max_bytes: int, share: float = 1.0) -> int:
        """Probe finished files, newest first, within ``share`` of the window's budget.

        The window thread passes the share of the window elapsed (at least a
        quarter), so a burst of benign files early in a window cannot spend the
        whole budget before an attack starts later in it; newest first, so what
        is probed is what is happening now. Returns how many of the files probed
        show destruction (type destroyed or encoded random).
        """
        damaged = 0
        files_allowed = max(1, round(max_files * min(share, 1.0)))
        while self.to_probe:
            if self.probe_files_done >= files_allowed or self.probe_bytes_done >= max_bytes:
                break
            path, _ = self.to_probe.popitem()  # the newest
            if path in self.deleted:
                continue
            self.probing = path  # named by the watchdog if the probe never returns
            r = probe_file(path)
            self.probing = ""
            self.probe_echoes.add(path)
            self.probed[path] = r
            if r is not None:  # a vanished or unreadable file costs no budget
                self.probe_files_done += 1
                self.probe_bytes_done += r.bytes_probed
                damaged += r.type_destroyed or r.encoded_random
        return damaged

    def _probe_summary(self) -> ProbeSummary:
        summary = ProbeSummary()
        for path, r in self.probed.items():
            if path in self.deleted:
                continue  # a temporary file: gone before the window ended
            if r is None:
                summary.files_skipped += 1
            else:
                summary.add(r)
        summary.files_unprobed = sum(1 for p in self.to_probe if p not in self.deleted)
        return summary

    def close(
        self,
        start: float,
        end: float,
        max_probe_files: int = limits.PROBE_MAX_FILES_PER_WINDOW,
        max_probe_bytes: int = limits.PROBE_MAX_BYTES_PER_WINDOW,
    ) -> tuple[pb.Window, list[str]]:
        """The finished window (counts and probes) and its type-destroyed paths; resets.

        The window's state is reset even when building the message fails: one bad
        window never poisons the next.
        """
        try:
            return self._close(start, end, max_probe_files, max_probe_bytes)
        finally:
            self._reset()

    def _close(
        self, start: float, end: float, max_probe_files: int, max_probe_bytes: int
    ) -> tuple[pb.Window, list[str]]:
        self.probe_more(max_probe_files, max_probe_bytes)
        probes = self._probe_summary()
        self._mark_destroyed(end, probes.destroyed_paths)
        # Echoes of the previous window's probes have arrived by now; keep this window's.
        self.own_reads, self.probe_echoes = self.probe_echoes, set()
        n_new, top_ext, top_dirs = self._new_extensions(end)
        rep_name, rep_dirs = self._repeated_name(end)
        w = pb.Window(
            start=_ts(start),
            end=_ts(end),
            events_created=self.counts.get("created", 0),
            events_modified=self.counts.get("modified", 0),
            events_deleted=self.counts.get("deleted", 0),
            events_moved=self.counts.get("moved", 0),
            files_created=len(self.created),
            files_modified=len((set(self.modified) | set(self.closed)) - set(self.created)),
            files_deleted=len(self.deleted - self.renamed),
            files_renamed=len(self.renamed),
            dirs_touched=len(self.dirs),
            extensions_touched=len(self.exts),
            new_extensions=n_new,
            top_new_extension=top_ext,
            top_new_extension_dirs=top_dirs,
            files_probed=probes.files_probed,
            bytes_probed=probes.bytes_probed,
            files_high_entropy=probes.files_high_entropy,
            files_type_destroyed=probes.files_type_destroyed,
            mean_entropy=probes.mean_entropy,
            files_incompressible=probes.files_incompressible,
            files_encoded_random=probes.files_encoded_random,
            repeated_name=wire_text(rep_name)[:MAX_PATH_CHARS],
            repeated_name_dirs=rep_dirs,
            encrypted_twins=self._twins(),
            canary_touches=self.canary_touches,
            files_read=len(self.read),
            read_dirs=len({os.path.dirname(p) for p in self.read}),
            archives_created=sum(
                1
                for p in {*self.created, *self.closed}
                if extension(p) in ARCHIVE_EXTENSIONS and p not in self.deleted
            ),
            files_unprobed=probes.files_unprobed,
        )
        examples = probes.destroyed_paths[:MAX_EXAMPLE_PATHS]
        for p in list(self.created) + list(self.closed):
            if len(examples) >= MAX_EXAMPLE_PATHS:
                break
            if p not in examples:
                examples.append(p)
        w.example_paths.extend(wire_text(p)[:MAX_PATH_CHARS] for p in examples)
        return w, probes.destroyed_paths

    def _reset(self) -> None:
        self.to_probe, self.probed = {}, {}
        self.probe_files_done = self.probe_bytes_done = 0
        self.counts = {}
        self.created, self.modified, self.closed = {}, {}, {}
        self.deleted, self.renamed, self.dirs, self.exts = set(), set(), set(), set()
        self.read = set()
        self.canary_touches = 0
        self.last_canary_paths, self.canary_paths = self.canary_paths, set()


def net_bytes_sent() -> int:
    return int(psutil.net_io_counters().bytes_sent)


class WindowLoop:
    """The windowing thread (see module contract)."""

    def __init__(
        self,
        watcher: FileWatcher,
        attributor: Attributor | None,
        sink: Callable[[pb.Window], None],
        window_s: float = 1.0,
        burst_events: int = limits.BURST_EVENTS,
        idle_every_s: float = 10.0,
        max_probe_files: int = limits.PROBE_MAX_FILES_PER_WINDOW,
        max_probe_bytes: int = limits.PROBE_MAX_BYTES_PER_WINDOW,
        canaries: frozenset[str] = frozenset(),
        known_extensions: set[str] | None = None,
        on_window: Callable[[pb.Window, list[pb.ProcessSample]], None] | None = None,
        spool_dropped: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.time,
        net_bytes: Callable[[], int] = net_bytes_sent,
        poll_s: float = 0.2,
    ) -> None:
        self.watcher = watcher
        self.attributor = attributor
        self.sink = sink
        self.window_s = window_s
        self.burst_events = burst_events
        self.idle_every_s = idle_every_s
        self.max_probe_files = max_probe_files
        self.max_probe_bytes = max_probe_bytes
        self.on_window = on_window
        self._spool_dropped = spool_dropped
        self._clock = clock
        self._net = net_bytes
        self._poll_s = poll_s
        if known_extensions is None:
            known_extensions = scan_extensions(watcher.roots)
        self.acc = WindowAccumulator(known_extensions, canaries=canaries)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tocsin-window", daemon=True)
        self.windows_closed = 0
        self.damage_last = False  # the last window showed destruction
        # When the thread last went round its loop: it never sleeps longer than a
        # window, so a stale mark means a call that hangs (see ``stalled_s``).
        self.progress_at = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.watcher.wakeup.set()
        self._thread.join(timeout=10)

    def stalled_s(self) -> float:
        """Seconds since the thread last made progress, beyond the window it may sleep."""
        return max(time.monotonic() - self.progress_at - self.window_s, 0.0)

    def _run(self) -> None:
        start = self._clock()
        last_sent = 0.0
        dropped_base = self.watcher.events_dropped
        overflow_base = self.watcher.queue_overflows
        limit_base = self.watcher.watch_limit_hits
        fan_base = self.attributor.overflows if self.attributor else 0
        net_base = self._safe_net()
        while not self._stop.is_set():
            self.progress_at = time.monotonic()
            deadline = self.progress_at + self.window_s
            wakeup = self.watcher.wakeup
            first_event: float | None = None
            damaged = 0
            # An onset (a few events) or a window after damage is short anyway;
            # any other may last a second.
            onset = self.burst_events < limits.BURST_EVENTS
            long_window = not onset and not self.damage_last
            while not self._stop.is_set():
                wakeup.clear()  # before draining: an event queued after it sets it again
                for ev in self.watcher.drain(self.burst_events):
                    self.acc.add(ev)
                now = self.progress_at = time.monotonic()
                left = deadline - now
                if self.acc.events and first_event is None:
                    first_event = now
                if first_event is not None:
                    # Probe files as they finish, a long window within the share of
                    # its budget its elapsed time allows (see probe_more).
                    share = max((self.window_s - left) / self.window_s, 0.25)
                    damaged += self.acc.probe_more(
                        self.max_probe_files, self.max_probe_bytes, share if long_window else 1.0
                    )
                if self._should_close(damaged, first_event, now, left, onset):
                    break
                if self.acc.events and long_window:
                    self._stop.wait(min(self._poll_s, left))  # a burst under way: batch it
                else:
                    # Nothing yet: sleep until the first event. A short window: wake
                    # with each batch of events, to close at the one that ends it, or
                    # when its damage has lasted long enough.
                    if damaged and first_event is not None:
                        left = min(left, first_event + DAMAGE_CLOSE_S - now)
                    wakeup.wait(max(left, 0.0))
            for ev in self.watcher.drain(self.burst_events):
                self.acc.add(ev)
            end = self._clock()
            try:
                active = self.acc.file_activity or bool(self.acc.read)
                w, destroyed = self.acc.close(
                    start, end, self.max_probe_files, self.max_probe_bytes
                )
                canaries = self.acc.last_canary_paths
                writers = self.attributor.collect(destroyed, canaries) if self.attributor else []
                dropped = self.watcher.events_dropped
                overflows = self.watcher.queue_overflows
                fan = self.attributor.overflows if self.attributor else 0
                net = self._safe_net()
                limit_hits = self.watcher.watch_limit_hits
                w.watch_limit_hits = limit_hits - limit_base
                limit_base = limit_hits
                w.events_dropped = dropped - dropped_base
                w.queue_overflows = (overflows - overflow_base) + (fan - fan_base)
                w.net_bytes_out = max(net - net_base, 0)
                dropped_base, overflow_base, fan_base, net_base = dropped, overflows, fan, net
                w.top_writers.extend(writers)
                w.bytes_written = sum(s.bytes_written for s in writers)
                w.bytes_read = sum(s.bytes_read for s in writers)
                # Only the agent's own drill key makes a drill (tocsin.agent.drill).
                w.drill = bool(
                    writers and self.attributor and self.attributor.is_drill(writers[0].pid)
                )
                self.damage_last = bool(w.files_type_destroyed or w.files_encoded_random)
                if self.on_window is not None:
                    self.on_window(w, writers)
                noisy = (
                    active
                    or w.events_dropped
                    or w.queue_overflows
                    or w.canary_touches
                    or w.watch_limit_hits
                )
                if noisy or end - last_sent >= self.idle_every_s:
                    w.spool_dropped = self._spool_dropped()
                    self.sink(w)
                    last_sent = end
                self.windows_closed += 1
            except Exception:
                log.exception("window failed; continuing with the next one")
            start = end

    def _should_close(
        self, damaged: int, first_event: float | None, now: float, left: float, onset: bool
    ) -> bool:
        """Whether the window being filled closes now.

        At its end; at ``burst_events`` events, except an onset that has shown some
        damage: it waits for enough to be acted on. The first window with damage
        closes once ``DAMAGE_CLOSE_FILES`` files show it (what the tripwire acts on:
        it fires at this window's close, not a window later); windows after it last
        ``runtime.FAST_WINDOW_S`` anyway. Any window closes once the activity showed some
        damage and lasted ``DAMAGE_CLOSE_S`` (an attack that starts inside a busy
        window is not held back for the rest of it; workers that start together
        still share the window).
        """
        if left <= 0 or (damaged >= DAMAGE_CLOSE_FILES and not self.damage_last):
            return True
        lasted = first_event is not None and now - first_event >= DAMAGE_CLOSE_S
        if damaged and lasted:
            return True
        return self.acc.events >= self.burst_events and not (onset and damaged)

    def _safe_net(self) -> int:
        try:
            return self._net()
        except (OSError, psutil.Error):
            return 0
