"""Where the collector keeps what it was told and what it did.

Contract of every ``Store``:

- ``add_windows(host_id, boot_id, windows)`` returns, per window, ``True`` if it
  was inserted and ``False`` if ``(host_id, boot_id, seq)`` was already stored
  (a resend after a reconnect). When it returns, the inserted windows are
  committed: an ack sent after it never covers a window a crash could lose.
- ``committed_seq(host_id, boot_id)`` is the highest seq stored for that boot
  (0 if none). The agent sends a boot's windows in ascending order on a stream
  and every window is committed before the next one is read, so every window
  the agent sent with a lower seq is stored too; a seq the agent itself dropped
  from its full spool is never waited for.
- Every stored window is judged exactly once, in order per host:
  ``mark_judged(host_id, boot_id, seq, score)`` records that its judgement is
  complete (decisions stored, commands sent). ``unjudged(host_id)`` returns the
  windows committed (and acked) but not yet judged, oldest first, so a
  judgement the database lost after the commit is taken up again once it is
  back; ``unjudged_hosts()`` names the hosts that have any.
  ``judged_since(host_id, span_s)`` returns the host's judged windows within
  ``span_s`` of its newest judged one, oldest first: the judge's horizons are
  rebuilt from them after a restart.
- Alerts, actions and audit rows are plain records; lists come back newest first.

``SqliteStore`` is one connection in WAL mode guarded by a lock, so it may be
called from the event loop or from ``asyncio.to_thread``. ``MemoryStore`` keeps
the same records in dictionaries (tests, and a collector without a disk).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tocsin.v1.errors import ConfigError, TocsinError


class StoreUnavailable(TocsinError):
    """The database cannot take a write now (locked, I/O error); nothing was committed."""


class StoreFull(StoreUnavailable):
    """The database's disk (or its size limit) is full; nothing was committed."""


def unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    """The ``StoreUnavailable`` (or ``StoreFull``) an SQLite error means to the collector."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "full" in str(exc):
        return StoreFull(f"database full: {exc}")
    return StoreUnavailable(f"database unavailable: {exc}")


@dataclass(frozen=True)
class StoredWindow:
    """One window as stored: its identity, timestamps (epoch s), features and wire bytes."""

    seq: int
    start_s: float
    end_s: float
    features: Sequence[float]
    raw: bytes
    score: float | None = None


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
    def committed_seq(self, host_id: str, boot_id: str) -> int: ...
    def mark_judged(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None: ...
    def unjudged(self, host_id: str, limit: int = 1000) -> list[tuple[str, StoredWindow]]: ...
    def unjudged_hosts(self) -> list[str]: ...
    def judged_since(
        self, host_id: str, span_s: float, limit: int = 4096
    ) -> list[StoredWindow]: ...
    def save_alert(self, alert: AlertRecord) -> None: ...
    def list_alerts(self, host_id: str = "", limit: int = 50) -> list[AlertRecord]: ...
    def add_action(self, action: ActionRecord) -> None: ...
    def finish_action(
        self, action_id: str, status: str, detail: str, pids: list[int] | None = None
    ) -> ActionRecord | None: ...
    def get_action(self, action_id: str) -> ActionRecord | None: ...
    def list_actions(self, host_id: str = "", limit: int = 50) -> list[ActionRecord]: ...
    def audit(self, who: str, what: str, detail: str = "") -> None: ...
    def audit_log(self, limit: int = 100) -> list[tuple[float, str, str, str]]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    host_id TEXT PRIMARY KEY, hostname TEXT, agent_version TEXT,
    first_seen REAL, last_seen REAL, isolated INTEGER DEFAULT 0,
    suspended_pids TEXT DEFAULT '[]', tripwire_mode TEXT, clean_disconnect INTEGER DEFAULT 0
);
CREATE TABLE IF NOT EXISTS windows (
    host_id TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,
    start REAL, "end" REAL, score REAL, features TEXT, raw BLOB, judged INTEGER DEFAULT 1,
    UNIQUE(host_id, boot_id, seq)
);
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
# Indexes that need the ``judged`` column (a database from before it gets the
# column first, every old window counting as judged).
_JUDGED_INDEXES = """
CREATE INDEX IF NOT EXISTS windows_unjudged ON windows(host_id, "end") WHERE judged=0;
CREATE INDEX IF NOT EXISTS windows_host_end ON windows(host_id, "end");
"""


class SqliteStore:
    """A ``Store`` in one SQLite file (WAL, synchronous=FULL: an ack survives power loss)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.path = Path(path)  # other tables of the collector live in the same file
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            columns = [r[1] for r in self._db.execute("PRAGMA table_info(windows)")]
            if "judged" not in columns:
                self._db.execute("ALTER TABLE windows ADD COLUMN judged INTEGER DEFAULT 1")
            self._db.executescript(_JUDGED_INDEXES)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {path}: {exc}") from None
        self._lock = threading.Lock()

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                raise unavailable(exc) from exc

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
        " (SELECT COUNT(*) FROM windows w WHERE w.host_id=h.host_id) FROM hosts h"
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
        inserted: list[bool] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for w in windows:
                    cur = self._db.execute(
                        'INSERT OR IGNORE INTO windows(host_id, boot_id, seq, start, "end",'
                        " score, features, raw, judged) VALUES (?,?,?,?,?,?,?,?,0)",
                        (
                            host_id,
                            boot_id,
                            w.seq,
                            w.start_s,
                            w.end_s,
                            w.score,
                            json.dumps([float(v) for v in w.features]),
                            w.raw,
                        ),
                    )
                    inserted.append(cur.rowcount == 1)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:  # SQLITE_FULL may already have rolled back
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise unavailable(exc) from exc
                raise
        return inserted

    def committed_seq(self, host_id: str, boot_id: str) -> int:
        rows = self._exec(
            "SELECT MAX(seq) FROM windows WHERE host_id=? AND boot_id=?", (host_id, boot_id)
        )
        return int(rows[0][0] or 0)

    def mark_judged(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None:
        self._exec(
            "UPDATE windows SET score=?, judged=1 WHERE host_id=? AND boot_id=? AND seq=?",
            (score, host_id, boot_id, seq),
        )

    _WINDOW_COLS = 'boot_id, seq, start, "end", features, raw, score FROM windows'

    @staticmethod
    def _stored(row: Sequence[Any]) -> tuple[str, StoredWindow]:
        boot_id, seq, start, end, features, raw, score = row
        feats = json.loads(features) if features else []
        return boot_id, StoredWindow(int(seq), start, end, feats, bytes(raw or b""), score)

    def unjudged(self, host_id: str, limit: int = 1000) -> list[tuple[str, StoredWindow]]:
        rows = self._exec(
            f'SELECT {self._WINDOW_COLS} WHERE host_id=? AND judged=0 ORDER BY "end", seq LIMIT ?',
            (host_id, limit),
        )
        return [self._stored(r) for r in rows]

    def unjudged_hosts(self) -> list[str]:
        rows = self._exec("SELECT DISTINCT host_id FROM windows WHERE judged=0 ORDER BY host_id")
        return [r[0] for r in rows]

    def judged_since(self, host_id: str, span_s: float, limit: int = 4096) -> list[StoredWindow]:
        rows = self._exec(
            f'SELECT {self._WINDOW_COLS} WHERE host_id=? AND judged=1 AND "end" >='
            ' (SELECT MAX("end") FROM windows WHERE host_id=? AND judged=1) - ?'
            ' ORDER BY "end" DESC, seq DESC LIMIT ?',
            (host_id, host_id, span_s, limit),
        )
        return [self._stored(r)[1] for r in reversed(rows)]

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

    def list_alerts(self, host_id: str = "", limit: int = 50) -> list[AlertRecord]:
        sql = (
            "SELECT alert_id, host_id, incident_id, severity, score, detected_at, window_start,"
            " window_end, reasons, process, payload, open FROM alerts"
        )
        args: list[Any] = []
        if host_id:
            sql += " WHERE host_id=?"
            args.append(host_id)
        sql += " ORDER BY detected_at DESC, rowid DESC LIMIT ?"
        args.append(limit)
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
            for r in self._exec(sql, args)
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

    def list_actions(self, host_id: str = "", limit: int = 50) -> list[ActionRecord]:
        where, args = (" WHERE host_id=?", [host_id]) if host_id else ("", [])
        ids = self._exec(
            f"SELECT id FROM actions{where} ORDER BY requested_at DESC, rowid DESC LIMIT ?",
            (*args, limit),
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
        with self._lock:
            self._db.close()


class MemoryStore:
    """The same records in dictionaries; nothing survives the process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._hosts: dict[str, HostRecord] = {}
        self._windows: dict[tuple[str, str, int], StoredWindow] = {}
        self._judged: set[tuple[str, str, int]] = set()
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
        count = sum(1 for k in self._windows if k[0] == host_id)
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
        inserted = []
        with self._lock:
            for w in windows:
                key = (host_id, boot_id, w.seq)
                inserted.append(key not in self._windows)
                self._windows.setdefault(key, w)
        return inserted

    def committed_seq(self, host_id: str, boot_id: str) -> int:
        seqs = [k[2] for k in self._windows if k[0] == host_id and k[1] == boot_id]
        return max(seqs, default=0)

    def mark_judged(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None:
        key = (host_id, boot_id, seq)
        if key in self._windows:
            self._windows[key] = replace(self._windows[key], score=score)
            self._judged.add(key)

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
        mine = sorted((w for w in mine if w.end_s >= newest - span_s), key=lambda w: w.end_s)
        return mine[-limit:]

    def save_alert(self, alert: AlertRecord) -> None:
        self._alerts[alert.alert_id] = replace(alert)

    def list_alerts(self, host_id: str = "", limit: int = 50) -> list[AlertRecord]:
        alerts = [a for a in self._alerts.values() if not host_id or a.host_id == host_id]
        order = {k: i for i, k in enumerate(self._alerts)}
        alerts.sort(key=lambda a: (a.detected_at_s, order[a.alert_id]), reverse=True)
        return [replace(a) for a in alerts[:limit]]

    def add_action(self, action: ActionRecord) -> None:
        self._actions[action.action_id] = replace(action)

    def list_actions(self, host_id: str = "", limit: int = 50) -> list[ActionRecord]:
        found = [replace(a) for a in self._actions.values() if not host_id or a.host_id == host_id]
        found.sort(key=lambda a: a.requested_at_s, reverse=True)
        return found[:limit]

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

    def close(self) -> None:
        pass
