"""One-second windows: raw events in, one ``tocsin.v1.Window`` of counts out.

Contract: ``WindowAccumulator`` is bookkeeping without threads: ``add(event)``
for every event of the window; ``probe_more(...)`` probes the files whose
writing finished since the last call (closed, or renamed into place) within the
window's budget and says how many it showed ruined (``Ruined``: a type destroyed,
encoded random text, or a random copy beside an original of the same stem that
was deleted, the encrypt-to-copy of ``a.docx`` into ``a.docx.X``, ``a.X`` or
``a.docx.X.b64``), handed out by ``take_ruined()``; ``close(...)`` probes the rest
within the budget and returns the filled Window (without ``seq``, which the
shipper assigns), then starts the next window. ``WindowLoop`` is the windowing
thread: it sleeps until the first event of a window (no polling while nothing
happens), then drains the watcher every ``poll_s`` in a long window, as events
come in a short one (an onset, which wants only a few events, or one after
damage), and probes files as they finish. Each ruined file goes to
``on_ruined`` with its writer (fanotify) as soon as both are known: the tripwire
acts per file. It closes a window every ``window_s``, earlier once
``burst_events`` events arrived, once ``DAMAGE_CLOSE_FILES`` of its files showed
damage, ``DAMAGE_CLOSE_S`` after a probe first showed some (see
``_should_close``), or at once when ``on_ruined`` says the tripwire acted;
then it asks the attributor for the top writers (the writer named for each
file shown ruined in the window among them, even if its writes were read in an
earlier one: the window the tripwire marks names the tree it counted), lets the
tripwire mark the window (and act on canaries), and hands the window to ``sink``. Windows without
file activity are handed over at most every ``idle_every_s`` seconds (still
with counts).

Spreading evidence counts only directories where something was destroyed
(a file deleted, renamed away, or whose type was destroyed) within the name
horizon: a backup that writes ``.gpg`` copies and a manifest into every folder
of its own tree deletes nothing there and stays quiet; ransomware that leaves a
note and replaces the originals does not. A repeated name does not count a
directory created within the horizon unless a file was ruined there: a checkout
writing ``__init__.py`` through a temporary name into each new directory is not
a ransom note, nor is its ``.py`` spreading. Reads (files closed without writing)
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
from typing import Literal

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
# A window in which a probe showed damage closes this long after the first, or at
# once when this many of its files show damage (what the collector confirms on in
# one window, JudgeConfig.window_confirm; the tripwire acts per file, not on windows).
DAMAGE_CLOSE_S = 0.1
DAMAGE_CLOSE_FILES = 3
MAX_EXAMPLE_PATHS = 5
# A ruined file waits this long for fanotify to name its writer, looked up again
# every WRITER_RETRY_S.
WRITER_WAIT_S = 2.0
WRITER_RETRY_S = 0.02
MAX_PATH_CHARS = 512
ARCHIVE_EXTENSIONS = frozenset({"zip", "7z", "rar", "tar", "tgz", "gz", "bz2", "xz", "zst", "cab"})

RuinKind = Literal["type-destroyed", "encoded-random", "encrypted-copy"]


@dataclass(frozen=True)
class Ruined:
    """One file the probes showed ruined: its type destroyed, turned into encoded random
    text, or a random copy that replaced an original of the same stem."""

    path: str
    kind: RuinKind


def original_keys(path: str) -> tuple[str, ...]:
    """What a copy of the deleted ``path`` may be named after: the path, and its stem."""
    if "." not in os.path.basename(path).lstrip("."):
        return (path,)
    return (path, path[: path.rfind(".")])


def stem_prefixes(path: str) -> list[str]:
    """Every "stem." prefix of the name: ``/d/a.docx.X`` -> ``/d/a``, ``/d/a.docx``."""
    out = []
    base = path.rfind(os.sep) + 1
    pos = path.find(".", base + 1)
    while pos != -1:
        out.append(path[:pos])
        pos = path.find(".", pos + 1)
    return out


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
    # Possible copies of an original just deleted have a file budget of their own.
    copy_probes_done: int = 0
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
    # Directories created (this window; within the name horizon) and those where a
    # file was ruined within it: a name repeated only in new directories where
    # nothing was ruined is a checkout's, not a ransom note, nor is its ``.py`` spreading.
    dirs_created: set[str] = field(default_factory=set)
    new_dirs: dict[str, float] = field(default_factory=dict)
    ruined_dirs: dict[str, float] = field(default_factory=dict)
    name_reported: dict[str, int] = field(default_factory=dict)
    # Encrypt-to-copy seen through the probes (this window and the last): random
    # copies by each "stem." prefix of their name, originals deleted by their path
    # and their stem, originals already replaced, files already counted as ruined.
    copies: dict[str, ProbeResult] = field(default_factory=dict)
    prev_copies: dict[str, ProbeResult] = field(default_factory=dict)
    originals: dict[str, str] = field(default_factory=dict)
    prev_originals: dict[str, str] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)
    prev_replaced: set[str] = field(default_factory=set)
    ruined_paths: set[str] = field(default_factory=set)
    prev_ruined_paths: set[str] = field(default_factory=set)
    fresh_deleted: list[str] = field(default_factory=list)
    # Files waiting for their probe by "stem." prefix, and those to probe first (a
    # same-stem original was deleted: a copy that may have replaced it).
    unprobed_stems: dict[str, str] = field(default_factory=dict)
    urgent: dict[str, None] = field(default_factory=dict)
    # Ruined files not yet taken (``take_ruined``), and how many the last window had.
    ruined: list[Ruined] = field(default_factory=list)
    ruined_last: int = 0

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
            if ev.kind in ("created", "moved") and len(self.dirs_created) < MAX_TRACKED:
                self.dirs_created.add(ev.dest_path if ev.kind == "moved" else ev.path)
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
            self._gone(ev.path)
        elif ev.kind == "moved":
            self.renamed.add(ev.path)
            self.deleted.add(ev.path)
            self._gone(ev.path)
            self.created[ev.dest_path] = None
            self._finished(ev.dest_path)
            self.dirs.add(os.path.dirname(ev.dest_path))
        if ev.kind != "deleted":
            e = extension(written)
            if e:
                self.exts.add(e)

    def _mark_destroyed(self, now: float, destroyed_paths: list[str]) -> None:
        """Remember the directories where something was destroyed in this window, those
        where a file was ruined, and those created."""
        marks = (
            (self.destroyed_dirs, (os.path.dirname(p) for p in (*self.deleted, *destroyed_paths))),
            (self.ruined_dirs, (os.path.dirname(p) for p in self.ruined_paths)),
            (self.new_dirs, self.dirs_created),
        )
        for memory, dirs in marks:
            for d in dirs:
                if d in memory or len(memory) < MAX_TRACKED:
                    memory[d] = now
            for d in [d for d, t in memory.items() if now - t >= NAME_HORIZON_S]:
                del memory[d]
        self.dirs_created = set()

    def _spread_dirs(self, dirs: set[str] | dict[str, float]) -> int:
        """Directories that count for a spreading name or extension: something destroyed
        there and, if the directory is new, a file ruined there."""
        return sum(
            1
            for d in dirs
            if d in self.destroyed_dirs and (d not in self.new_dirs or d in self.ruined_dirs)
        )

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
        spread = {e: self._spread_dirs(self.new_ext_dirs.get(e, set())) for e in fresh}
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
            n = self._spread_dirs(dirs)
            if n > best_n and n > self.name_reported.get(name, 0):
                best, best_n = name, n
        if best_n < 2:
            return "", 0
        self.name_reported[best] = best_n
        return best, best_n

    def _twins(self) -> int:
        """Originals deleted beside a ``name.ext.X`` or ``name.X`` file (X promising no
        type), or replaced by a random copy the probes saw, counted once each."""
        created = set(self.created) | self.prev_created
        deleted = self.deleted | self.prev_deleted
        # Index every created name by each of its "stem." prefixes: linear, not
        # deleted x created (a storm of 10,000 files made that quadratic).
        stems: set[str] = set()
        unknown_stems: set[str] = set()  # of names whose extension promises no type
        for c in created:
            if expected_type(c) in SIGNATURES:
                continue  # a.txt -> a.txt.gz: a real container of its own
            prefixes = stem_prefixes(c)
            stems.update(prefixes)
            if prefixes and not expected_type(c):
                unknown_stems.add(prefixes[0])
        n = 0
        for d in deleted:
            keys = original_keys(d)
            twin = d in stems or (len(keys) > 1 and keys[1] in unknown_stems)
            if d not in self.twinned and (twin or d in self.replaced):
                self.twinned.add(d)
                n += 1
        self.prev_created = set(self.created)
        self.prev_deleted = set(self.deleted)
        self.twinned &= deleted
        return n

    def _gone(self, path: str) -> None:
        """``path`` was deleted or renamed away: an original, unless it was created in
        this window or the last (a temporary file). Indexed by its path (``a.docx`` ->
        ``a.docx.X``) and its stem (``a.docx`` -> ``a.X``); a same-stem file waiting
        for its probe is probed first."""
        if path in self.created or path in self.prev_created:
            return
        if len(self.fresh_deleted) >= MAX_TRACKED or len(self.originals) >= MAX_TRACKED:
            return
        self.fresh_deleted.append(path)
        for key in original_keys(path):
            self.originals[key] = path
            waiting = self.unprobed_stems.get(key)
            if waiting in self.to_probe:
                self.urgent[waiting] = None

    def _ruin(self, path: str, kind: RuinKind) -> int:
        """Count ``path`` as ruined (once over this window and the last): 1 if new."""
        if path in self.ruined_paths or path in self.prev_ruined_paths:
            return 0
        if len(self.ruined_paths) < MAX_TRACKED:
            self.ruined_paths.add(path)
            self.ruined.append(Ruined(path, kind))
        return 1

    def _replace(self, original: str, copy: ProbeResult) -> int:
        """``copy`` replaced ``original`` unless it still carries the original's type."""
        if original == copy.path or original in self.replaced or original in self.prev_replaced:
            return 0
        if copy.carries(expected_type(original)):
            return 0  # a.docx renamed a.docx.bak: the same document
        if len(self.replaced) < MAX_TRACKED:
            self.replaced.add(original)
        return self._ruin(copy.path, "encrypted-copy")

    def _copy_probed(self, r: ProbeResult) -> int:
        """A random file whose own type (if any) it does not carry: a copy of an original
        deleted already, or one to match against the deletions to come."""
        for key in stem_prefixes(r.path):
            original = self.originals.get(key) or self.prev_originals.get(key)
            if original is not None and self._replace(original, r):
                return 1
            if len(self.copies) < MAX_TRACKED:
                self.copies[key] = r
        return 0

    def _originals_deleted(self) -> int:
        """Match the originals deleted since the last call against the random copies
        probed already (see ``_gone``)."""
        n = 0
        for path in self.fresh_deleted:
            copy = next(
                (
                    c
                    for k in original_keys(path)
                    if (c := self.copies.get(k) or self.prev_copies.get(k))
                ),
                None,
            )
            if copy is not None:
                n += self._replace(path, copy)
        self.fresh_deleted = []
        return n

    def take_ruined(self) -> list[Ruined]:
        """The files shown ruined since the last call (for the tripwire, per file)."""
        out, self.ruined = self.ruined, []
        return out

    def _finished(self, path: str) -> None:
        """``path`` was closed after writing or renamed into place: (re)probe it.

        Only such files are probed. A file still open for writing waits for the
        window in which it is closed: read mid-write (on tmpfs a reader can see a
        page before its bytes land), an honest new document looks destroyed.
        """
        self.probed.pop(path, None)  # newer content than what was probed
        self.to_probe[path] = None
        for key in stem_prefixes(path):
            if len(self.unprobed_stems) < MAX_TRACKED:
                self.unprobed_stems[key] = path
            if key in self.originals or key in self.prev_originals:
                self.urgent[path] = None  # renamed away, then written: probe it first

    def probe_more(self, max_files: int, max_bytes: int, share: float = 1.0) -> int:
        """Probe finished files, newest first, within ``share`` of the window's budget.

        The window thread passes the share of the window elapsed (at least a
        quarter), so a burst of benign files early in a window cannot spend the
        whole budget before an attack starts later in it; newest first, so what
        is probed is what is happening now. A file that may be the copy of an
        original just deleted goes first, within a file budget of its own:
        encrypt-to-copy shows in the copy's probe. Returns how many files it newly showed
        ruined (type destroyed, encoded random, or a random copy replacing an
        original deleted: see ``Ruined``); ``take_ruined`` hands them out.
        """
        damaged = 0
        files_allowed = max(1, round(max_files * min(share, 1.0)))
        while self.probe_bytes_done < max_bytes:
            path, copy = self._next_to_probe(files_allowed, max_files)
            if path is None:
                break
            if path in self.deleted:
                continue
            self.probing = path  # named by the watchdog if the probe never returns
            r = probe_file(path)
            self.probing = ""
            self.probe_echoes.add(path)
            self.probed[path] = r
            if r is None:  # a vanished or unreadable file costs no budget
                continue
            if copy:
                self.copy_probes_done += 1
            else:
                self.probe_files_done += 1
            self.probe_bytes_done += r.bytes_probed
            if r.type_destroyed or r.encoded_random:
                damaged += self._ruin(
                    path, "type-destroyed" if r.type_destroyed else "encoded-random"
                )
            if r.random and not r.carries(expected_type(path)):
                damaged += self._copy_probed(r)
        return damaged + self._originals_deleted()

    def _next_to_probe(self, files_allowed: int, max_files: int) -> tuple[str | None, bool]:
        """(path, whether it is a possible copy): a possible copy first, within a budget
        of ``max_files`` of their own (a burst of new files, such as a ransom note
        written in every directory before the copies begin, cannot use up the probes
        that show encrypt-to-copy); else the newest file within ``files_allowed``."""
        while self.urgent and self.copy_probes_done < max_files:
            path, _ = self.urgent.popitem()
            if path in self.to_probe:
                del self.to_probe[path]
                return path, True
        if not self.to_probe or self.probe_files_done >= files_allowed:
            return None, False
        return self.to_probe.popitem()[0], False

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
        copies = [p for p in self.ruined_paths if p not in probes.destroyed_paths]
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
        examples = [*probes.destroyed_paths, *copies][:MAX_EXAMPLE_PATHS]
        for p in list(self.created) + list(self.closed):
            if len(examples) >= MAX_EXAMPLE_PATHS:
                break
            if p not in examples:
                examples.append(p)
        w.example_paths.extend(wire_text(p)[:MAX_PATH_CHARS] for p in examples)
        return w, probes.destroyed_paths

    def _reset(self) -> None:
        self.to_probe, self.probed = {}, {}
        self.unprobed_stems, self.urgent = {}, {}
        self.probe_files_done = self.probe_bytes_done = self.copy_probes_done = 0
        self.counts = {}
        self.created, self.modified, self.closed = {}, {}, {}
        self.deleted, self.renamed, self.dirs, self.exts = set(), set(), set(), set()
        self.read = set()
        self.canary_touches = 0
        self.last_canary_paths, self.canary_paths = self.canary_paths, set()
        self.ruined_last = len(self.ruined_paths)
        self.prev_copies, self.copies = self.copies, {}
        self.prev_originals, self.originals = self.originals, {}
        self.prev_replaced, self.replaced = self.replaced, set()
        self.prev_ruined_paths, self.ruined_paths = self.ruined_paths, set()


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
        on_ruined: Callable[[pb.ProcessSample, Ruined, float], bool] | None = None,
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
        self.on_ruined = on_ruined
        # Ruined files whose writer fanotify has not named yet: (first seen, file); and
        # those of the window being filled whose writer it named, by writer.
        self._unattributed: list[tuple[float, Ruined]] = []
        self._ruined_by: dict[int, set[str]] = {}
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
        self.damage_last = False  # the last window showed a file ruined
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
            first_damage: float | None = None
            damaged = 0
            fired = False  # the tripwire acted on a file: the window closes to say so
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
                    fired = self._report_ruined() or fired
                    if damaged and first_damage is None:
                        first_damage = now
                if fired or self._should_close(damaged, first_damage, now, left, onset):
                    break
                if self.acc.events and long_window and not damaged:
                    self._stop.wait(min(self._poll_s, left))  # a burst under way: batch it
                else:
                    # Nothing yet: sleep until the first event. A short window, or one
                    # that showed damage: wake with each batch of events, to close at
                    # the one that ends it, or when its damage has lasted long enough.
                    if first_damage is not None:
                        left = min(left, first_damage + DAMAGE_CLOSE_S - now)
                    if self._unattributed:
                        left = min(left, WRITER_RETRY_S)
                    wakeup.wait(max(left, 0.0))
            for ev in self.watcher.drain(self.burst_events):
                self.acc.add(ev)
            end = self._clock()
            try:
                active = self.acc.file_activity or bool(self.acc.read)
                w, destroyed = self.acc.close(
                    start, end, self.max_probe_files, self.max_probe_bytes
                )
                self._report_ruined()
                canaries = self.acc.last_canary_paths
                ruined_by, self._ruined_by = self._ruined_by, {}
                writers = (
                    self.attributor.collect(destroyed, canaries, ruined_by)
                    if self.attributor
                    else []
                )
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
                self.damage_last = self.acc.ruined_last > 0
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
        self, damaged: int, first_damage: float | None, now: float, left: float, onset: bool
    ) -> bool:
        """Whether the window being filled closes now.

        At its end; at ``burst_events`` events, except an onset that has shown some
        damage: it waits for enough to be acted on. The first window with damage
        closes once ``DAMAGE_CLOSE_FILES`` files show it (what the collector confirms
        on in one window); windows after it last
        ``runtime.FAST_WINDOW_S`` anyway. Any window closes ``DAMAGE_CLOSE_S`` after
        its first damage (an attack that starts inside a busy window is not held
        back for the rest of it, nor closed at its first file, which the collector
        could not confirm alone; workers that start together still share the window).
        """
        if left <= 0 or (damaged >= DAMAGE_CLOSE_FILES and not self.damage_last):
            return True
        if first_damage is not None and now - first_damage >= DAMAGE_CLOSE_S:
            return True
        return self.acc.events >= self.burst_events and not (onset and damaged)

    def _report_ruined(self) -> bool:
        """Each ruined file to ``on_ruined`` with its writer, as soon as fanotify named it.

        The tripwire acts on this, file by file, not at the window's close; True
        when it acted (the window then closes at once, so that the collector hears
        of it now). A file whose writer is not known yet (fanotify's event not read
        yet) is tried again for ``WRITER_WAIT_S``; without fanotify no writer is
        ever named.
        """
        ruined = self.acc.take_ruined()
        if self.on_ruined is None or self.attributor is None:
            return False
        now = self._clock()
        pending = [*self._unattributed, *((now, r) for r in ruined)]
        self._unattributed = []
        acted = False
        for since, r in pending:
            writer = self.attributor.writer_of(r.path)
            if writer is not None:
                if len(self._ruined_by) < MAX_TRACKED:
                    self._ruined_by.setdefault(writer.pid, set()).add(r.path)
                acted = self.on_ruined(writer, r, now) or acted
            elif now - since < WRITER_WAIT_S and len(self._unattributed) < MAX_TRACKED:
                self._unattributed.append((since, r))
        return acted

    def _safe_net(self) -> int:
        try:
            return self._net()
        except (OSError, psutil.Error):
            return 0
