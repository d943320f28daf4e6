"""The one door to the collector's SQLite file.

Contract of ``Database(path)``:

- One connection (WAL, ``synchronous=FULL``: what is committed survives a
  power loss; ``busy_timeout`` 5 s), opened once, shared by the store, the
  incident book, the per-host baselines and the webhook outbox. A file that
  cannot be opened is a ``ConfigError`` naming it.
- ``transaction()`` is a context manager giving the connection inside one
  ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error). It nests:
  an inner ``transaction()`` on the same thread joins the outer one, so two
  parts (an alert and its webhook outbox row) commit together or not at all.
  Another thread waits for the whole transaction (one re-entrant lock).
- ``execute(sql, args)`` runs one statement in its own transaction (or in the
  one open on this thread) and returns its rows.
- Every SQLite ``OperationalError`` leaves as ``StoreUnavailable``
  (``StoreFull`` when the disk or the size limit is full): the caller's
  contract is that nothing of the transaction was committed.
- Calls block: the collector's async code reaches them through
  ``asyncio.to_thread`` (or accepts a short block for a small read).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


class Database:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0

    def schema(self, script: str) -> None:
        """Create what ``script`` declares (``CREATE ... IF NOT EXISTS``); ConfigError if not."""
        with self._lock:
            try:
                self._con.executescript(script)
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open database {self.path}: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._con
                finally:
                    self._depth -= 1
                return
            try:
                self._con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise unavailable(exc) from exc
            self._depth = 1
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException as exc:
                if self._con.in_transaction:  # SQLITE_FULL may already have rolled back
                    self._con.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise unavailable(exc) from exc
                raise
            finally:
                self._depth = 0

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.transaction() as con:
            return con.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._con.close()
