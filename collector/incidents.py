"""Open incidents that survive a collector restart.

Contract of an ``IncidentBook``:

- ``save(rec)`` records an incident's current state (insert or replace);
  ``close(incident_id, closed_at_s)`` marks it closed (kept, for history:
  per-host learning skips the windows a critical incident covered).
- ``open_incidents()`` returns every incident not closed, oldest first; a new
  ``Judge`` given the book starts from them, so a window after a restart
  updates the open incident instead of opening a duplicate.
- ``spans(host_id, severity)`` returns (first_start_s, last_active_s) of the
  host's incidents of that severity, open or closed.

``SqliteIncidentBook`` keeps a table ``incidents`` in the collector's database
through its one door (``tocsin.collector.db``: the shared connection, SQLite
or PostgreSQL; database errors come out as ``StoreUnavailable``);
``MemoryIncidentBook`` keeps a dictionary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tocsin.collector.db import Schema, SqlDatabase, upsert_sql


@dataclass
class IncidentRecord:
    incident_id: str
    host_id: str
    root_pid: int
    severity: str
    first_start_s: float
    last_active_s: float
    reasons: list[str] = field(default_factory=list)
    closed_at_s: float | None = None


class IncidentBook(Protocol):
    def save(self, rec: IncidentRecord) -> None: ...
    def close(self, incident_id: str, closed_at_s: float) -> None: ...
    def open_incidents(self) -> list[IncidentRecord]: ...
    def spans(self, host_id: str, severity: str) -> list[tuple[float, float]]: ...
    def close_db(self) -> None: ...


class MemoryIncidentBook:
    def __init__(self) -> None:
        self._recs: dict[str, IncidentRecord] = {}

    def save(self, rec: IncidentRecord) -> None:
        self._recs[rec.incident_id] = replace(rec, reasons=list(rec.reasons))

    def close(self, incident_id: str, closed_at_s: float) -> None:
        rec = self._recs.get(incident_id)
        if rec is not None:
            rec.closed_at_s = closed_at_s

    def open_incidents(self) -> list[IncidentRecord]:
        recs = [replace(r) for r in self._recs.values() if r.closed_at_s is None]
        return sorted(recs, key=lambda r: r.first_start_s)

    def spans(self, host_id: str, severity: str) -> list[tuple[float, float]]:
        return [
            (r.first_start_s, r.last_active_s)
            for r in self._recs.values()
            if r.host_id == host_id and r.severity == severity
        ]

    def close_db(self) -> None:
        pass


_TABLE = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY, host_id TEXT NOT NULL, root_pid {int}, severity TEXT,
    first_start {real}, last_active {real}, reasons TEXT, closed_at {real}
);
CREATE INDEX IF NOT EXISTS incidents_host ON incidents(host_id, severity);
"""
_SCHEMA = Schema(
    sqlite=_TABLE.format(int="INTEGER", real="REAL"),
    postgresql=_TABLE.format(int="BIGINT", real="DOUBLE PRECISION"),
)
_SAVE = upsert_sql(
    "incidents",
    (
        "incident_id",
        "host_id",
        "root_pid",
        "severity",
        "first_start",
        "last_active",
        "reasons",
        "closed_at",
    ),
    ("incident_id",),
)


class SqliteIncidentBook:
    """Incidents in table ``incidents`` of the collector's database (``tocsin.collector.db``)."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        db.schema(_SCHEMA)

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self.db.execute(sql, args)

    def save(self, rec: IncidentRecord) -> None:
        self._exec(
            _SAVE,
            (
                rec.incident_id,
                rec.host_id,
                rec.root_pid,
                rec.severity,
                rec.first_start_s,
                rec.last_active_s,
                json.dumps(sorted(rec.reasons)),
                rec.closed_at_s,
            ),
        )

    def close(self, incident_id: str, closed_at_s: float) -> None:
        self._exec(
            "UPDATE incidents SET closed_at=? WHERE incident_id=?", (closed_at_s, incident_id)
        )

    def open_incidents(self) -> list[IncidentRecord]:
        rows = self._exec(
            "SELECT incident_id, host_id, root_pid, severity, first_start, last_active, reasons"
            " FROM incidents WHERE closed_at IS NULL ORDER BY first_start"
        )
        return [
            IncidentRecord(
                r[0],
                r[1],
                int(r[2]),
                r[3],
                float(r[4]),
                float(r[5]),
                list(json.loads(r[6] or "[]")),
            )
            for r in rows
        ]

    def spans(self, host_id: str, severity: str) -> list[tuple[float, float]]:
        rows = self._exec(
            "SELECT first_start, last_active FROM incidents WHERE host_id=? AND severity=?",
            (host_id, severity),
        )
        return [(float(a), float(b)) for a, b in rows]

    def close_db(self) -> None:
        """The database is shared: the assembly closes it."""
