"""Where the collector keeps what it was told and what it did.

Contract of every ``Store``:

- ``add_windows(host_id, boot_id, windows)`` returns, per window, ``True`` if it
  was inserted and ``False`` if ``(host_id, boot_id, seq)`` was already stored
  (a resend after a reconnect). When it returns, the inserted windows are
  committed: an ack sent after it never covers a window a crash could lose.
  ``add_window_batch(items, judged)`` does the same for ``(host_id, boot_id,
  window)`` items of any hosts and records the ``judged`` marks, all in one
  transaction (the collector's group commit, ``tocsin.collector.groupcommit``).
- ``committed_seq(host_id, boot_id)`` is the highest seq stored for that boot
  (0 if none). The agent sends a boot's windows in ascending order on a stream
  and every window is committed before the next one is read, so every window
  the agent sent with a lower seq is stored too; a seq the agent itself dropped
  from its full spool is never waited for.
- Every stored window is judged exactly once, in order per host:
  ``mark_judged(host_id, boot_id, seq, score)`` (or a ``JudgedMark`` in a
  batch) records that its judgement is complete (decisions stored, commands
  sent); marking a window not stored does nothing. ``unjudged(host_id)`` returns
  (boot_id, window) for the windows committed (and acked) but not yet judged,
  oldest first, so a judgement the database lost after the commit is taken up
  again once it is back; ``unjudged_hosts()`` names the hosts that have any.
  ``judged_since(host_id, span_s)`` returns the host's judged windows within
  ``span_s`` of its newest judged one, oldest first: the judge's horizons are
  rebuilt from them after a restart.
- Alerts, actions and audit rows are plain records; lists come back newest first,
  ``limit`` of them after skipping ``offset`` (how the operator API pages).
- Every stored window is also added to its host's hourly rollup (counts,
  evidence totals, highest score), in the same transaction. ``prune`` deletes,
  in one short transaction per call, at most ``batch`` of the oldest raw
  windows ended before a cutoff and rollups older than another; alerts,
  actions and audit rows are never pruned.

``SqliteStore`` is one connection in WAL mode guarded by a lock, so it may be
called from the event loop or from ``asyncio.to_thread``. A window row holds
only what cannot be derived: its identity (a small integer per host boot, then
seq), times, score and the wire bytes; features are recomputed from the wire
bytes by whoever needs them (``tocsin.collector.features``). The view
``windows`` gives the rows with their host and boot ids for readers. ``MemoryStore`` keeps
the same records in dictionaries (tests, and a collector without a disk).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tocsin.collector.db import Database, StoreFull, StoreUnavailable, unavailable
from tocsin.v1.errors import ConfigError

__all__ = ["StoreFull", "StoreUnavailable", "unavailable"]  # where callers have found them


@dataclass(frozen=True)
class WindowTally:
    """What one window adds to its host's hourly rollup."""

    files_written: int = 0
    files_deleted: int = 0
    files_destroyed: int = 0
    canary_touches: int = 0
    events_dropped: int = 0
    bytes_written: int = 0


@dataclass(frozen=True)
class StoredWindow:
    """One window as stored: its identity, timestamps (epoch s) and wire bytes."""

    seq: int
    start_s: float
    end_s: float
    raw: bytes
    tally: WindowTally = WindowTally()
    score: float | None = None


@dataclass(frozen=True)
class HourRollup:
    """One host's windows of one hour (``hour_s``: epoch s of the hour's start), added up."""

    host_id: str
    hour_s: int
    windows: int
    tally: WindowTally
    max_score: float | None


# (host_id, boot_id, window): one window of a group commit.
WindowItem = tuple[str, str, StoredWindow]


@dataclass(frozen=True)
class JudgedMark:
    """A window whose judgement is complete, with the score it was judged with."""

    host_id: str
    boot_id: str
    seq: int
    score: float | None


