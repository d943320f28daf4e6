"""A bounded, durable queue of serialized windows waiting for the collector's ack.

Contract: ``WindowSpool(path, max_windows, max_bytes)`` keeps (boot_id, seq,
payload) rows in one SQLite file. ``put`` commits before returning (the window
survives a crash or restart of the agent) without waiting for the disk: the
spool's own thread (``tocsin-spool-sync``) syncs the log to the disk right
after, so a power loss can take only the windows of the last sync. On a busy
server one fsync can take hundreds of milliseconds, and the window thread, which
puts, must go on probing an attack meanwhile (and the shipper sends what was
put at once). ``close()`` syncs what is left. ``pending()`` returns every unacked row in
insertion order, including rows of earlier boots, each under its own boot_id.
``ack(boot_id, seq)`` removes that boot's rows with seq <= ``seq``
(idempotent). When a ``put`` would exceed ``max_windows`` or ``max_bytes`` the
OLDEST rows are dropped and ``dropped`` grows (persisted across restarts).
Thread-safe.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpooledWindow:
    boot_id: str
    seq: int
    payload: bytes


class WindowSpool:
    """Durable bounded spool (see module contract)."""

    def __init__(
        self, path: Path, max_windows: int = 100_000, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Commits do not sync (WAL: the log stays consistent); the sync thread does.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A 512 KiB page cache: the spool is written once and read back in
        # order, so SQLite's 2 MiB default would only cost the file server RAM.
        self._db.execute("PRAGMA cache_size=-512")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " boot_id TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER)")
        self._lock = threading.Lock()
        self.max_windows = max_windows
        self.max_bytes = max_bytes
        row = self._db.execute("SELECT v FROM meta WHERE k='dropped'").fetchone()
        self._dropped = int(row[0]) if row else 0
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool"
        ).fetchone()
        self._count = int(count)
        self._bytes = int(size)
        self._unsynced = threading.Event()
        self._closing = False
        self.syncs = 0
        self._syncer = threading.Thread(
            target=self._sync_loop, name="tocsin-spool-sync", daemon=True
        )
        self._syncer.start()

    def _sync_loop(self) -> None:
        """Sync the log to the disk after every put (several puts, one sync when busy)."""
        while True:
            self._unsynced.wait()
            self._unsynced.clear()
            self.sync()
            if self._closing:
                return

    def sync(self) -> None:
        """Put what was committed on the disk: an fsync of the write-ahead log.

        Only the log is opened here: SQLite locks the database file and its -shm, and
        closing any descriptor of a file drops every POSIX lock this process holds on
        it; the log carries none. (A checkpoint syncs the database file itself.)
        """
        wal = str(self.path) + "-wal"
        try:
            fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # no log yet
        try:
            os.fsync(fd)
            self.syncs += 1
        except OSError as exc:
            log.warning("spool: cannot sync %s: %s", wal, exc)
        finally:
            os.close(fd)

    def files(self) -> list[str]:
        """The database and the WAL files SQLite keeps open (and locked) beside it."""
        return [str(self.path) + suffix for suffix in ("", "-wal", "-shm")]

    @property
    def dropped(self) -> int:
        """Windows dropped because the spool was full (since the spool file was created)."""
        return self._dropped

    @property
    def depth(self) -> int:
        return self._count

    def put(self, boot_id: str, seq: int, payload: bytes) -> None:
        """Store one window durably, dropping the oldest ones if the spool is full."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped_now = 0
                while self._count > 0 and (
                    self._count + 1 > self.max_windows
                    or self._bytes + len(payload) > self.max_bytes
                ):
                    oid, size = self._db.execute(
                        "SELECT id, LENGTH(payload) FROM spool ORDER BY id LIMIT 1"
                    ).fetchone()
                    self._db.execute("DELETE FROM spool WHERE id=?", (oid,))
                    self._count -= 1
                    self._bytes -= int(size)
                    dropped_now += 1
                self._db.execute(
                    "INSERT INTO spool (boot_id, seq, payload) VALUES (?, ?, ?)",
                    (boot_id, seq, payload),
                )
                self._count += 1
                self._bytes += len(payload)
                if dropped_now:
                    self._dropped += dropped_now
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta (k, v) VALUES ('dropped', ?)",
                        (self._dropped,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._unsynced.set()

    def ack(self, boot_id: str, seq: int) -> int:
        """Remove ``boot_id``'s windows with seq <= ``seq``; returns how many went."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM spool WHERE boot_id=? AND seq<=? RETURNING LENGTH(payload)",
                (boot_id, seq),
            )
            sizes = [int(r[0]) for r in cur.fetchall()]
            self._count -= len(sizes)
            self._bytes -= sum(sizes)
            return len(sizes)

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, SpooledWindow]]:
        """Unacked windows with row id > ``after_id``, oldest first, as (row id, window)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, boot_id, seq, payload FROM spool WHERE id>? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [(int(r[0]), SpooledWindow(r[1], int(r[2]), bytes(r[3]))) for r in rows]

    def close(self) -> None:
        self._closing = True
        self._unsynced.set()
        self._syncer.join(timeout=10)
        with self._lock:
            self._db.close()
