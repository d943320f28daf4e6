"""The judge: windows and their anomaly scores in, incident decisions out.

Pure and deterministic: ``Judge.observe(host_id, window, score)`` looks only at
the window, its score and what earlier windows of the same host left behind,
and reads time only from the windows' own timestamps, so a replayed recording
gets the same decisions as the live stream did.

Rules (``JudgeConfig`` holds the numbers):

- Confirmers are deterministic evidence of destruction: known types destroyed,
  files turned into encoded random text, encrypted twins, one new extension
  spreading across directories, one note name in many directories. Each one
  fires on a single window (>= 3) or on its sum over a horizon (the last 10
  windows, 60 s, 1 h of window time, per host), so that a slow attack or many
  small processes still add up. The same horizons run per process tree (a
  window's counts belong to its top writer's tree): the last 10 windows *of
  the tree* reach back past the quiet windows of a paced attacker.
- Strong evidence: one window in which most probed files were destroyed (at
  least ``strong_window`` of them) or most new files were encrypted twins, the
  destructive counts summed over 60 s or 1 h passing a high bar (per host), or
  a lower one for one process tree over the hour when most of its windows
  destroyed something (destruction concentrated in one tree), or two
  different confirmers firing at once.
- Severity: ``critical`` = (anomalous score or strong evidence) and a
  confirmer, or a canary touched, or the agent's tripwire fired; ``warning`` =
  an anomalous score, a confirmer alone, many dropped events, blindness (a
  kernel queue overflow, a directory left unwatched), or exfiltration staging
  (one window reading many files across many directories). Entropy alone
  is never a confirmer: a backup is anomalous and gets a warning at most.
- One incident per (host, process tree root); a window in which a tree with an
  open incident wrote belongs to that incident, and so does a window critical
  only by what the host's recent windows add up to (no counted kind over that
  window alone, no tripwire, no canary): another writer in it is not a culprit.
  Its first active window opens it (decision ``open``, to be posted); a later
  warning -> critical is an ``escalate`` (posted again); other active windows
  are ``update`` (stored, not posted). A window within ``hysteresis`` below
  the threshold keeps an open incident alive. After ``quiet_s`` of window time
  with no active window the incident is ``close``d.
- ``clock_skew_s`` (non-zero when ingest re-dated the window because the
  agent's clock was off by more than the allowed skew) adds the reason
  ``clock_skew`` to an active window; it never makes a window active.

The horizons are memory; ``resync(host_id, windows)`` rebuilds a host's from
windows already judged (after a restart, or after a judgement the database
lost) and takes the host's open incidents back from the book, so a paced
attack that straddles a restart still adds up.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from tocsin.collector.incidents import IncidentBook, IncidentRecord, MemoryIncidentBook
from tocsin.collector.reasons import COUNTED, Reason, parse_all, texts
from tocsin.collector.routine import RoutineJobs, RoutineRun
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.text import printable

Severity = Literal["warning", "critical"]
DecisionKind = Literal["open", "escalate", "named", "update", "close"]

# Counted evidence kinds summed over horizons: the window's field, the reason's kind.
_COUNTED = tuple(
    zip(("files_type_destroyed", "files_encoded_random", "encrypted_twins"), COUNTED, strict=True)
)


@dataclass(frozen=True)
class JudgeConfig:
    window_confirm: int = 3
    # Sums over (last N windows, short_s, long_s) at which a counted kind confirms.
    horizon_windows: int = 10
    short_s: float = 60.0
    long_s: float = 3600.0
    horizon_confirm: tuple[int, int, int] = (6, 10, 30)
    # Destructive sums (all counted kinds) that make strong evidence.
    strong_short: int = 20
    strong_long: int = 100
    # Destructive sum of one process tree over ``long_s`` that makes strong evidence,
    # when it averages at least ``strong_tree_density`` per window of that tree (a
    # busy benign tree meeting a corrupt file now and then never does).
    strong_tree_long: int = 30
    strong_tree_density: float = 0.5
    # One window is strong evidence on its own when at least this many probed files
    # were destroyed (type lost or turned into encoded random text) and they are at
    # least this fraction of the files probed, or when at least ``window_confirm``
    # encrypted twins are this fraction of the files created.
    strong_window: int = 5
    strong_window_frac: float = 0.5
    dropped_warning: int = 1000
    # Exfiltration staging (warning only): files read in one window, across directories.
    staging_files_read: int = 150
    staging_dirs: int = 12
    # ... or, for a slower sweep, files read over ``short_s`` while still reading widely.
    staging_files_read_short: int = 1500
    staging_dirs_slow: int = 5
    staging_net_bytes: int = 10_000_000
    hysteresis: float = 0.05
    quiet_s: float = 120.0
    # Most windows of history kept per host (bounded: an hour of 1 s windows).
    max_history: int = 4096
    # A warning of routine reasons whose writer is not named yet (a reader sweeping the
    # share) waits this long for it, to tell a learned routine job from staging.
    unnamed_wait_s: float = 60.0


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    exe: str
    tree_root_pid: int
    # The tree root's identity as the agent sampled it: a suspend names it.
    tree_root_start_ticks: int = 0
    kernel_boot_id: str = ""
    # An smbd worker: the client it serves and the session's SMB user (agent's word).
    smb_client_addr: str = ""
    smb_user: str = ""

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"pid": self.pid, "name": self.name, "exe": self.exe}
        if self.smb_client_addr:
            out["smb_client_addr"] = self.smb_client_addr
            out["smb_user"] = self.smb_user
        return out

    def root_ref(self) -> pb.ProcessRef:
        """The tree root as a command names it (pid, start ticks, kernel boot id)."""
        return pb.ProcessRef(
            pid=self.tree_root_pid,
            start_ticks=self.tree_root_start_ticks,
            kernel_boot_id=self.kernel_boot_id,
        )


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    incident_id: str
    host_id: str
    root_pid: int
    severity: Severity
    score: float | None
    reasons: tuple[Reason, ...]
    window_start_s: float
    window_end_s: float
    process: ProcessInfo | None
    drill: bool = False
    example_paths: tuple[str, ...] = ()
    seq: int = 0

    @property
    def posts(self) -> bool:
        """True for decisions a human must hear about and act on: ``open``, ``escalate``,
        and ``named`` (a critical incident opened before its writer was known: now it is)."""
        return self.kind in ("open", "escalate", "named")


@dataclass
class _Entry:
    end_s: float
    counts: dict[str, int]
    new_ext: tuple[str, int]
    note: tuple[str, int]
    files_read: int = 0
    root: int = 0  # tree root pid of the window's top writer (0: none named)


@dataclass
class _Incident:
    incident_id: str
    severity: Severity
    first_start_s: float
    last_active_s: float
    reasons: set[Reason] = field(default_factory=set)
    # The writer it was last decided on (not kept across a restart).
    process: ProcessInfo | None = None
    # Posted critical before any writer of its tree was known: the first one named is
    # decided on again (``named``) so that the response can reach it.
    posted_unnamed: bool = False
    # The job of the writer that opened it, the files of its windows, whether every
    # reason so far was routine, and the learned run it matched (opened unposted).
    job: str = ""
    files: int = 0
    routine: bool = False
    expected: RoutineRun | None = None
    unnamed: bool = False

    @property
    def silent(self) -> bool:
        """Opened without being posted (see ``Judge._unsilence``)."""
        return self.unnamed or self.expected is not None


def ts_s(ts: object) -> float:
    """Epoch seconds of a protobuf Timestamp."""
    return float(ts.seconds) + float(ts.nanos) / 1e9  # type: ignore[attr-defined]


def _client_addr(text: str) -> str:
    """An IP address as the agent reported it, or "" when it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def top_writer(w: pb.Window, open_roots: Iterable[int] = ()) -> ProcessInfo | None:
    """The writer most likely to be the culprit: most types destroyed, files, bytes.

    A writer whose tree already has an open incident (``open_roots``) comes
    first: the last files of a stopped attacker must not make a bystander
    writing in the same window (a colleague on the same share) the culprit.
    """
    if not w.top_writers:
        return None
    roots = set(open_roots)
    p = max(
        w.top_writers,
        key=lambda p: (
            (p.tree_root_pid or p.pid) in roots,
            p.files_type_destroyed,
            p.files_touched,
            p.bytes_written,
        ),
    )
    if p.tree_root_pid and p.tree_root_pid != p.pid:
        root_ticks = p.tree_root_start_ticks
    else:
        root_ticks = p.start_ticks
    client = _client_addr(p.smb_client_addr)
    return ProcessInfo(
        p.pid,
        p.name,
        p.exe,
        p.tree_root_pid or p.pid,
        root_ticks,
        p.kernel_boot_id,
        smb_client_addr=client,
        smb_user=printable(p.smb_user, limit=64) if client else "",  # the attacker's text
    )


