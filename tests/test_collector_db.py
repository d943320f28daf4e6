"""The one database door on each engine (SQLite file, PostgreSQL): the contract parts rely on."""

from __future__ import annotations

import pytest

from tocsin.collector.backends import open_database
from tocsin.collector.db import PgDatabase, Schema, StoreUnavailable, redacted, upsert_sql

_T = Schema(
    sqlite="CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v REAL, n INTEGER);",
    postgresql="CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v DOUBLE PRECISION, n BIGINT);",
)
_PUT = upsert_sql("t", ("k", "v", "n"), ("k",))


def test_nested_transactions_commit_together_or_not_at_all(db_location: str) -> None:
    db = open_database(db_location)
    db.schema(_T)
    db.schema(_T)  # idempotent
    with db.transaction() as tx:
        tx.execute(_PUT, ("a", 1.5, 1))
        with db.transaction() as inner:  # joins the outer one
            inner.execute(_PUT, ("b", 2.5, 2))
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute(_PUT, ("c", 3.5, 3))
        with db.transaction() as inner:
            inner.execute(_PUT, ("a", 9.0, 9))  # replaces a's row...
        raise RuntimeError("...until the outer block fails: nothing of it stays")
    assert db.execute("SELECT k, v, n FROM t ORDER BY k") == [("a", 1.5, 1), ("b", 2.5, 2)]
    # A literal % beside placeholders, written once for both engines.
    assert db.execute("SELECT k FROM t WHERE k LIKE ? AND '%' = '%'", ("a%",)) == [("a",)]
    assert db.execute("UPDATE t SET n = n + 1 WHERE k = ?", ("b",)) == []
    db.close()


def test_a_lost_postgresql_connection_is_unavailable_then_reopened(pg_url: str) -> None:
    db = PgDatabase(pg_url)
    db.schema(_T)
    db.execute(_PUT, ("a", 1.0, 1))
    other = PgDatabase(pg_url)
    (pid,) = db.execute("SELECT pg_backend_pid()")[0]
    other.execute("SELECT pg_terminate_backend(?)", (pid,))
    with pytest.raises(StoreUnavailable):
        db.execute(_PUT, ("b", 2.0, 2))
    assert db.execute("SELECT k FROM t ORDER BY k") == [("a",)]  # the next call reconnects
    db.close()
    other.close()


def test_passwords_never_shown() -> None:
    assert redacted("postgresql://tocsin:s3cr:et@db:5432/t") == "postgresql://tocsin:***@db:5432/t"
    assert redacted("host=db password=s3cret dbname=t") == "host=db password=*** dbname=t"
    assert redacted("host=db password='a b' dbname=t") == "host=db password=*** dbname=t"


def test_a_role_that_may_not_create_tables_is_one_config_line(pg_url: str) -> None:
    from tocsin.collector.backends import open_storage
    from tocsin.v1.errors import ConfigError

    owner = PgDatabase(pg_url)
    owner.execute("CREATE ROLE reader LOGIN")  # PostgreSQL 15: no CREATE on schema public
    owner.close()
    with pytest.raises(ConfigError) as refused:
        open_storage(pg_url.replace("postgresql://postgres@", "postgresql://reader@"))
    line = str(refused.value)
    assert "\n" not in line and line.startswith("cannot open database postgresql://reader@")
    assert "permission denied" in line
