"""Recurring benign jobs: a host's nightly backup warns on its first night, not every night.

Contract: ``RoutineJobs(book)`` is the judge's memory of the routine jobs of each
host, kept in a ``RoutineBook`` (one row per host and job).

- ``job_of(window)`` names the job of a window's top writer: its executable and
  its command line without paths, digits folded (``tar czf backup-#-#-#.tar.gz``),
  "" when no writer is known.
- ``routine(reasons)``: the reasons are all of the kinds a routine job raises
  (an anomalous score, a read sweep, archives written, bytes sent); any
  destruction, canary, tripwire or blindness reason is never routine.
- ``learn(host_id, job, started_s, files)``: a run that ended as a warning of
  routine reasons only; remembered with the time of day it started and its size
  (files written, deleted and read), and how many runs were seen. A run at
  another time of day is another usual run of the job (kept beside the first).
- ``expected(host_id, job, started_s)``: the learned run of ``job`` on that host
  whose time of day is within ``hour_tolerance_s`` of ``started_s``'s, or None. A
  job never seen on the host is never expected (exfiltration staging by a
  process never seen before still warns).
- ``too_big(run, files)``: a run past ``size_factor`` times the learned size.

The judge opens the warning of an expected run without posting it, and posts it
once the run grows too big, raises another kind of reason, or turns critical
(``tocsin.collector.decide``). Time is the windows' own (UTC time of day).

``SqliteRoutineBook`` keeps table ``routine_jobs`` in the collector's database
(through its one door, SQLite or PostgreSQL, like the incident book); ``MemoryRoutineBook`` a
dictionary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tocsin.collector.db import Schema, SqlDatabase, upsert_sql
from tocsin.collector.reasons import Reason
from tocsin.v1 import telemetry_pb2 as pb

DAY_S = 86_400.0
ROUTINE_REASONS = frozenset({"anomaly_score", "read_sweep", "archive_created", "net_out_mb"})
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class RoutineRun:
    """What is remembered of a host's job: time of day (s), size, runs seen."""

    host_id: str
    job: str
    day_s: float
    files: int
    runs: int = 1


class RoutineBook(Protocol):
    """Learned runs, several per host and job (one per usual time of day)."""

    def runs(self, host_id: str, job: str) -> list[RoutineRun]: ...
    def put(self, run: RoutineRun, replacing: RoutineRun | None = None) -> None: ...


class MemoryRoutineBook:
    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], list[RoutineRun]] = {}

    def runs(self, host_id: str, job: str) -> list[RoutineRun]:
        return list(self._runs.get((host_id, job), []))

    def put(self, run: RoutineRun, replacing: RoutineRun | None = None) -> None:
        runs = self._runs.setdefault((run.host_id, run.job), [])
        if replacing in runs:
            runs.remove(replacing)
        runs.append(run)


_TABLE = """
CREATE TABLE IF NOT EXISTS routine_jobs (
    host_id TEXT NOT NULL, job TEXT NOT NULL, day_s {real} NOT NULL, files {int}, runs {int},
    PRIMARY KEY (host_id, job, day_s)
);
"""
_SCHEMA = Schema(
    sqlite=_TABLE.format(int="INTEGER", real="REAL"),
    postgresql=_TABLE.format(int="BIGINT", real="DOUBLE PRECISION"),
)
_PUT = upsert_sql(
    "routine_jobs", ("host_id", "job", "day_s", "files", "runs"), ("host_id", "job", "day_s")
)


class SqliteRoutineBook:
    """Routine jobs in table ``routine_jobs`` of the collector's database (one door: ``db``)."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        db.schema(_SCHEMA)

    def runs(self, host_id: str, job: str) -> list[RoutineRun]:
        rows = self.db.execute(
            "SELECT day_s, files, runs FROM routine_jobs WHERE host_id=? AND job=?",
            (host_id, job),
        )
        return [RoutineRun(host_id, job, float(a), int(b), int(c)) for a, b, c in rows]

    def put(self, run: RoutineRun, replacing: RoutineRun | None = None) -> None:
        with self.db.transaction() as con:
            if replacing is not None:
                con.execute(
                    "DELETE FROM routine_jobs WHERE host_id=? AND job=? AND day_s=?",
                    (replacing.host_id, replacing.job, replacing.day_s),
                )
            con.execute(
                _PUT,
                (run.host_id, run.job, run.day_s, run.files, run.runs),
            )


def _day_gap_s(a_s: float, b_s: float) -> float:
    gap = abs(a_s % DAY_S - b_s % DAY_S)
    return min(gap, DAY_S - gap)


class RoutineJobs:
    """The routine jobs of each host (see module contract)."""

    def __init__(
        self,
        book: RoutineBook | None = None,
        hour_tolerance_s: float = 2 * 3600.0,
        size_factor: float = 3.0,
    ) -> None:
        self.book: RoutineBook = book if book is not None else MemoryRoutineBook()
        self.hour_tolerance_s = hour_tolerance_s
        self.size_factor = size_factor

    @staticmethod
    def job_of(w: pb.Window) -> str:
        if not w.top_writers:
            return ""
        p = max(w.top_writers, key=lambda p: (p.files_type_destroyed, p.files_touched))
        words = [x for x in p.cmdline.split()[1:] if os.sep not in x]
        return _DIGITS.sub("#", " ".join([p.exe or p.name, *words]))

    @staticmethod
    def routine(reasons: Iterable[Reason]) -> bool:
        return all(r.kind in ROUTINE_REASONS for r in reasons)

    @staticmethod
    def files_of(w: pb.Window) -> int:
        return int(w.files_created + w.files_modified + w.files_deleted + w.files_read)

    def expected(self, host_id: str, job: str, started_s: float) -> RoutineRun | None:
        near = [
            r
            for r in (self.book.runs(host_id, job) if job else [])
            if _day_gap_s(r.day_s, started_s) <= self.hour_tolerance_s
        ]
        return min(near, key=lambda r: _day_gap_s(r.day_s, started_s), default=None)

    def too_big(self, run: RoutineRun, files: int) -> bool:
        return files > self.size_factor * max(run.files, 1)

    def learn(self, host_id: str, job: str, started_s: float, files: int) -> None:
        if not job:
            return
        seen = self.expected(host_id, job, started_s)  # the same usual run, seen again
        runs = seen.runs + 1 if seen else 1
        self.book.put(RoutineRun(host_id, job, started_s % DAY_S, files, runs), replacing=seen)
