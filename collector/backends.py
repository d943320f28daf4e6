"""The collector's storage opened from one location: an SQLite file or a PostgreSQL URL.

``open_storage(where, destinations, ...)`` is what every collector process
that keeps rows runs (the embedded collector's ``build``, a scale-out worker):

- ``where`` is a file path (the embedded default: SQLite) or a
  ``postgresql://`` / ``postgres://`` URL (``is_postgresql``).
- It opens the one database door (``open_database``: the door alone, for
  parts and tools that need no store) (``tocsin.collector.db``), and on it the
  store, the incident book, the routine book and the webhook outbox, so an
  alert and its outbox rows commit in one transaction on either engine; the
  per-host baselines are given ``storage.db``.
- Alerts stored within ``max_age_s`` whose webhook never reached the outbox
  are queued (``Outbox.recover``): idempotent, so several workers may do it.
- A database that cannot be opened (unreachable server, refused login, a
  file in a missing directory) is one ``ConfigError`` line naming it, the
  password hidden.

``storage.close()`` closes the database (the parts share it, none closes it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tocsin.collector.db import Database, PgDatabase, SqlDatabase, is_postgresql
from tocsin.collector.incidents import IncidentBook, SqliteIncidentBook
from tocsin.collector.outbox import Destination, Outbox
from tocsin.collector.routine import RoutineBook, SqliteRoutineBook
from tocsin.collector.store import SqliteStore, Store

log = logging.getLogger("tocsin.collector")


def open_database(where: str) -> SqlDatabase:
    """The door to the database at ``where`` (path or PostgreSQL URL); ConfigError if not."""
    return PgDatabase(where) if is_postgresql(where) else Database(Path(where))


@dataclass(frozen=True)
class Storage:
    """Every part that keeps rows, on one database."""

    db: SqlDatabase
    store: Store
    book: IncidentBook
    routine: RoutineBook
    outbox: Outbox

    def close(self) -> None:
        self.db.close()


def open_storage(
    where: str,
    destinations: Sequence[Destination] = (),
    *,
    retry_initial_s: float = 1.0,
    retry_max_s: float = 300.0,
    max_age_s: float = 86400.0,
    deliverer: str = "",
    clock: Callable[[], float] = time.time,
) -> Storage:
    """The storage at ``where`` (see module contract)."""
    db: SqlDatabase
    make_store: Callable[[], Store]
    if is_postgresql(where):
        from tocsin.collector.pgstore import PgStore  # psycopg: the scale extra

        pg = db = PgDatabase(where)
        make_store = lambda: PgStore(pg, clock)  # noqa: E731
    else:
        lite = db = Database(Path(where))
        make_store = lambda: SqliteStore(lite, clock)  # noqa: E731
    try:
        store = make_store()
        outbox = Outbox(
            db,
            destinations,
            clock=clock,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            max_age_s=max_age_s,
            deliverer=deliverer,
        )
        storage = Storage(db, store, SqliteIncidentBook(db), SqliteRoutineBook(db), outbox)
        since = clock() - max_age_s
        recent = store.list_alerts(limit=10_000)
        recovered = outbox.recover(a.payload for a in recent if a.detected_at_s >= since)
    except BaseException:
        db.close()
        raise
    if recovered:
        log.warning("%d stored alerts had not reached the webhook outbox; queued now", recovered)
    return storage