def by_boot(items: Sequence[WindowItem]) -> dict[tuple[str, str], list[int]]:
    """The positions in ``items`` of each (host_id, boot_id)'s windows, in order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (host_id, boot_id, _) in enumerate(items):
        groups.setdefault((host_id, boot_id), []).append(i)
    return groups


def hour_of(t_s: float) -> int:
    """The start (epoch s) of the UTC hour holding ``t_s``."""
    return int(t_s // 3600) * 3600


@dataclass
class HostRecord:
    host_id: str
    hostname: str = ""
    agent_version: str = ""
    first_seen_s: float = 0.0
    last_seen_s: float = 0.0
    isolated: bool = False
    suspended_pids: list[int] = field(default_factory=list)
    tripwire_mode: str = ""
    windows: int = 0
    clean_disconnect: bool = False


@dataclass
class AlertRecord:
    alert_id: str
    host_id: str
    incident_id: str
    severity: str
    score: float
    detected_at_s: float
    window_start_s: float
    window_end_s: float
    reasons: list[str]
    process: dict[str, Any] | None
    payload: dict[str, Any]
    open: bool = True


@dataclass
class ActionRecord:
    action_id: str
    alert_id: str
    host_id: str
    kind: str
    requested_by: str
    requested_at_s: float
    status: str
    detail: str = ""
    pids: list[int] = field(default_factory=list)
    finished_at_s: float | None = None


class Store(Protocol):
    def upsert_host(
        self, host_id: str, *, hostname: str, agent_version: str, tripwire_mode: str
    ) -> HostRecord: ...
    def touch_host(self, host_id: str, *, clean_disconnect: bool | None = None) -> None: ...
    def get_host(self, host_id: str) -> HostRecord | None: ...
    def list_hosts(self) -> list[HostRecord]: ...
    def set_host_state(
        self, host_id: str, *, isolated: bool | None = None, suspended_pids: list[int] | None = None
    ) -> None: ...
    def add_windows(
        self, host_id: str, boot_id: str, windows: Sequence[StoredWindow]
    ) -> list[bool]: ...
    def add_window_batch(
        self, items: Sequence[WindowItem], judged: Sequence[JudgedMark] = ()
    ) -> list[bool]: ...
    def committed_seq(self, host_id: str, boot_id: str) -> int: ...
    def mark_judged(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None: ...
    def unjudged(self, host_id: str, limit: int = 1000) -> list[tuple[str, StoredWindow]]: ...
    def unjudged_hosts(self) -> list[str]: ...
    def judged_since(
        self, host_id: str, span_s: float, limit: int = 4096
    ) -> list[StoredWindow]: ...
    def rollups(self, host_id: str, since_s: float, until_s: float) -> list[HourRollup]: ...
    def host_windows(
        self, host_id: str, since_s: float, until_s: float, limit: int = 2000
    ) -> list[StoredWindow]: ...
    def incident_alerts(self, incident_id: str) -> list[AlertRecord]: ...
    def prune(self, windows_before_s: float, rollups_before_s: float, batch: int = 2000) -> int: ...
    def save_alert(self, alert: AlertRecord) -> None: ...
    def list_alerts(
        self, host_id: str = "", limit: int = 50, offset: int = 0
    ) -> list[AlertRecord]: ...
    def add_action(self, action: ActionRecord) -> None: ...
    def finish_action(
        self, action_id: str, status: str, detail: str, pids: list[int] | None = None
    ) -> ActionRecord | None: ...
    def get_action(self, action_id: str) -> ActionRecord | None: ...
    def list_actions(
        self, host_id: str = "", limit: int = 50, offset: int = 0
    ) -> list[ActionRecord]: ...
    def audit(self, who: str, what: str, detail: str = "") -> None: ...
    def audit_log(self, limit: int = 100) -> list[tuple[float, str, str, str]]: ...
    def atomic(self) -> AbstractContextManager[object]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    host_id TEXT PRIMARY KEY, hostname TEXT, agent_version TEXT,
    first_seen REAL, last_seen REAL, isolated INTEGER DEFAULT 0,
    suspended_pids TEXT DEFAULT '[]', tripwire_mode TEXT, clean_disconnect INTEGER DEFAULT 0
);
CREATE TABLE IF NOT EXISTS boots (
    boot_ref INTEGER PRIMARY KEY, host_id TEXT NOT NULL, boot_id TEXT NOT NULL,
    first_start REAL, UNIQUE(host_id, boot_id)
);
CREATE TABLE IF NOT EXISTS window_rows (
    boot_ref INTEGER NOT NULL, seq INTEGER NOT NULL, start REAL, "end" REAL, score REAL,
    raw BLOB, codec INTEGER NOT NULL DEFAULT 0, judged INTEGER NOT NULL DEFAULT 1,
    UNIQUE(boot_ref, seq)
);
CREATE TABLE IF NOT EXISTS rollups (
    host_id TEXT NOT NULL, hour INTEGER NOT NULL, windows INTEGER NOT NULL,
    files_written INTEGER NOT NULL, files_deleted INTEGER NOT NULL,
    files_destroyed INTEGER NOT NULL, canary_touches INTEGER NOT NULL,
    events_dropped INTEGER NOT NULL, bytes_written INTEGER NOT NULL, max_score REAL,
    PRIMARY KEY (host_id, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY, host_id TEXT, incident_id TEXT, severity TEXT, score REAL,
    detected_at REAL, window_start REAL, window_end REAL, reasons TEXT, process TEXT,
    payload TEXT, open INTEGER DEFAULT 1
);
CREATE INDEX IF NOT EXISTS alerts_host ON alerts(host_id, detected_at);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY, alert_id TEXT, host_id TEXT, kind TEXT, requested_by TEXT,
    requested_at REAL, status TEXT, detail TEXT, pids TEXT, finished_at REAL
);
CREATE TABLE IF NOT EXISTS audit (at REAL, who TEXT, what TEXT, detail TEXT);
"""
# Made after ``window_rows`` has its ``judged`` column (a database from before
# it gets the column, every window in it counting as judged).
_JUDGED_SCHEMA = """
CREATE INDEX IF NOT EXISTS window_rows_unjudged ON window_rows(boot_ref, seq) WHERE judged=0;
CREATE VIEW IF NOT EXISTS windows AS
    SELECT b.host_id AS host_id, b.boot_id AS boot_id, w.seq AS seq, w.start AS start,
           w."end" AS "end", w.score AS score, w.raw AS raw, w.codec AS codec,
           w.judged AS judged
    FROM window_rows w JOIN boots b USING (boot_ref);
"""