def _own_evidence(reason: Reason) -> bool:
    """A reason this window shows by itself: a counted kind over one window (no horizon),
    the tripwire or a canary."""
    own = reason.kind in COUNTED and not reason.horizon
    return own or reason.kind in ("tripwire", "canary_touched")


class _Incidents(dict[tuple[str, int], _Incident]):
    """Open incidents by (host, tree root), each host's keys at hand (no scan of all hosts)."""

    def __init__(self) -> None:
        super().__init__()
        self._of: dict[str, dict[tuple[str, int], None]] = {}

    def of_host(self, host_id: str) -> list[tuple[str, int]]:
        """The host's keys, oldest first."""
        return list(self._of.get(host_id, ()))

    def __setitem__(self, key: tuple[str, int], inc: _Incident) -> None:
        super().__setitem__(key, inc)
        self._of.setdefault(key[0], {})[key] = None

    def __delitem__(self, key: tuple[str, int]) -> None:
        super().__delitem__(key)
        keys = self._of[key[0]]
        del keys[key]
        if not keys:
            del self._of[key[0]]

    def pop(self, key: tuple[str, int]) -> _Incident:  # type: ignore[override]
        inc = self[key]
        del self[key]
        return inc

    def setdefault(self, key: tuple[str, int], inc: _Incident) -> _Incident:  # type: ignore[override]
        if key not in self:
            self[key] = inc
        return self[key]


