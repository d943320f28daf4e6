"""The one door to the collector's database: an SQLite file or a PostgreSQL server.

Every part that keeps rows (the store, the incident book, the routine book,
the per-host baselines, the webhook outbox) is given one ``SqlDatabase`` and
asks it, never a connection of its own. Two implementations keep one contract:

- ``Database(path)``: one SQLite connection (WAL, ``synchronous=FULL``: what
  is committed survives a power loss; ``busy_timeout`` 5 s), opened once. A
  file that cannot be opened is a ``ConfigError`` naming it.
- ``PgDatabase(dsn)``: one PostgreSQL connection (psycopg 3), opened at once
  (an unreachable or misconfigured server is a ``ConfigError`` naming the
  connection string with its password hidden) and opened again by the next
  call after it was lost. Several collector processes may share the database.

The contract both keep:

- ``schema(script)`` creates what the script declares (``CREATE ... IF NOT
  EXISTS``); a ``Schema`` carries one script per dialect where types differ
  (``REAL``/``BLOB`` against ``DOUBLE PRECISION``/``BYTEA``, an ``INTEGER
  PRIMARY KEY`` against a ``BIGSERIAL``), a plain string is portable. On
  PostgreSQL the script runs under an advisory lock, so workers starting
  together do not race on the catalog. ``ConfigError`` if it fails.
  ``add_column(table, column, decl)`` gives a table made before a column
  existed that column (nothing if it has it).
- SQL is written once with ``?`` placeholders and portable syntax (``INSERT
  ... ON CONFLICT``, never ``INSERT OR ...``; ``upsert_sql`` builds the
  insert-or-replace); ``PgDatabase`` translates the placeholders, in one place.
  ``skip_locked`` is the clause that makes a claiming ``SELECT`` skip rows
  another transaction holds (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite
  has one writer at a time and needs none).
- ``transaction()`` is a context manager giving a handle with ``execute`` and
  ``executemany`` (their cursors have ``rowcount``, ``fetchone``,
  ``fetchall``) inside one transaction: committed when the block ends, rolled
  back on any error. It nests: an inner ``transaction()`` on the same thread
  joins the outer one, so two parts (an alert and its webhook outbox row)
  commit together or not at all. Another thread waits for the whole
  transaction (one re-entrant lock).
- ``execute(sql, args)`` runs one statement in its own transaction (or in the
  one open on this thread) and returns its rows ([] for a statement without).
- A database that cannot take the work now (locked, I/O error, server gone,
  serialisation failure) raises ``StoreUnavailable``; a full disk or size limit
  ``StoreFull``. The caller's contract is that nothing of the transaction was
  committed.
- ``disk_path`` is the file whose filesystem the housekeeper watches (None
  for a server: its disk is the server's to watch). ``where`` names the
  database in messages (never a password).
- Calls block: the collector's async code reaches them through
  ``asyncio.to_thread`` (or accepts a short block for a small read).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tocsin.v1.errors import ConfigError, TocsinError

if TYPE_CHECKING:
    import psycopg


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
class Schema:
    """One part's tables, written for each dialect (where their types differ)."""

    sqlite: str
    postgresql: str


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """What ``transaction()`` gives: statements inside the one open transaction."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...


class SqlDatabase(Protocol):
    """The door every part asks (see module contract)."""

    dialect: str
    where: str
    disk_path: Path | None
    skip_locked: str

    def schema(self, script: Schema | str) -> None: ...
    def add_column(self, table: str, column: str, decl: Schema) -> None: ...
    def transaction(self) -> AbstractContextManager[Tx]: ...
    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...
    def close(self) -> None: ...


def upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """``INSERT`` of ``columns`` that replaces the row with the same ``key`` (both dialects)."""
    rest = [c for c in columns if c not in key] or list(key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
        + ", ".join(f"{c}=excluded.{c}" for c in rest)
    )


def is_postgresql(where: str) -> bool:
    """Whether a ``--store`` value names a PostgreSQL database (a URL) rather than a file."""
    return where.startswith(("postgresql://", "postgres://"))


def redacted(dsn: str) -> str:
    """The connection string without its password, for error lines."""
    return re.sub(
        r"(password\s*=\s*)('[^']*'|\S+)|(://[^:/@]*:)[^@]*@",
        lambda m: (m.group(1) or m.group(3)) + "***" + ("" if m.group(1) else "@"),
        dsn,
    )


class Database:
    """The door to one SQLite file (see module contract)."""

    dialect = "sqlite"
    skip_locked = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(path)
        self.disk_path: Path | None = self.path
        try:
            self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0

    def schema(self, script: Schema | str) -> None:
        """Create what ``script`` declares (``CREATE ... IF NOT EXISTS``); ConfigError if not."""
        text = script.sqlite if isinstance(script, Schema) else script
        with self._lock:
            try:
                self._con.executescript(text)
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open database {self.path}: {exc}") from None

    def add_column(self, table: str, column: str, decl: Schema) -> None:
        with self._lock:
            have = {r[1] for r in self._con.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.schema(f"ALTER TABLE {table} ADD COLUMN {column} {decl.sqlite};")

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


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """Portable SQL (``?`` placeholders) as psycopg wants it (``%s``, a literal ``%%``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    """A ``Tx`` over one psycopg cursor: placeholders translated, results optional."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _PgTx:
        # Without arguments psycopg sends the text as it is (several statements allowed);
        # it is always our own SQL, never text from outside.
        if args:
            self._cur.execute(_pg_sql(sql), args)  # type: ignore[arg-type]
        else:
            self._cur.execute(sql)  # type: ignore[arg-type]
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(_pg_sql(sql), rows)

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall() if self._cur.description else []


# Any constant: the key of the advisory lock that serialises schema scripts.
_SCHEMA_LOCK = 0x70C5_1A


class PgDatabase:
    """The door to one PostgreSQL database (see module contract); ``dsn``: URL or key=value."""

    dialect = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str, connect_timeout_s: int = 10) -> None:
        self.dsn = dsn
        self.where = redacted(dsn)
        self.disk_path: Path | None = None
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._depth = 0
        self._tx: _PgTx | None = None  # the transaction open on the lock's thread
        self._conn: psycopg.Connection[Any] | None = None
        try:
            import psycopg  # noqa: F401  (the scale extra)
        except ImportError:
            raise ConfigError(
                f"database {self.where}: PostgreSQL needs psycopg (pip install 'tocsin[scale]')"
            ) from None
        try:
            with self._lock:
                self._connect()
        except StoreUnavailable as exc:
            raise ConfigError(f"cannot open database {self.where}: {exc}") from None

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s
                )
            except psycopg.Error as exc:
                raise StoreUnavailable(_one_line(exc, self.dsn)) from None
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _translate(self, exc: psycopg.Error) -> StoreUnavailable:
        if getattr(exc, "sqlstate", None) == "53100":  # disk_full
            return StoreFull(f"database full: {_one_line(exc, self.dsn)}")
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop()
        return StoreUnavailable(f"database unavailable: {_one_line(exc, self.dsn)}")

    def schema(self, script: Schema | str) -> None:
        import psycopg

        text = script.postgresql if isinstance(script, Schema) else script
        try:
            with self.transaction() as tx:
                tx.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
                tx.execute(text)
        except (StoreUnavailable, psycopg.Error) as exc:  # a refused CREATE: no privilege
            detail = exc if isinstance(exc, StoreUnavailable) else _one_line(exc, self.dsn)
            raise ConfigError(f"cannot open database {self.where}: {detail}") from None

    def add_column(self, table: str, column: str, decl: Schema) -> None:
        self.schema(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {decl.postgresql};")

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        import psycopg

        with self._lock:
            if self._depth:
                assert self._tx is not None
                self._depth += 1
                try:
                    yield self._tx
                finally:
                    self._depth -= 1
                return
            try:
                conn = self._connect()
                with conn.transaction(), conn.cursor() as cur:
                    self._tx, self._depth = _PgTx(cur), 1
                    try:
                        yield self._tx
                    finally:
                        self._tx, self._depth = None, 0
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise self._translate(exc) from exc

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.transaction() as tx:
            return tx.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._drop()


def _one_line(exc: Exception, dsn: str) -> str:
    """libpq's message on one line, without the connection string's password."""
    text = " ".join(str(exc).split())
    password = re.search(r"password\s*=\s*('[^']*'|\S+)|://[^:/@]*:([^@]*)@", dsn)
    secret = password and (password.group(1) or password.group(2))
    return text.replace(secret, "***") if secret else text
