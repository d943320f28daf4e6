"""A bounded, durable queue of serialized windows waiting for the collector's ack.

Contract: ``WindowSpool(path, max_windows, max_bytes)`` keeps (boot_id, seq,
payload) rows in one SQLite file. ``put`` commits before returning (the window
survives a crash or restart). ``pending()`` returns every unacked row in
insertion order, including rows of earlier boots, each under its own boot_id.
``ack(boot_id, seq)`` removes that boot's rows with seq <= ``seq``
(idempotent). When a ``put`` would exceed ``max_windows`` or ``max_bytes`` the
OLDEST rows are dropped and ``dropped`` grows (persisted across restarts).
Thread-safe.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path


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
        self._db.execute("PRAGMA synchronous=FULL")
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
        with self._lock:
            self._db.close()
