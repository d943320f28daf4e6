"""A real PostgreSQL cluster in a temporary directory, for the tests (Debian's postgresql).

``pg_server()`` runs ``initdb`` and ``pg_ctl start`` (as the ``postgres``
system user when the tests run as root, PostgreSQL refuses root) with a Unix
socket in the directory and no TCP listener at all, creates database
``tocsin`` and yields its libpq connection string; the cluster is stopped and
removed afterwards. ``pg_missing()`` says why it cannot run here.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def pg_missing() -> str | None:
    if _bindir() is None:
        return "needs PostgreSQL's initdb and pg_ctl (Debian package postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "needs runuser to start PostgreSQL as the postgres user"
    return None


@contextmanager
def pg_server() -> Iterator[str]:
    """(A directory of its own under /tmp: the postgres user must reach it, pytest's is 0700.)"""
    bindir = _bindir()
    assert bindir is not None
    tmp = Path(tempfile.mkdtemp(prefix="tocsin-pg-"))
    data, sock = tmp / "pgdata", tmp / "pgsock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(tmp, 0o755)
        shutil.chown(sock, "postgres")
    data.mkdir(mode=0o700)
    if as_user:
        shutil.chown(data, "postgres")

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    log = tmp / "pg.log"
    if as_user:
        log.touch()
        shutil.chown(log, "postgres")
    opts = f"-k {sock} -c listen_addresses='' -c fsync=on -c max_connections=50"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "start")
    try:
        run(str(bindir / "createdb"), "-h", str(sock), "-U", "postgres", "tocsin")
        yield f"host={sock} user=postgres dbname=tocsin"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(tmp, ignore_errors=True)
