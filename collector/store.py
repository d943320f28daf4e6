"""Where the collector keeps what it was told and what it did.

Contract of every ``Store``:

- ``add_windows(host_id, boot_id, windows)`` returns, per window, ``True`` if it
  was inserted and ``False`` if ``(host_id, boot_id, seq)`` was already stored
  (a resend after a reconnect). When it returns, the inserted windows are
  committed: an ack sent after it never covers a window a crash could lose.
  ``add_window_batch(items)`` does the same for ``(host_id, boot_id, window)``
  items of any hosts in one transaction (the ingest's group commit).
- ``set_window_score`` may be kept until the next window transaction or
  ``close``: a score is derived from the stored window and costs no commit of
  its own.
- ``committed_seq(host_id, boot_id)`` is the highest seq stored for that boot
  (0 if none). The agent sends a boot's windows in ascending order on a stream
  and every window is committed before the next one is read, so every window
  the agent sent with a lower seq is stored too; a seq the agent itself dropped
  from its full spool is never waited for.
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


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
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


# (host_id, boot_id, window): one window of a group commit.
WindowItem = tuple[str, str, StoredWindow]


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
    def add_window_batch(self, items: Sequence[WindowItem]) -> list[bool]: ...
    def committed_seq(self, host_id: str, boot_id: str) -> int: ...
    def set_window_score(self, host_id: str, boot_id: str, seq: int, score: float) -> None: ...
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
    start REAL, "end" REAL, score REAL, features TEXT, raw BLOB,
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
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {path}: {exc}") from None
        self._lock = threading.Lock()
        # Scores waiting for the next window transaction: (score, host, boot, seq), under
        # a lock of their own: the event loop adds them while a batch commits.
        self._scores: list[tuple[float, str, str, int]] = []
        self._scores_lock = threading.Lock()

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                raise _unavailable(exc) from exc

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
        return self.add_window_batch([(host_id, boot_id, w) for w in windows])

    def add_window_batch(self, items: Sequence[WindowItem]) -> list[bool]:
        inserted: list[bool] = []
        with self._lock:
            with self._scores_lock:
                scores = self._scores[:]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for host_id, boot_id, w in items:
                    cur = self._db.execute(
                        'INSERT OR IGNORE INTO windows(host_id, boot_id, seq, start, "end",'
                        " score, features, raw) VALUES (?,?,?,?,?,?,?,?)",
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
                self._write_scores(scores)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:  # SQLITE_FULL may already have rolled back
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise _unavailable(exc) from exc
                raise
            with self._scores_lock:
                del self._scores[: len(scores)]
        return inserted

    def _write_scores(self, scores: list[tuple[float, str, str, int]]) -> None:
        """Waiting scores, inside the caller's transaction (``_lock`` held)."""
        if scores:
            self._db.executemany(
                "UPDATE windows SET score=? WHERE host_id=? AND boot_id=? AND seq=?", scores
            )

    def committed_seq(self, host_id: str, boot_id: str) -> int:
        rows = self._exec(
            "SELECT MAX(seq) FROM windows WHERE host_id=? AND boot_id=?", (host_id, boot_id)
        )
        return int(rows[0][0] or 0)

    def set_window_score(self, host_id: str, boot_id: str, seq: int, score: float) -> None:
        with self._scores_lock:
            self._scores.append((score, host_id, boot_id, seq))

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
            with self._scores_lock:
                scores = self._scores[:]
            if scores:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._write_scores(scores)
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    pass  # derived figures (closing rolls back); the windows are committed
            self._db.close()


class MemoryStore:
    """The same records in dictionaries; nothing survives the process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._hosts: dict[str, HostRecord] = {}
        self._windows: dict[tuple[str, str, int], StoredWindow] = {}
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
        return self.add_window_batch([(host_id, boot_id, w) for w in windows])

    def add_window_batch(self, items: Sequence[WindowItem]) -> list[bool]:
        inserted = []
        with self._lock:
            for host_id, boot_id, w in items:
                key = (host_id, boot_id, w.seq)
                inserted.append(key not in self._windows)
                self._windows.setdefault(key, w)
        return inserted

    def committed_seq(self, host_id: str, boot_id: str) -> int:
        seqs = [k[2] for k in self._windows if k[0] == host_id and k[1] == boot_id]
        return max(seqs, default=0)

    def set_window_score(self, host_id: str, boot_id: str, seq: int, score: float) -> None:
        key = (host_id, boot_id, seq)
        if key in self._windows:
            self._windows[key] = replace(self._windows[key], score=score)

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
