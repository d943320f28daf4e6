"""The ``Store`` on PostgreSQL: for a department whose collector outgrows one machine.

Same contract as ``tocsin.collector.store`` (read it there): windows dedupe on
(host, boot, seq) and are committed when ``add_windows`` returns, each one
counted in its host's hourly rollup in the same transaction; ``prune`` takes
bounded batches; records come back newest first. Differences that follow from
the engine: several collector processes (workers) may share one database, so
ids are database sequences, rollups are added with ``ON CONFLICT ... DO
UPDATE`` (commutative), and ``finish_action`` updates in place.

The database is reached through its one door, ``tocsin.collector.db.PgDatabase``
(one connection guarded by a lock, placeholders and errors translated there),
shared with the incident book, the routine book, the baselines and the webhook
outbox: ``atomic()`` is one PostgreSQL transaction around an alert and its
outbox rows. A lost connection or a server that refuses (shutting down, disk
full) raises ``StoreUnavailable`` (``StoreFull`` for a full disk): nothing was
committed, and the next call reconnects. The view ``windows`` gives the rows
with their host and boot ids, under the column names of the SQLite view.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from tocsin.collector.db import PgDatabase, Tx
from tocsin.collector.store import (
    TALLY_FIELDS,
    ActionRecord,
    AlertRecord,
    HostRecord,
    HourRollup,
    StoredWindow,
    WindowItem,
    WindowTally,
    by_boot,
    hour_of,
    pack_raw,
    unpack_raw,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    host_id TEXT PRIMARY KEY, hostname TEXT NOT NULL DEFAULT '', agent_version TEXT NOT NULL
    DEFAULT '', first_seen DOUBLE PRECISION, last_seen DOUBLE PRECISION,
    isolated BOOLEAN NOT NULL DEFAULT FALSE, suspended_pids JSONB NOT NULL DEFAULT '[]',
    tripwire_mode TEXT NOT NULL DEFAULT '', clean_disconnect BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS boots (
    boot_ref BIGSERIAL PRIMARY KEY, host_id TEXT NOT NULL, boot_id TEXT NOT NULL,
    first_start DOUBLE PRECISION, UNIQUE (host_id, boot_id)
);
CREATE TABLE IF NOT EXISTS window_rows (
    id BIGSERIAL PRIMARY KEY, boot_ref BIGINT NOT NULL, seq BIGINT NOT NULL,
    start_s DOUBLE PRECISION, end_s DOUBLE PRECISION, score DOUBLE PRECISION,
    raw BYTEA NOT NULL, codec SMALLINT NOT NULL DEFAULT 0, UNIQUE (boot_ref, seq)
);
ALTER TABLE window_rows ADD COLUMN IF NOT EXISTS judged BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX IF NOT EXISTS window_rows_unjudged ON window_rows (boot_ref, seq) WHERE NOT judged;
CREATE OR REPLACE VIEW windows AS
    SELECT b.host_id, b.boot_id, w.seq, w.start_s AS start, w.end_s AS "end", w.score, w.raw,
           w.codec, w.judged
    FROM window_rows w JOIN boots b ON b.boot_ref = w.boot_ref;
CREATE TABLE IF NOT EXISTS rollups (
    host_id TEXT NOT NULL, hour BIGINT NOT NULL, windows BIGINT NOT NULL,
    files_written BIGINT NOT NULL, files_deleted BIGINT NOT NULL,
    files_destroyed BIGINT NOT NULL, canary_touches BIGINT NOT NULL,
    events_dropped BIGINT NOT NULL, bytes_written BIGINT NOT NULL,
    max_score DOUBLE PRECISION, PRIMARY KEY (host_id, hour)
);
CREATE TABLE IF NOT EXISTS alerts (
    seq BIGSERIAL, alert_id TEXT PRIMARY KEY, host_id TEXT NOT NULL, incident_id TEXT NOT NULL,
    severity TEXT NOT NULL, score DOUBLE PRECISION, detected_at DOUBLE PRECISION,
    window_start DOUBLE PRECISION, window_end DOUBLE PRECISION, reasons JSONB NOT NULL,
    process JSONB, payload JSONB NOT NULL, open BOOLEAN NOT NULL DEFAULT TRUE
);
CREATE INDEX IF NOT EXISTS alerts_host ON alerts (host_id, detected_at);
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident_id);
CREATE TABLE IF NOT EXISTS actions (
    seq BIGSERIAL, id TEXT PRIMARY KEY, alert_id TEXT NOT NULL, host_id TEXT NOT NULL,
    kind TEXT NOT NULL, requested_by TEXT NOT NULL, requested_at DOUBLE PRECISION,
    status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', pids JSONB NOT NULL DEFAULT '[]',
    finished_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS audit (
    seq BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION, who TEXT, what TEXT, detail TEXT
);
"""