class Judge:
    """Feeds on windows in seq order per host; returns what to tell and do (see module doc)."""

    def __init__(
        self,
        threshold: float,
        config: JudgeConfig | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:16],
        book: IncidentBook | None = None,
        routine: RoutineJobs | None = None,
    ) -> None:
        self.threshold = threshold
        self.routine = routine if routine is not None else RoutineJobs()
        self.config = config or JudgeConfig()
        self._new_id = new_id
        self._history: dict[str, deque[_Entry]] = {}
        self._incidents = _Incidents()
        self.book: IncidentBook = MemoryIncidentBook()
        self.adopt_book(book if book is not None else self.book)

    def adopt_book(self, book: IncidentBook) -> None:
        """Keep incidents in ``book`` from now on, starting from those it holds open."""
        self.book = book
        for rec in book.open_incidents():
            self._adopt(rec)

    def _adopt(self, rec: IncidentRecord) -> None:
        sev: Severity = "critical" if rec.severity == "critical" else "warning"
        self._incidents.setdefault(
            (rec.host_id, rec.root_pid),
            _Incident(
                rec.incident_id,
                sev,
                rec.first_start_s,
                rec.last_active_s,
                set(parse_all(rec.reasons)),
            ),
        )

    def in_incident(self, host_id: str) -> bool:
        """True while the host has an open incident (per-host learning waits for it)."""
        return bool(self._incidents.of_host(host_id))

    def under_attack(self, host_id: str) -> bool:
        """True while the host has an open critical incident."""
        return any(
            self._incidents[k].severity == "critical" for k in self._incidents.of_host(host_id)
        )

    def _keep(self, key: tuple[str, int], inc: _Incident) -> None:
        self.book.save(
            IncidentRecord(
                inc.incident_id,
                key[0],
                key[1],
                inc.severity,
                inc.first_start_s,
                inc.last_active_s,
                texts(sorted(inc.reasons)),
            )
        )

    def open_incidents(self, host_id: str | None = None) -> list[tuple[str, int]]:
        return list(self._incidents) if host_id is None else self._incidents.of_host(host_id)

    def resync(self, host_id: str, judged: Iterable[pb.Window]) -> None:
        """Forget what memory holds of ``host_id``; rebuild it from windows already judged.

        The horizons are refilled from ``judged`` (oldest first, no decision
        taken), the host's incidents are taken again from the book.
        """
        self._history.pop(host_id, None)
        for key in self._incidents.of_host(host_id):
            del self._incidents[key]
        for rec in self.book.open_incidents():
            if rec.host_id == host_id:
                self._adopt(rec)
        for w in judged:
            self._remember(host_id, w)

    def _remember(self, host_id: str, w: pb.Window) -> deque[_Entry]:
        """Add ``w`` to the host's horizons (dropping what is older than ``long_s``)."""
        cfg = self.config
        end_s = ts_s(w.end)
        proc = top_writer(w)
        hist = self._history.setdefault(host_id, deque(maxlen=cfg.max_history))
        hist.append(
            _Entry(
                end_s=end_s,
                counts={k: int(getattr(w, k)) for k, _ in _COUNTED},
                new_ext=(w.top_new_extension, int(w.top_new_extension_dirs)),
                note=(w.repeated_name, int(w.repeated_name_dirs)),
                files_read=int(w.files_read),
                root=proc.tree_root_pid if proc else 0,
            )
        )
        while hist and hist[0].end_s < end_s - cfg.long_s:
            hist.popleft()
        return hist

    def observe(
        self,
        host_id: str,
        w: pb.Window,
        score: float | None,
        threshold: float | None = None,
        clock_skew_s: float = 0.0,
    ) -> list[Decision]:
        """Judge one window; ``threshold`` overrides the judge's (a host's own model)."""
        cfg = self.config
        thr = self.threshold if threshold is None else threshold
        start_s, end_s = ts_s(w.start), ts_s(w.end)
        hist = self._remember(host_id, w)

        host_keys = self._incidents.of_host(host_id)
        proc = top_writer(w, (k[1] for k in host_keys))
        root = proc.tree_root_pid if proc else 0
        # A window with no known writer (a reader sweeping, attribution lagging)
        # belongs to the host's most recent open incident rather than opening its
        # own; an incident opened without a writer takes the first one named.
        if root == 0 and host_keys:
            root = max(host_keys, key=lambda k: self._incidents[k].last_active_s)[1]
        elif root and (host_id, 0) in self._incidents and (host_id, root) not in self._incidents:
            self._incidents[(host_id, root)] = self._incidents.pop((host_id, 0))
        decisions = self._close_quiet(host_id, end_s, keep=(host_id, root))
        severity, reasons = self._evaluate(w, score, hist, thr, root)
        if (
            severity == "critical"
            and (host_id, root) not in self._incidents
            and host_keys
            and not any(_own_evidence(r) for r in reasons)
        ):
            # Critical only by what the host's recent windows add up to (an extension
            # spreading, counts over a horizon): the open incident's attack still showing
            # (its last files, found late), not a new culprit in whoever wrote meanwhile.
            root = max(host_keys, key=lambda k: self._incidents[k].last_active_s)[1]
            proc = self._incidents[(host_id, root)].process
        if clock_skew_s:
            reasons.append(Reason("clock_skew"))
        key = (host_id, root)
        inc = self._incidents.get(key)

        if inc is not None and end_s - inc.last_active_s >= cfg.quiet_s:
            decisions.append(self._decision("close", key, inc, w, score, (), proc))
            self._closed(key, inc, end_s)
            inc = None

        routine = self.routine.routine(reasons)
        if inc is not None and inc.silent:
            unsilenced = self._unsilence(key, inc, w, severity, routine, score, reasons, proc)
            if unsilenced is not None:
                decisions.append(unsilenced)
                return decisions
        keeps_alive = inc is not None and score is not None and score > thr - cfg.hysteresis
        if severity is None and not keeps_alive:
            return decisions
        if inc is None:
            assert severity is not None
            job = self.routine.job_of(w)
            inc = _Incident(
                self._new_id(), severity, start_s, end_s, set(reasons), process=proc, job=job
            )
            inc.files, inc.routine = self.routine.files_of(w), routine
            if severity == "warning" and routine:
                # A learned routine job's run, or one whose writer is not named yet (a
                # reader sweeping), is opened without being posted (see _unsilence).
                inc.expected = self.routine.expected(host_id, job, start_s)
                inc.unnamed = not job
            self._incidents[key] = inc
            self._keep(key, inc)
            # A silent incident makes no decision: an update of an incident without
            # an alert would raise one (the responder's never-lost rule).
            if not inc.silent:
                inc.posted_unnamed = proc is None and severity == "critical"
                decisions.append(self._decision("open", key, inc, w, score, reasons, proc))
            return decisions
        inc.last_active_s = end_s
        inc.reasons.update(reasons)
        named_late = False
        if proc is not None and proc.tree_root_pid == root:
            named_late, inc.posted_unnamed = inc.posted_unnamed, False
            inc.process = proc
        inc.files += self.routine.files_of(w)
        self._keep(key, inc)
        if severity == "critical" and inc.severity == "warning":
            inc.severity = "critical"
            decisions.append(self._decision("escalate", key, inc, w, score, reasons, proc))
        elif named_late:
            # Posted critical with nobody to suspend (attribution lagged the first damage):
            # the writer is known now, so the response can reach it.
            decisions.append(self._decision("named", key, inc, w, score, reasons, proc))
        elif not inc.silent:
            decisions.append(self._decision("update", key, inc, w, score, reasons, proc))
        return decisions

    def _unsilence(
        self,
        key: tuple[str, int],
        inc: _Incident,
        w: pb.Window,
        severity: Severity | None,
        routine: bool,
        score: float | None,
        reasons: list[Reason],
        proc: ProcessInfo | None,
    ) -> Decision | None:
        """The ``open`` of a silent incident, once it is not a learned routine run after all.

        An unnamed one waits for its writer (``unnamed_wait_s`` of window time at
        most), then is an expected run or posted. An expected one is posted once it
        turns critical, raises a reason a routine job does not, or grows past the
        learned size. None while it stays silent.
        """
        inc.job = inc.job or self.routine.job_of(w)
        inc.routine = inc.routine and routine
        end_s = ts_s(w.end)
        wait = end_s - inc.first_start_s < self.config.unnamed_wait_s
        if inc.unnamed and not inc.job and wait and severity != "critical" and inc.routine:
            return None
        if inc.unnamed:
            inc.unnamed = False
            inc.expected = self.routine.expected(key[0], inc.job, inc.first_start_s)
        expected = inc.expected
        big = expected is not None and self.routine.too_big(expected, inc.files)
        if expected is not None and severity != "critical" and inc.routine and not big:
            return None
        inc.expected = None
        inc.last_active_s = max(inc.last_active_s, end_s)
        inc.reasons.update(reasons)
        if severity == "critical":
            inc.severity = "critical"
        self._keep(key, inc)
        if big:
            reasons = [*reasons, Reason.larger_than_usual(inc.files)]
        return self._decision("open", key, inc, w, score, reasons or sorted(inc.reasons), proc)

    def _close_quiet(self, host_id: str, now_s: float, keep: tuple[str, int]) -> list[Decision]:
        out = []
        for key in self._incidents.of_host(host_id):
            inc = self._incidents[key]
            quiet = now_s - inc.last_active_s >= self.config.quiet_s
            if key != keep and quiet:
                out.append(
                    Decision(
                        "close",
                        inc.incident_id,
                        host_id,
                        key[1],
                        inc.severity,
                        None,
                        tuple(sorted(inc.reasons)),
                        inc.first_start_s,
                        inc.last_active_s,
                        None,
                    )
                )
                self._closed(key, inc, now_s)
        return out

    def _closed(self, key: tuple[str, int], inc: _Incident, now_s: float) -> None:
        """Forget a closed incident; a warning of routine reasons teaches its job."""
        del self._incidents[key]
        self.book.close(inc.incident_id, now_s)
        if inc.severity == "warning" and inc.routine:
            self.routine.learn(key[0], inc.job, inc.first_start_s, inc.files)

    def _decision(
        self,
        kind: DecisionKind,
        key: tuple[str, int],
        inc: _Incident,
        w: pb.Window,
        score: float | None,
        reasons: Iterable[Reason],
        proc: ProcessInfo | None,
    ) -> Decision:
        return Decision(
            kind=kind,
            incident_id=inc.incident_id,
            host_id=key[0],
            root_pid=key[1],
            severity=inc.severity,
            score=score,
            reasons=tuple(reasons),
            window_start_s=ts_s(w.start),
            window_end_s=ts_s(w.end),
            process=proc,
            drill=bool(w.drill),
            example_paths=tuple(w.example_paths[:5]),
            seq=int(w.seq),
        )

    def _evaluate(
        self,
        w: pb.Window,
        score: float | None,
        hist: deque[_Entry],
        threshold: float,
        root: int,
    ) -> tuple[Severity | None, list[Reason]]:
        cfg = self.config
        end_s = ts_s(w.end)
        recent = list(hist)[-cfg.horizon_windows :]
        short = [e for e in hist if e.end_s > end_s - cfg.short_s]
        # The same horizons for the window's process tree (its own last N windows).
        tree = [e for e in hist if root and e.root == root]
        horizons = (
            ("10w", recent, cfg.horizon_confirm[0]),
            ("60s", short, cfg.horizon_confirm[1]),
            ("1h", hist, cfg.horizon_confirm[2]),
            ("tree10w", tree[-cfg.horizon_windows :], cfg.horizon_confirm[0]),
        )
        confirmers: list[Reason] = []

        for attr, reason in _COUNTED:
            n = int(getattr(w, attr))
            if n >= cfg.window_confirm:
                confirmers.append(Reason.counted(reason, n))
                continue
            if n == 0:  # history alone never confirms: the attack must still be going on
                continue
            for label, entries, bar in horizons:
                total = sum(e.counts[attr] for e in entries)
                if total >= bar:
                    confirmers.append(Reason.counted(reason, total, label))
                    break

        ext, ext_dirs = _spread(short, lambda e: e.new_ext)
        if ext and ext == w.top_new_extension and ext_dirs >= cfg.window_confirm:
            confirmers.append(Reason.spread("new_extension_spreading", ext, ext_dirs))
        note, note_dirs = _spread(short, lambda e: e.note)
        if note and note == w.repeated_name and note_dirs >= cfg.window_confirm:
            confirmers.append(Reason.spread("ransom_note", note, note_dirs))

        destructive_short = sum(sum(e.counts.values()) for e in short)
        destructive_long = sum(sum(e.counts.values()) for e in hist)
        destructive_tree = sum(sum(e.counts.values()) for e in tree)
        ruined_now = max(int(w.files_type_destroyed), int(w.files_encoded_random))
        strong_now = (
            ruined_now >= cfg.strong_window
            and ruined_now >= cfg.strong_window_frac * max(int(w.files_probed), ruined_now)
        ) or (
            int(w.encrypted_twins) >= cfg.window_confirm
            and int(w.encrypted_twins) >= cfg.strong_window_frac * int(w.files_created)
        )
        strong = (
            strong_now
            or destructive_short >= cfg.strong_short
            or destructive_long >= cfg.strong_long
            or (
                destructive_tree >= cfg.strong_tree_long
                and destructive_tree >= cfg.strong_tree_density * len(tree)
            )
            or len(confirmers) >= 2
        )
        anomalous = score is not None and score > threshold

        reasons: list[Reason] = []
        if anomalous:
            assert score is not None
            reasons.append(Reason.anomaly(score))
        reasons.extend(confirmers)
        blatant = False
        if w.canary_touches > 0:
            reasons.append(Reason("canary_touched"))
            blatant = True
        if w.tripwire_fired:
            reasons.append(Reason.tripwire(w.tripwire_reason))
            blatant = True
        dropped = int(w.events_dropped + w.queue_overflows)
        if dropped > 0:
            reasons.append(Reason.counter("events_dropped", dropped))
        # Blindness: the kernel dropped events or a directory went unwatched.
        blind = int(w.queue_overflows) > 0 or int(w.watch_limit_hits) > 0
        if w.queue_overflows:
            reasons.append(Reason.counter("inotify_overflow", int(w.queue_overflows)))
        if w.watch_limit_hits:
            reasons.append(Reason.counter("watch_limit", int(w.watch_limit_hits)))
        # Exfiltration staging: one window sweeping many files in many directories,
        # with the archive or the network traffic that usually goes with it.
        read_short = sum(e.files_read for e in short)
        staging = (
            int(w.files_read) >= cfg.staging_files_read and int(w.read_dirs) >= cfg.staging_dirs
        ) or (
            w.files_read > 0
            and int(w.read_dirs) >= cfg.staging_dirs_slow
            and read_short >= cfg.staging_files_read_short
        )
        if staging:
            reasons.append(Reason.read_sweep(max(int(w.files_read), read_short), int(w.read_dirs)))
            if w.archives_created:
                reasons.append(Reason.counter("archive_created", int(w.archives_created)))
            if w.net_bytes_out >= cfg.staging_net_bytes:
                reasons.append(Reason.counter("net_out_mb", int(w.net_bytes_out) // 1_000_000))

        if blatant or ((anomalous or strong) and confirmers):
            return "critical", reasons
        if anomalous or confirmers or dropped >= cfg.dropped_warning or blind or staging:
            return "warning", reasons
        return None, reasons


def _spread(
    entries: Iterable[_Entry], pick: Callable[[_Entry], tuple[str, int]]
) -> tuple[str, int]:
    """The name seen in the most directories, summed over ``entries`` (per-window maxima)."""
    totals: dict[str, int] = {}
    for e in entries:
        name, dirs = pick(e)
        if name:
            totals[name] = totals.get(name, 0) + dirs
    if not totals:
        return "", 0
    name = max(totals, key=lambda k: totals[k])
    return name, totals[name]
