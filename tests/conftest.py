"""Shared test set-up: the helpers in tools/ (webhook receiver) are importable; one PostgreSQL.

``pg_dsn`` gives a test a fresh database in a PostgreSQL cluster started once per session
in a temporary directory (tests/pgserver.py), ``pg_url`` the same as a URL; ``db_location``
is each engine a collector can keep its rows in (``--store``). Without PostgreSQL the tests
that need it skip, except under CI, where they fail: CI installs it.
"""

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests run gRPC servers in threads of the pytest process and start children with
# subprocess (fork, then exec). gRPC's fork handlers, met with gRPC threads busy,
# can crash such a child before its exec (SIGSEGV); nothing here uses gRPC across a
# fork, so they are not installed. Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from pgserver import pg_missing, pg_server

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    missing = pg_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with pg_server() as dsn:
        yield dsn


@pytest.fixture
def pg_dsn(pg_cluster: str) -> str:
    import psycopg

    name = f"t{next(_databases)}"
    with psycopg.connect(pg_cluster, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_cluster.replace("dbname=tocsin", f"dbname={name}")


@pytest.fixture
def pg_url(pg_dsn: str) -> str:
    """``pg_dsn`` as the postgresql:// URL an operator gives ``--store``."""
    parts = dict(kv.split("=", 1) for kv in pg_dsn.split())
    return f"postgresql://{parts['user']}@/{parts['dbname']}?host={parts['host']}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a collector keeps its rows (``--store``): an SQLite file, or PostgreSQL (fresh)."""
    if request.param == "sqlite":
        return str(tmp_path / "c.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """Each ``Store``: the SQLite file, the in-memory one, PostgreSQL (a fresh database)."""
    from tocsin.collector.store import MemoryStore, SqliteStore

    s: object
    if request.param == "sqlite":
        s = SqliteStore.open(tmp_path / "t.db")
    elif request.param == "memory":
        s = MemoryStore()
    else:
        from tocsin.collector.pgstore import PgStore

        s = PgStore.open(request.getfixturevalue("pg_dsn"))
    yield s
    s.close()  # type: ignore[attr-defined]