_ADD_ROLLUP = (
    "INSERT INTO rollups (host_id, hour, windows, "
    + ", ".join(TALLY_FIELDS)
    + ", max_score) VALUES (?, ?, ?, "
    + ", ".join("?" for _ in TALLY_FIELDS)
    + ", NULL) ON CONFLICT (host_id, hour) DO UPDATE SET"
    + " windows = rollups.windows + EXCLUDED.windows, "
    + ", ".join(f"{f} = rollups.{f} + EXCLUDED.{f}" for f in TALLY_FIELDS)
)
_ALERT_COLUMNS = (
    "alert_id, host_id, incident_id, severity, score, detected_at, window_start, window_end,"
    " reasons, process, payload, open"
)
_ACTION_COLUMNS = (
    "id, alert_id, host_id, kind, requested_by, requested_at, status, detail, pids, finished_at"
)
_HOST_SQL = (
    "SELECT h.host_id, hostname, agent_version, first_seen, last_seen, isolated,"
    " suspended_pids, tripwire_mode, clean_disconnect,"
    " (SELECT COALESCE(SUM(windows), 0) FROM rollups r WHERE r.host_id = h.host_id)"
    " FROM hosts h"
)


class PgStore:
    """A ``Store`` in PostgreSQL, through the database's one door (``PgDatabase``)."""

    def __init__(self, db: PgDatabase, clock: Callable[[], float] = time.time) -> None:
        self.db, self._clock = db, clock
        self._owns_db = False
        db.schema(_SCHEMA)  # ConfigError if it cannot

    @classmethod
    def open(cls, dsn: str, clock: Callable[[], float] = time.time) -> PgStore:
        """A store with a connection of its own (tests, tools): ``PgStore(PgDatabase(dsn))``."""
        store = cls(PgDatabase(dsn), clock)
        store._owns_db = True
        return store

    def _tx(self) -> AbstractContextManager[Tx]:
        return self.db.transaction()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self.db.execute(sql, args)

    # ------------------------------------------------------------------ hosts
    def upsert_host(
        self, host_id: str, *, hostname: str, agent_version: str, tripwire_mode: str
    ) -> HostRecord:
        now = self._clock()
        self._rows(
            "INSERT INTO hosts (host_id, hostname, agent_version, first_seen, last_seen,"
            " tripwire_mode, clean_disconnect) VALUES (?, ?, ?, ?, ?, ?, FALSE)"
            " ON CONFLICT (host_id) DO UPDATE SET hostname = EXCLUDED.hostname,"
            " agent_version = EXCLUDED.agent_version, last_seen = EXCLUDED.last_seen,"
            " tripwire_mode = EXCLUDED.tripwire_mode, clean_disconnect = FALSE",
            (host_id, hostname, agent_version, now, now, tripwire_mode),
        )
        host = self.get_host(host_id)
        assert host is not None
        return host

    def touch_host(self, host_id: str, *, clean_disconnect: bool | None = None) -> None:
        if clean_disconnect is None:
            self._rows("UPDATE hosts SET last_seen = ? WHERE host_id = ?", (self._clock(), host_id))
        else:
            self._rows(
                "UPDATE hosts SET last_seen = ?, clean_disconnect = ? WHERE host_id = ?",
                (self._clock(), clean_disconnect, host_id),
            )

    @staticmethod
    def _host(r: Sequence[Any]) -> HostRecord:
        return HostRecord(
            host_id=r[0],
            hostname=r[1],
            agent_version=r[2],
            first_seen_s=r[3] or 0.0,
            last_seen_s=r[4] or 0.0,
            isolated=bool(r[5]),
            suspended_pids=list(r[6]),
            tripwire_mode=r[7],
            clean_disconnect=bool(r[8]),
            windows=int(r[9]),
        )

    def get_host(self, host_id: str) -> HostRecord | None:
        rows = self._rows(_HOST_SQL + " WHERE h.host_id = ?", (host_id,))
        return self._host(rows[0]) if rows else None

    def list_hosts(self) -> list[HostRecord]:
        return [self._host(r) for r in self._rows(_HOST_SQL + " ORDER BY h.host_id")]

    def set_host_state(
        self, host_id: str, *, isolated: bool | None = None, suspended_pids: list[int] | None = None
    ) -> None:
        with self._tx() as cur:
            if isolated is not None:
                cur.execute("UPDATE hosts SET isolated = ? WHERE host_id = ?", (isolated, host_id))
            if suspended_pids is not None:
                cur.execute(
                    "UPDATE hosts SET suspended_pids = ? WHERE host_id = ?",
                    (json.dumps(sorted(set(suspended_pids))), host_id),
                )

    # ---------------------------------------------------------------- windows
    def add_windows(
        self, host_id: str, boot_id: str, windows: Sequence[StoredWindow]
    ) -> list[bool]:
        return self.add_window_batch([(host_id, boot_id, w) for w in windows])

    def add_window_batch(self, items: Sequence[WindowItem]) -> list[bool]:
        """Windows of any hosts in one transaction (the ingest's group commit)."""
        if not items:
            return []
        inserted = [False] * len(items)
        with self._tx() as cur:
            for (host_id, boot_id), at in by_boot(items).items():
                new = self._insert(cur, host_id, boot_id, [items[i][2] for i in at])
                for i, ok in zip(at, new, strict=True):
                    inserted[i] = ok
        return inserted

    def _insert(
        self,
        cur: Tx,
        host_id: str,
        boot_id: str,
        windows: Sequence[StoredWindow],
    ) -> list[bool]:
        """One boot's windows and their rollups, inside the caller's transaction."""
        inserted: list[bool] = []
        hours: dict[int, list[int]] = {}
        cur.execute(
            "INSERT INTO boots (host_id, boot_id, first_start) VALUES (?, ?, ?)"
            " ON CONFLICT (host_id, boot_id) DO UPDATE SET host_id = EXCLUDED.host_id"
            " RETURNING boot_ref",
            (host_id, boot_id, min(w.start_s for w in windows)),
        )
        (boot_ref,) = cur.fetchone() or (0,)
        for w in windows:
            raw, codec = pack_raw(w.raw)
            cur.execute(
                "INSERT INTO window_rows (boot_ref, seq, start_s, end_s, score, raw, codec,"
                " judged) VALUES (?, ?, ?, ?, ?, ?, ?, FALSE)"
                " ON CONFLICT (boot_ref, seq) DO NOTHING",
                (boot_ref, w.seq, w.start_s, w.end_s, w.score, raw, codec),
            )
            inserted.append(cur.rowcount == 1)
            if cur.rowcount == 1:
                row = hours.setdefault(hour_of(w.end_s), [0] * (1 + len(TALLY_FIELDS)))
                row[0] += 1
                for i, f in enumerate(TALLY_FIELDS, start=1):
                    row[i] += getattr(w.tally, f)
        for hour, row in sorted(hours.items()):
            cur.execute(_ADD_ROLLUP, (host_id, hour, *row))
        return inserted

    def committed_seq(self, host_id: str, boot_id: str) -> int:
        rows = self._rows(
            "SELECT MAX(seq) FROM window_rows WHERE boot_ref ="
            " (SELECT boot_ref FROM boots WHERE host_id = ? AND boot_id = ?)",
            (host_id, boot_id),
        )
        return int(rows[0][0] or 0)

    def mark_judged(self, host_id: str, boot_id: str, seq: int, score: float | None) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE window_rows SET score = ?, judged = TRUE WHERE seq = ? AND boot_ref ="
                " (SELECT boot_ref FROM boots WHERE host_id = ? AND boot_id = ?)"
                " RETURNING end_s",
                (score, seq, host_id, boot_id),
            )
            row = cur.fetchone()
            if row is not None and score is not None:
                cur.execute(
                    "UPDATE rollups SET max_score = GREATEST(COALESCE(max_score, ?), ?)"
                    " WHERE host_id = ? AND hour = ?",
                    (score, score, host_id, hour_of(row[0])),
                )

    def unjudged(self, host_id: str, limit: int = 1000) -> list[tuple[str, StoredWindow]]:
        rows = self._rows(
            "SELECT b.boot_id, w.seq, w.start_s, w.end_s, w.raw, w.codec, w.score"
            " FROM boots b JOIN window_rows w ON w.boot_ref = b.boot_ref"
            " WHERE b.host_id = ? AND NOT w.judged ORDER BY w.end_s, w.seq LIMIT ?",
            (host_id, limit),
        )
        return [
            (r[0], StoredWindow(r[1], r[2], r[3], unpack_raw(bytes(r[4]), r[5]), score=r[6]))
            for r in rows
        ]

    def unjudged_hosts(self) -> list[str]:
        rows = self._rows(
            "SELECT DISTINCT b.host_id FROM window_rows w JOIN boots b"
            " ON b.boot_ref = w.boot_ref WHERE NOT w.judged ORDER BY b.host_id"
        )
        return [r[0] for r in rows]

    def judged_since(self, host_id: str, span_s: float, limit: int = 4096) -> list[StoredWindow]:
        rows = self._rows(
            "SELECT w.seq, w.start_s, w.end_s, w.raw, w.codec, w.score FROM window_rows w"
            " JOIN boots b ON b.boot_ref = w.boot_ref WHERE b.host_id = ? AND w.judged"
            " AND w.end_s >= (SELECT MAX(w2.end_s) FROM window_rows w2 JOIN boots b2"
            " ON b2.boot_ref = w2.boot_ref WHERE b2.host_id = ? AND w2.judged) - ?"
            " ORDER BY w.end_s DESC, w.seq DESC LIMIT ?",
            (host_id, host_id, span_s, limit),
        )
        return [
            StoredWindow(r[0], r[1], r[2], unpack_raw(bytes(r[3]), r[4]), score=r[5])
            for r in reversed(rows)
        ]

    def rollups(self, host_id: str, since_s: float, until_s: float) -> list[HourRollup]:
        rows = self._rows(
            "SELECT hour, windows, "
            + ", ".join(TALLY_FIELDS)
            + ", max_score FROM rollups WHERE host_id = ? AND hour >= ? AND hour < ?"
            " ORDER BY hour",
            (host_id, hour_of(since_s), until_s),
        )
        return [
            HourRollup(host_id, int(r[0]), int(r[1]), WindowTally(*map(int, r[2:8])), r[8])
            for r in rows
        ]

    def host_windows(
        self, host_id: str, since_s: float, until_s: float, limit: int = 2000
    ) -> list[StoredWindow]:
        rows = self._rows(
            "SELECT w.seq, w.start_s, w.end_s, w.raw, w.codec, w.score FROM window_rows w"
            " JOIN boots b ON b.boot_ref = w.boot_ref WHERE b.host_id = ?"
            " AND w.end_s >= ? AND w.end_s <= ? ORDER BY w.end_s LIMIT ?",
            (host_id, since_s, until_s, limit),
        )
        return [
            StoredWindow(r[0], r[1], r[2], unpack_raw(bytes(r[3]), r[4]), score=r[5]) for r in rows
        ]

    def prune(self, windows_before_s: float, rollups_before_s: float, batch: int = 2000) -> int:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM window_rows WHERE id IN (SELECT id FROM"
                " (SELECT id, end_s FROM window_rows ORDER BY id LIMIT ?) AS front"
                " WHERE end_s < ?)",
                (batch, windows_before_s),
            )
            gone = cur.rowcount
            cur.execute(
                "DELETE FROM rollups WHERE (host_id, hour) IN"
                " (SELECT host_id, hour FROM rollups WHERE hour < ? LIMIT ?)",
                (rollups_before_s, batch),
            )
            gone += cur.rowcount
            if gone == 0:
                cur.execute(
                    "DELETE FROM boots b WHERE NOT EXISTS"
                    " (SELECT 1 FROM window_rows w WHERE w.boot_ref = b.boot_ref)"
                )
        return int(gone)

    # ----------------------------------------------------------------- alerts
    def save_alert(self, alert: AlertRecord) -> None:
        self._rows(
            f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (alert_id) DO UPDATE SET host_id = EXCLUDED.host_id,"
            " incident_id = EXCLUDED.incident_id, severity = EXCLUDED.severity,"
            " score = EXCLUDED.score, detected_at = EXCLUDED.detected_at,"
            " window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,"
            " reasons = EXCLUDED.reasons, process = EXCLUDED.process,"
            " payload = EXCLUDED.payload, open = EXCLUDED.open",
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
                alert.open,
            ),
        )

    def _alerts(
        self, where: str, args: Sequence[Any], limit: int, offset: int = 0
    ) -> list[AlertRecord]:
        rows = self._rows(
            f"SELECT {_ALERT_COLUMNS} FROM alerts{where}"
            " ORDER BY detected_at DESC, seq DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
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
                reasons=list(r[8]),
                process=r[9],
                payload=dict(r[10]),
                open=bool(r[11]),
            )
            for r in rows
        ]

    def list_alerts(self, host_id: str = "", limit: int = 50, offset: int = 0) -> list[AlertRecord]:
        if host_id:
            return self._alerts(" WHERE host_id = ?", (host_id,), limit, offset)
        return self._alerts("", (), limit, offset)

    def incident_alerts(self, incident_id: str) -> list[AlertRecord]:
        return self._alerts(" WHERE incident_id = ?", (incident_id,), 1000)

    # ---------------------------------------------------------------- actions
    def add_action(self, action: ActionRecord) -> None:
        self._rows(
            f"INSERT INTO actions ({_ACTION_COLUMNS}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET alert_id = EXCLUDED.alert_id,"
            " host_id = EXCLUDED.host_id, kind = EXCLUDED.kind,"
            " requested_by = EXCLUDED.requested_by, requested_at = EXCLUDED.requested_at,"
            " status = EXCLUDED.status, detail = EXCLUDED.detail, pids = EXCLUDED.pids,"
            " finished_at = EXCLUDED.finished_at",
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

    @staticmethod
    def _action(r: Sequence[Any]) -> ActionRecord:
        return ActionRecord(
            action_id=r[0],
            alert_id=r[1],
            host_id=r[2],
            kind=r[3],
            requested_by=r[4],
            requested_at_s=r[5],
            status=r[6],
            detail=r[7],
            pids=list(r[8]),
            finished_at_s=r[9],
        )

    def get_action(self, action_id: str) -> ActionRecord | None:
        rows = self._rows(f"SELECT {_ACTION_COLUMNS} FROM actions WHERE id = ?", (action_id,))
        return self._action(rows[0]) if rows else None

    def list_actions(
        self, host_id: str = "", limit: int = 50, offset: int = 0
    ) -> list[ActionRecord]:
        where, args = (" WHERE host_id = ?", (host_id,)) if host_id else ("", ())
        rows = self._rows(
            f"SELECT {_ACTION_COLUMNS} FROM actions{where}"
            " ORDER BY requested_at DESC, seq DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [self._action(r) for r in rows]

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

    # ------------------------------------------------------------------ audit
    def audit(self, who: str, what: str, detail: str = "") -> None:
        self._rows(
            "INSERT INTO audit (at, who, what, detail) VALUES (?, ?, ?, ?)",
            (self._clock(), who, what, detail),
        )

    def audit_log(self, limit: int = 100) -> list[tuple[float, str, str, str]]:
        rows = self._rows(
            "SELECT at, who, what, detail FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def atomic(self) -> AbstractContextManager[object]:
        """One transaction around several writes, the outbox's included (same database)."""
        return self.db.transaction()

    def close(self) -> None:
        """Close the database if this store opened it (``open``); a shared one is the
        assembly's to close."""
        if self._owns_db:
            self.db.close()