# Rollup rows of a batch: (host_id, hour) -> [windows, files_written, ...].
TALLY_FIELDS = (
    "files_written",
    "files_deleted",
    "files_destroyed",
    "canary_touches",
    "events_dropped",
    "bytes_written",
)
_ADD_ROLLUP = (
    "INSERT INTO rollups(host_id, hour, windows, " + ", ".join(TALLY_FIELDS) + ", max_score)"
    " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(host_id, hour) DO UPDATE SET"
    " windows=windows+excluded.windows, "
    + ", ".join(f"{f}={f}+excluded.{f}" for f in TALLY_FIELDS)
    + ", max_score=MAX(COALESCE(max_score, excluded.max_score), excluded.max_score)"
)


def _open_schema(db: Database) -> None:
    """Create the tables; move a database of the earlier one-table window layout over.

    That layout kept host and boot ids and the features (JSON text) in every
    window row. Its windows are copied into ``window_rows`` and counted in the
    rollups (counts and highest score; evidence totals start with this
    layout). The copy is one transaction; a crash before it finishes leaves
    ``windows_legacy`` behind, and the next open finishes it.
    """
    with db.transaction() as con:
        kind = con.execute("SELECT type FROM sqlite_master WHERE name='windows'").fetchone()
        if kind is not None and kind[0] == "table":
            con.execute("ALTER TABLE windows RENAME TO windows_legacy")
    db.schema(_SCHEMA)
    with db.transaction() as con:
        if not any(r[1] == "judged" for r in con.execute("PRAGMA table_info(window_rows)")):
            con.execute("DROP VIEW IF EXISTS windows")
            con.execute("ALTER TABLE window_rows ADD COLUMN judged INTEGER NOT NULL DEFAULT 1")
    db.schema(_JUDGED_SCHEMA)
    with db.transaction() as con:
        legacy = "SELECT 1 FROM sqlite_master WHERE name='windows_legacy'"
        if con.execute(legacy).fetchone() is None:
            return
        con.execute(
            "INSERT OR IGNORE INTO boots(host_id, boot_id, first_start)"
            " SELECT host_id, boot_id, MIN(start) FROM windows_legacy GROUP BY host_id, boot_id"
        )
        con.execute(
            'INSERT OR IGNORE INTO window_rows(boot_ref, seq, start, "end", score, raw)'
            ' SELECT b.boot_ref, l.seq, l.start, l."end", l.score, l.raw'
            " FROM windows_legacy l JOIN boots b ON b.host_id=l.host_id AND b.boot_id=l.boot_id"
            " ORDER BY l.rowid"
        )
        con.execute(
            "INSERT OR IGNORE INTO rollups(host_id, hour, windows, "
            + ", ".join(TALLY_FIELDS)
            + ', max_score) SELECT host_id, CAST("end" / 3600 AS INTEGER) * 3600, COUNT(*),'
            + " 0, 0, 0, 0, 0, 0, MAX(score) FROM windows_legacy"
            + ' GROUP BY host_id, CAST("end" / 3600 AS INTEGER)'
        )
        con.execute("DROP TABLE windows_legacy")


# Wire bytes shorter than this are stored as they are: zlib would not pay.
_PACK_MIN_BYTES = 128
CODEC_PLAIN, CODEC_ZLIB = 0, 1


def pack_raw(raw: bytes) -> tuple[bytes, int]:
    """(stored bytes, codec) for a window's wire bytes: zlib when that is shorter.

    A window's example paths and writers' command lines share long prefixes,
    so a busy window shrinks to about 40 %; a quiet one is kept as it is.
    """
    if len(raw) >= _PACK_MIN_BYTES:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return packed, CODEC_ZLIB
    return raw, CODEC_PLAIN


def unpack_raw(stored: bytes, codec: int) -> bytes:
    """The wire bytes of a stored window (``codec`` from ``pack_raw``)."""
    return zlib.decompress(stored) if codec == CODEC_ZLIB else bytes(stored)


def _add_tally(hours: dict[int, list[int]], hour: int, t: WindowTally) -> None:
    row = hours.setdefault(hour, [0] * (1 + len(TALLY_FIELDS)))
    row[0] += 1
    for i, f in enumerate(TALLY_FIELDS, start=1):
        row[i] += getattr(t, f)


class SqliteStore:
    """A ``Store`` in one SQLite file (WAL, synchronous=FULL: an ack survives power loss)."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.db = db  # the incident book, baselines and outbox share the file and connection
        self._owns_db = False
        try:
            _open_schema(db)
        except (sqlite3.Error, StoreUnavailable) as exc:
            raise ConfigError(f"cannot open database {db.path}: {exc}") from None

    @classmethod
    def open(cls, path: Path, clock: Callable[[], float] = time.time) -> SqliteStore:
        """A store with a database of its own (tests, tools): ``SqliteStore(Database(path))``."""
        store = cls(Database(path), clock)
        store._owns_db = True
        return store

    def atomic(self) -> AbstractContextManager[object]:
        """One transaction around several writes, the outbox's included (same database)."""
        return self.db.transaction()

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self.db.execute(sql, args)

    def upsert_host(
        self, host_id: str, *, hostname: str, agent_version: str, tripwire_mode: str
    ) -> HostRecord:
        now = self._clock()
        self._exec(
            "INSERT INTO hosts(host_id, hostname, agent_version, first_seen, last_seen,"
            " tripwire_mode, clean_disconnect) VALUES (?,?,?,?,?,?,0)"
            " ON CONFLICT(host_id) DO UPDATE SET hostname=excluded.hostname,"
            " agent_version=excluded.agent_version, last_seen=excluded.last_seen,"
            " tripwire_mode=excluded.tripwire_mode, clean_disconnect=0",
            (host_id, hostname, agent_version, now, now, tripwire_mode),
        )
        host = self.get_host(host_id)
        assert host is not None
        return host

    def touch_host(self, host_id: str, *, clean_disconnect: bool | None = None) -> None:
        if clean_disconnect is None:
            self._exec("UPDATE hosts SET last_seen=? WHERE host_id=?", (self._clock(), host_id))
        else:
            self._exec(
                "UPDATE hosts SET last_seen=?, clean_disconnect=? WHERE host_id=?",
                (self._clock(), int(clean_disconnect), host_id),
            )

    def _host(self, row: Sequence[Any]) -> HostRecord:
        return HostRecord(
            host_id=row[0],
            hostname=row[1] or "",
            agent_version=row[2] or "",
            first_seen_s=row[3] or 0.0,
            last_seen_s=row[4] or 0.0,
            isolated=bool(row[5]),
            suspended_pids=list(json.loads(row[6] or "[]")),
            tripwire_mode=row[7] or "",
            clean_disconnect=bool(row[8]),
            windows=int(row[9]),
        )

    _HOST_SQL = (
        "SELECT h.host_id, hostname, agent_version, first_seen, last_seen, isolated,"
        " suspended_pids, tripwire_mode, clean_disconnect,"
        " (SELECT COALESCE(SUM(windows), 0) FROM rollups r WHERE r.host_id=h.host_id)"
        " FROM hosts h"
    )

    def get_host(self, host_id: str) -> HostRecord | None:
        rows = self._exec(self._HOST_SQL + " WHERE h.host_id=?", (host_id,))
        return self._host(rows[0]) if rows else None

    def list_hosts(self) -> list[HostRecord]:
        return [self._host(r) for r in self._exec(self._HOST_SQL + " ORDER BY h.host_id")]

    def set_host_state(
        self, host_id: str, *, isolated: bool | None = None, suspended_pids: list[int] | None = None
    ) -> None:
        if isolated is not None:
            self._exec("UPDATE hosts SET isolated=? WHERE host_id=?", (int(isolated), host_id))
        if suspended_pids is not None:
            self._exec(
                "UPDATE hosts SET suspended_pids=? WHERE host_id=?",
                (json.dumps(sorted(set(suspended_pids))), host_id),
            )

    def add_windows(
        self, host_id: str, boot_id: str, windows: Sequence[StoredWindow]
    ) -> list[bool]:
        return self.add_window_batch([(host_id, boot_id, w) for w in windows])

    def add_window_batch(
        self, items: Sequence[WindowItem], judged: Sequence[JudgedMark] = ()
    ) -> list[bool]:
        if not items and not judged:
            return []
        inserted = [False] * len(items)
        with self.db.transaction() as con:
            for (host_id, boot_id), at in by_boot(items).items():
                new = self._insert(con, host_id, boot_id, [items[i][2] for i in at])
                for i, ok in zip(at, new, strict=True):
                    inserted[i] = ok
            for mark in judged:
                self._mark(con, mark)
        return inserted

    def _insert(
        self, con: sqlite3.Connection, host_id: str, boot_id: str, windows: Sequence[StoredWindow]
    ) -> list[bool]:
        """One boot's windows and their rollups, inside the caller's transaction."""
        inserted: list[bool] = []
        hours: dict[int, list[int]] = {}
        boot_ref = self._boot_ref(con, host_id, boot_id, min(w.start_s for w in windows))
        for w in windows:
            cur = con.execute(
                "INSERT OR IGNORE INTO window_rows(boot_ref, seq, start,"
                ' "end", score, raw, codec, judged) VALUES (?,?,?,?,?,?,?,0)',
                (boot_ref, w.seq, w.start_s, w.end_s, w.score, *pack_raw(w.raw)),
            )
            inserted.append(cur.rowcount == 1)
            if cur.rowcount == 1:
                _add_tally(hours, hour_of(w.end_s), w.tally)
        con.executemany(
            _ADD_ROLLUP,
            [(host_id, hour, *row, None) for hour, row in hours.items()],
        )
        return inserted

    @staticmethod
    def _boot_ref(con: sqlite3.Connection, host_id: str, boot_id: str, start_s: float) -> int:
        con.execute(
            "INSERT OR IGNORE INTO boots(host_id, boot_id, first_start) VALUES (?,?,?)",
            (host_id, boot_id, start_s),
        )
        row = con.execute(
            "SELECT boot_ref FROM boots WHERE host_id=? AND boot_id=?", (host_id, boot_id)
        ).fetchone()
        return int(row[0])

    def committed_seq(self, host_id: str, boot_id: str) -> int:
        rows = self._exec(
            "SELECT MAX(seq) FROM window_rows WHERE boot_ref="
            "(SELECT boot_ref FROM boots WHERE host_id=? AND boot_id=?)",
            (host_id, boot_id),
        )
        return int(rows[0][0] or 0)

    def mark_judged(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None:
        self.add_window_batch((), [JudgedMark(host_id, boot_id, seq, score)])

    @staticmethod
    def _mark(con: sqlite3.Connection, mark: JudgedMark) -> None:
        """One judged mark (and its hour's highest score), inside the caller's transaction."""
        row = con.execute(
            "UPDATE window_rows SET score=?, judged=1 WHERE seq=? AND boot_ref="
            "(SELECT boot_ref FROM boots WHERE host_id=? AND boot_id=?)"
            ' RETURNING "end"',
            (mark.score, mark.seq, mark.host_id, mark.boot_id),
        ).fetchone()
        if row is not None and mark.score is not None:
            con.execute(
                "UPDATE rollups SET max_score=MAX(COALESCE(max_score, ?), ?)"
                " WHERE host_id=? AND hour=?",
                (mark.score, mark.score, mark.host_id, hour_of(row[0])),
            )

    def unjudged(self, host_id: str, limit: int = 1000) -> list[tuple[str, StoredWindow]]:
        rows = self._exec(
            'SELECT b.boot_id, w.seq, w.start, w."end", w.raw, w.codec, w.score'
            " FROM boots b JOIN window_rows w USING (boot_ref)"
            ' WHERE b.host_id=? AND w.judged=0 ORDER BY w."end", w.seq LIMIT ?',
            (host_id, limit),
        )
        return [
            (r[0], StoredWindow(r[1], r[2], r[3], unpack_raw(r[4], r[5]), score=r[6])) for r in rows
        ]

    def unjudged_hosts(self) -> list[str]:
        rows = self._exec(
            "SELECT DISTINCT b.host_id FROM window_rows w JOIN boots b USING (boot_ref)"
            " WHERE w.judged=0 ORDER BY b.host_id"
        )
        return [r[0] for r in rows]

    def judged_since(self, host_id: str, span_s: float, limit: int = 4096) -> list[StoredWindow]:
        """Newest boot first, each walked down its (boot_ref, seq) index: no scan of old rows."""
        boots = self._exec(
            "SELECT boot_ref FROM boots WHERE host_id=? ORDER BY first_start DESC", (host_id,)
        )
        found: list[StoredWindow] = []
        newest: float | None = None
        for (boot_ref,) in boots:
            rows = self._exec(
                'SELECT seq, start, "end", raw, codec, score FROM window_rows'
                " WHERE boot_ref=? AND judged=1 ORDER BY seq DESC LIMIT ?",
                (boot_ref, limit - len(found)),
            )
            for seq, start, end, raw, codec, score in rows:
                newest = end if newest is None else newest
                if end < newest - span_s:
                    return found[::-1]
                found.append(StoredWindow(seq, start, end, unpack_raw(raw, codec), score=score))
            if len(found) >= limit:
                break
        return found[::-1]

    def rollups(self, host_id: str, since_s: float, until_s: float) -> list[HourRollup]:
        rows = self._exec(
            "SELECT hour, windows, "
            + ", ".join(TALLY_FIELDS)
            + ", max_score FROM rollups WHERE host_id=? AND hour>=? AND hour<? ORDER BY hour",
            (host_id, hour_of(since_s), until_s),
        )
        return [
            HourRollup(host_id, int(r[0]), int(r[1]), WindowTally(*map(int, r[2:8])), r[8])
            for r in rows
        ]

    def host_windows(
        self, host_id: str, since_s: float, until_s: float, limit: int = 2000
    ) -> list[StoredWindow]:
        """The host's windows that ended in [since_s, until_s], oldest first, at most ``limit``."""
        rows = self._exec(
            'SELECT w.seq, w.start, w."end", w.raw, w.codec, w.score FROM window_rows w'
            ' JOIN boots b USING (boot_ref) WHERE b.host_id=? AND w."end" >= ?'
            ' AND w."end" <= ? ORDER BY w."end" LIMIT ?',
            (host_id, since_s, until_s, limit),
        )
        return [StoredWindow(r[0], r[1], r[2], unpack_raw(r[3], r[4]), score=r[5]) for r in rows]

    def incident_alerts(self, incident_id: str) -> list[AlertRecord]:
        return self._alerts(" WHERE incident_id=?", [incident_id], 1000)

    def prune(self, windows_before_s: float, rollups_before_s: float, batch: int = 2000) -> int:
        """Delete at most ``batch`` old windows (and old rollups); how many rows went.

        Windows are looked for among the ``batch`` first stored (insertion
        order is receive order, which window times follow once ingest clamps
        them), so one call reads a bounded number of rows however large the
        table is; 0 means nothing old is left at the front.
        """
        with self.db.transaction() as con:
            gone = con.execute(
                "DELETE FROM window_rows WHERE rowid IN (SELECT rowid FROM"
                ' (SELECT rowid, "end" FROM window_rows ORDER BY rowid LIMIT ?)'
                ' WHERE "end" < ?)',
                (batch, windows_before_s),
            ).rowcount
            gone += con.execute(
                "DELETE FROM rollups WHERE (host_id, hour) IN"
                " (SELECT host_id, hour FROM rollups WHERE hour < ? LIMIT ?)",
                (rollups_before_s, batch),
            ).rowcount
            if gone == 0:
                con.execute(
                    "DELETE FROM boots WHERE NOT EXISTS"
                    " (SELECT 1 FROM window_rows w WHERE w.boot_ref=boots.boot_ref)"
                )
        return int(gone)

    def save_alert(self, alert: AlertRecord) -> None:
        self._exec(
            "INSERT OR REPLACE INTO alerts(alert_id, host_id, incident_id, severity, score,"
            " detected_at, window_start, window_end, reasons, process, payload, open)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                alert.alert_id,
                alert.host_id,
                alert.incident_id,
                alert.severity,
                alert.score,
                alert.detected_at_s,
                alert.window_start_s,
                alert.window_end_s,
                json.dumps(alert.reasons),
                json.dumps(alert.process),
                json.dumps(alert.payload),
                int(alert.open),
            ),
        )

    def list_alerts(self, host_id: str = "", limit: int = 50, offset: int = 0) -> list[AlertRecord]:
        if host_id:
            return self._alerts(" WHERE host_id=?", [host_id], limit, offset)
        return self._alerts("", [], limit, offset)

    def _alerts(
        self, where: str, args: list[Any], limit: int, offset: int = 0
    ) -> list[AlertRecord]:
        sql = (
            "SELECT alert_id, host_id, incident_id, severity, score, detected_at, window_start,"
            " window_end, reasons, process, payload, open FROM alerts"
            + where
            + " ORDER BY detected_at DESC, rowid DESC LIMIT ? OFFSET ?"
        )
        return [
            AlertRecord(
                alert_id=r[0],
                host_id=r[1],
                incident_id=r[2],
                severity=r[3],
                score=r[4],
                detected_at_s=r[5],
                window_start_s=r[6],
                window_end_s=r[7],
                reasons=json.loads(r[8]),
                process=json.loads(r[9]),
                payload=json.loads(r[10]),
                open=bool(r[11]),
            )
            for r in self._exec(sql, [*args, limit, offset])
        ]

    def add_action(self, action: ActionRecord) -> None:
        self._exec(
            "INSERT OR REPLACE INTO actions(id, alert_id, host_id, kind, requested_by,"
            " requested_at, status, detail, pids, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                action.action_id,
                action.alert_id,
                action.host_id,
                action.kind,
                action.requested_by,
                action.requested_at_s,
                action.status,
                action.detail,
                json.dumps(action.pids),
                action.finished_at_s,
            ),
        )

    def list_actions(
        self, host_id: str = "", limit: int = 50, offset: int = 0
    ) -> list[ActionRecord]:
        where, args = (" WHERE host_id=?", [host_id]) if host_id else ("", [])
        ids = self._exec(
            f"SELECT id FROM actions{where} ORDER BY requested_at DESC, rowid DESC"
            " LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [a for (i,) in ids if (a := self.get_action(i)) is not None]

    def get_action(self, action_id: str) -> ActionRecord | None:
        rows = self._exec(
            "SELECT id, alert_id, host_id, kind, requested_by, requested_at, status, detail,"
            " pids, finished_at FROM actions WHERE id=?",
            (action_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return ActionRecord(
            action_id=r[0],
            alert_id=r[1] or "",
            host_id=r[2],
            kind=r[3],
            requested_by=r[4],
            requested_at_s=r[5],
            status=r[6],
            detail=r[7] or "",
            pids=json.loads(r[8] or "[]"),
            finished_at_s=r[9],
        )

    def finish_action(
        self, action_id: str, status: str, detail: str, pids: list[int] | None = None
    ) -> ActionRecord | None:
        action = self.get_action(action_id)
        if action is None:
            return None
        done = replace(
            action,
            status=status,
            detail=detail,
            finished_at_s=self._clock(),
            pids=list(pids) if pids else action.pids,
        )
        self.add_action(done)
        return done

    def audit(self, who: str, what: str, detail: str = "") -> None:
        self._exec("INSERT INTO audit VALUES (?,?,?,?)", (self._clock(), who, what, detail))

    def audit_log(self, limit: int = 100) -> list[tuple[float, str, str, str]]:
        rows = self._exec("SELECT * FROM audit ORDER BY rowid DESC LIMIT ?", (limit,))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def close(self) -> None:
        """Close the database if this store opened it (``open``); a shared one is the
        assembly's to close."""
        if self._owns_db:
            self.db.close()


class MemoryStore:
    """The same records in dictionaries; nothing survives the process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._hosts: dict[str, HostRecord] = {}
        self._windows: dict[tuple[str, str, int], StoredWindow] = {}
        self._judged: set[tuple[str, str, int]] = set()
        self._rollups: dict[tuple[str, int], HourRollup] = {}
        self._alerts: dict[str, AlertRecord] = {}
        self._actions: dict[str, ActionRecord] = {}
        self._audit: list[tuple[float, str, str, str]] = []
        self._lock = threading.Lock()

    def upsert_host(
        self, host_id: str, *, hostname: str, agent_version: str, tripwire_mode: str
    ) -> HostRecord:
        now = self._clock()
        host = self._hosts.get(host_id) or HostRecord(host_id=host_id, first_seen_s=now)
        host.hostname, host.agent_version, host.tripwire_mode = (
            hostname,
            agent_version,
            tripwire_mode,
        )
        host.last_seen_s, host.clean_disconnect = now, False
        self._hosts[host_id] = host
        return replace(host)

    def touch_host(self, host_id: str, *, clean_disconnect: bool | None = None) -> None:
        host = self._hosts.get(host_id)
        if host is not None:
            host.last_seen_s = self._clock()
            if clean_disconnect is not None:
                host.clean_disconnect = clean_disconnect

    def get_host(self, host_id: str) -> HostRecord | None:
        host = self._hosts.get(host_id)
        if host is None:
            return None
        count = sum(r.windows for k, r in self._rollups.items() if k[0] == host_id)
        return replace(host, windows=count, suspended_pids=list(host.suspended_pids))

    def list_hosts(self) -> list[HostRecord]:
        return [h for k in sorted(self._hosts) if (h := self.get_host(k)) is not None]

    def set_host_state(
        self, host_id: str, *, isolated: bool | None = None, suspended_pids: list[int] | None = None
    ) -> None:
        host = self._hosts.get(host_id)
        if host is None:
            return
        if isolated is not None:
            host.isolated = isolated
        if suspended_pids is not None:
            host.suspended_pids = sorted(set(suspended_pids))

    def add_windows(
        self, host_id: str, boot_id: str, windows: Sequence[StoredWindow]
    ) -> list[bool]:
        return self.add_window_batch([(host_id, boot_id, w) for w in windows])

    def add_window_batch(
        self, items: Sequence[WindowItem], judged: Sequence[JudgedMark] = ()
    ) -> list[bool]:
        inserted = []
        with self._lock:
            for host_id, boot_id, w in items:
                key = (host_id, boot_id, w.seq)
                inserted.append(key not in self._windows)
                if key not in self._windows:
                    self._windows[key] = w
                    self._roll(host_id, w, None)
            for mark in judged:
                self._mark(mark)
        return inserted

    def _roll(self, host_id: str, w: StoredWindow, score: float | None) -> None:
        key = (host_id, hour_of(w.end_s))
        r = self._rollups.get(key) or HourRollup(host_id, key[1], 0, WindowTally(), None)
        if score is None:
            added = {f: getattr(r.tally, f) + getattr(w.tally, f) for f in TALLY_FIELDS}
            r = replace(r, windows=r.windows + 1, tally=WindowTally(**added))
        else:
            r = replace(r, max_score=score if r.max_score is None else max(r.max_score, score))
        self._rollups[key] = r

    def committed_seq(self, host_id: str, boot_id: str) -> int:
        seqs = [k[2] for k in self._windows if k[0] == host_id and k[1] == boot_id]
        return max(seqs, default=0)

    def mark_judged(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None:
        self.add_window_batch((), [JudgedMark(host_id, boot_id, seq, score)])

    def _mark(self, mark: JudgedMark) -> None:
        key = (mark.host_id, mark.boot_id, mark.seq)
        if key in self._windows:
            self._judged.add(key)
            self._windows[key] = replace(self._windows[key], score=mark.score)
            if mark.score is not None:
                self._roll(mark.host_id, self._windows[key], mark.score)

    def unjudged(self, host_id: str, limit: int = 1000) -> list[tuple[str, StoredWindow]]:
        found = [
            (k[1], w) for k, w in self._windows.items() if k[0] == host_id and k not in self._judged
        ]
        return sorted(found, key=lambda bw: (bw[1].end_s, bw[1].seq))[:limit]

    def unjudged_hosts(self) -> list[str]:
        return sorted({k[0] for k in self._windows if k not in self._judged})

    def judged_since(self, host_id: str, span_s: float, limit: int = 4096) -> list[StoredWindow]:
        mine = [w for k, w in self._windows.items() if k[0] == host_id and k in self._judged]
        if not mine:
            return []
        newest = max(w.end_s for w in mine)
        recent = sorted((w for w in mine if w.end_s >= newest - span_s), key=lambda w: w.end_s)
        return recent[-limit:]

    def rollups(self, host_id: str, since_s: float, until_s: float) -> list[HourRollup]:
        found = [
            r
            for (h, hour), r in self._rollups.items()
            if h == host_id and hour_of(since_s) <= hour < until_s
        ]
        return sorted(found, key=lambda r: r.hour_s)

    def host_windows(
        self, host_id: str, since_s: float, until_s: float, limit: int = 2000
    ) -> list[StoredWindow]:
        found = [
            w for k, w in self._windows.items() if k[0] == host_id and since_s <= w.end_s <= until_s
        ]
        return sorted(found, key=lambda w: w.end_s)[:limit]

    def incident_alerts(self, incident_id: str) -> list[AlertRecord]:
        return [
            a for a in self.list_alerts(limit=len(self._alerts)) if a.incident_id == incident_id
        ]

    def prune(self, windows_before_s: float, rollups_before_s: float, batch: int = 2000) -> int:
        with self._lock:
            old = [k for k, w in list(self._windows.items())[:batch] if w.end_s < windows_before_s]
            for k in old:
                del self._windows[k]
            hours = [k for k in self._rollups if k[1] < rollups_before_s][:batch]
            for h in hours:
                del self._rollups[h]
        return len(old) + len(hours)

    def save_alert(self, alert: AlertRecord) -> None:
        self._alerts[alert.alert_id] = replace(alert)

    def list_alerts(self, host_id: str = "", limit: int = 50, offset: int = 0) -> list[AlertRecord]:
        alerts = [a for a in self._alerts.values() if not host_id or a.host_id == host_id]
        order = {k: i for i, k in enumerate(self._alerts)}
        alerts.sort(key=lambda a: (a.detected_at_s, order[a.alert_id]), reverse=True)
        return [replace(a) for a in alerts[offset : offset + limit]]

    def add_action(self, action: ActionRecord) -> None:
        self._actions[action.action_id] = replace(action)

    def list_actions(
        self, host_id: str = "", limit: int = 50, offset: int = 0
    ) -> list[ActionRecord]:
        found = [replace(a) for a in self._actions.values() if not host_id or a.host_id == host_id]
        found.sort(key=lambda a: a.requested_at_s, reverse=True)
        return found[offset : offset + limit]

    def get_action(self, action_id: str) -> ActionRecord | None:
        action = self._actions.get(action_id)
        return replace(action) if action else None

    def finish_action(
        self, action_id: str, status: str, detail: str, pids: list[int] | None = None
    ) -> ActionRecord | None:
        action = self._actions.get(action_id)
        if action is None:
            return None
        done = replace(
            action,
            status=status,
            detail=detail,
            finished_at_s=self._clock(),
            pids=list(pids) if pids else action.pids,
        )
        self._actions[action_id] = done
        return replace(done)

    def audit(self, who: str, what: str, detail: str = "") -> None:
        self._audit.append((self._clock(), who, what, detail))

    def audit_log(self, limit: int = 100) -> list[tuple[float, str, str, str]]:
        return list(reversed(self._audit))[:limit]

    def atomic(self) -> AbstractContextManager[object]:
        """Nothing to commit: every write is done when it returns."""
        return nullcontext()

    def close(self) -> None:
        pass
