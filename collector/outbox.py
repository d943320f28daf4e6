"""The durable webhook outbox: events survive a receiver outage and a collector restart.

Contract:

- ``Outbox(db_path, destinations)`` keeps its rows in table ``outbox`` of the
  collector's SQLite file (its own connection, WAL).
- ``enqueue(event)`` is synchronous and durable: when it returns, one row per
  destination that wants the event is committed, all with the same message id
  (``webhook-id``), so a crash right after still delivers it. It never blocks
  on a receiver. Beyond ``max_pending`` undelivered rows the event is refused
  and counted in ``dropped`` (the alert itself stays in the store).
- ``start()`` runs the delivery loop on the running event loop; ``stop()``
  ends it. Due rows are POSTed (rendered by ``formats.render`` at send time,
  signed per attempt when the destination has a secret). A 2xx marks the row
  delivered. Connection errors, 408/425/429/5xx are retried with exponential
  backoff (``retry_initial_s`` doubling to ``retry_max_s``, jitter, and a
  ``Retry-After`` hint honoured up to the cap) until ``max_age_s``, after which
  the row is ``expired``. Other statuses mark it ``rejected`` at once (a
  misconfiguration to fix, logged as an error). Delivery is at least once;
  receivers dedupe on ``webhook-id``.
- ``post(event)`` is ``enqueue`` for callers that await a ``WebhookSink``.
- ``recover(events)``: at start, queues each event whose message id has no row
  yet. The collector passes its recent stored alerts: an alert committed to the
  store by a collector that crashed before queueing it still reaches the
  webhooks. An alert's message id derives from its alert id (``message_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tocsin.collector.formats import FORMATS, render
from tocsin.collector.webhook import parse_secret, redact_url, signed_headers
from tocsin.v1.errors import ConfigError

log = logging.getLogger("tocsin.collector.outbox")

RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
EVENTS = (
    "alert",
    "action",
    "fleet_guard",
    "host_silent",
    "host_back",
    "hook",
    "disk_high",
    "test",
)
SEVERITIES = ("warning", "critical")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, dest TEXT NOT NULL, event TEXT NOT NULL,
    kind TEXT, created REAL, attempts INTEGER DEFAULT 0, next_at REAL,
    status TEXT DEFAULT 'pending', last_error TEXT DEFAULT '', done_at REAL,
    UNIQUE(msg_id, dest)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_at);
"""


def message_id(event: dict[str, Any]) -> str:
    """An event's webhook-id: its own, an alert's from its alert id, else a fresh one."""
    if event.get("webhook_id"):
        return str(event["webhook_id"])
    if event.get("event") == "alert" and event.get("alert_id"):
        return f"msg_{event['alert_id']}"
    return f"msg_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Destination:
    """One receiver: where, in which format, signed with which key, for which events."""

    url: str
    format: str = "generic"
    key: bytes | None = None
    events: frozenset[str] = frozenset(EVENTS)
    min_severity: str = "warning"
    timeout_s: float = 10.0
    name: str = ""
    # How it is shown when unnamed and its redacted URL is another's too ("... #2").
    shown: str = ""

    @property
    def dest_id(self) -> str:
        """The outbox's key for this receiver (its rows are keyed by it); never shown."""
        return self.name or self.url

    @property
    def label(self) -> str:
        """How logs and metric labels show this receiver: its name, else the redacted URL."""
        return self.name or self.shown or redact_url(self.url)

    def wants(self, event: dict[str, Any]) -> bool:
        kind = str(event.get("event", ""))
        if kind not in self.events:
            return False
        if kind == "alert" and self.min_severity == "critical":
            return event.get("severity") == "critical"
        return True


_DEST_KEYS = {"url", "format", "secret", "events", "min_severity", "timeout_s", "name"}


def destination(spec: dict[str, Any], where: str = "webhooks") -> Destination:
    """A ``Destination`` from one ``[[webhooks]]`` table; ``ConfigError`` naming the problem."""
    unknown = set(spec) - _DEST_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    url = spec.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url wants an http:// or https:// URL, got {redact_url(url)}")
    fmt = spec.get("format", "generic")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    secret = spec.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise ConfigError(f"{where}: secret must be a string")
    try:
        key = parse_secret(secret) if secret else None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    default_events = (
        ("alert", "fleet_guard", "host_silent", "test") if fmt == "alertmanager" else EVENTS
    )
    events = spec.get("events", list(default_events))
    if not isinstance(events, list) or any(e not in EVENTS for e in events):
        raise ConfigError(f"{where}: events must be a list of {', '.join(EVENTS)}")
    sev = spec.get("min_severity", "warning")
    if sev not in SEVERITIES:
        raise ConfigError(f"{where}: min_severity must be warning or critical, not {sev!r}")
    timeout_s = spec.get("timeout_s", 10.0)
    if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 120:
        raise ConfigError(f"{where}: timeout_s must be a number of seconds in (0, 120]")
    return Destination(
        url=url,
        format=str(fmt),
        key=key,
        events=frozenset(events) | {"test"},
        min_severity=str(sev),
        timeout_s=float(timeout_s),
        name=str(spec.get("name", "")),
    )


# (url, body, headers, timeout_s) -> (http status or 0 for no answer, error text, retry-after s)
Poster = Callable[[str, bytes, dict[str, str], float], tuple[int, str, float | None]]


def urllib_post(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> tuple[int, str, float | None]:
    """POST with urllib: (status, error, Retry-After seconds); status 0 = no answer."""
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "tocsin-collector", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read(65536)
            return int(resp.status), "", None
    except urllib.error.HTTPError as exc:
        after = exc.headers.get("Retry-After") if exc.headers else None
        try:
            hint = float(after) if after else None
        except ValueError:
            hint = None
        return exc.code, f"HTTP {exc.code}", hint
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc)), None


def deliver_once(
    dest: Destination,
    msg_id: str,
    event: dict[str, Any],
    poster: Poster = urllib_post,
    now_s: float | None = None,
) -> tuple[int, str]:
    """One signed attempt to one destination: (HTTP status or 0, error text or "")."""
    body = json.dumps(render(dest.format, event), sort_keys=True).encode()
    stamp = int(now_s if now_s is not None else time.time())
    status, error, _ = poster(
        dest.url, body, signed_headers(dest.key, msg_id, stamp, body), dest.timeout_s
    )
    return status, error


@dataclass
class OutboxStats:
    delivered: Counter[str] = field(default_factory=Counter)
    failed_attempts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    expired: Counter[str] = field(default_factory=Counter)


class Outbox:
    """Durable, retrying, signing webhook delivery (see module contract)."""

    def __init__(
        self,
        db_path: Path,
        destinations: Sequence[Destination],
        poster: Poster = urllib_post,
        clock: Callable[[], float] = time.time,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 300.0,
        max_age_s: float = 86400.0,
        max_pending: int = 100_000,
        max_parallel: int = 8,
    ) -> None:
        self.destinations = {d.dest_id: d for d in destinations}
        self._poster, self._clock = poster, clock
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self.max_age_s, self.max_pending, self.max_parallel = max_age_s, max_pending, max_parallel
        self.dropped = 0
        self.stats = OutboxStats()
        try:
            self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open outbox in {db_path}: {exc}") from None
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ producers
    def recover(self, events: Iterable[dict[str, Any]]) -> int:
        """Queue the events that never reached the outbox; returns how many were queued."""
        queued = 0
        for event in events:
            with self._lock:
                known = self._db.execute(
                    "SELECT 1 FROM outbox WHERE msg_id=? LIMIT 1", (message_id(event),)
                ).fetchone()
            if known is None and self.enqueue(event):
                queued += 1
        return queued

    def enqueue(self, event: dict[str, Any]) -> str:
        """Commit one row per interested destination; returns the message id ("" if none)."""
        targets = [d for d in self.destinations.values() if d.wants(event)]
        if not targets:
            return ""
        if self.depth() >= self.max_pending:
            self.dropped += 1
            log.error(
                "webhook outbox full (%d): dropped %s for %s",
                self.max_pending,
                event.get("event"),
                event.get("host_id"),
            )
            return ""
        msg_id = message_id(event)
        now = self._clock()
        text = json.dumps(event, sort_keys=True)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for d in targets:
                    self._db.execute(
                        "INSERT OR IGNORE INTO outbox(msg_id, dest, event, kind, created,"
                        " next_at) VALUES (?,?,?,?,?,?)",
                        (msg_id, d.dest_id, text, str(event.get("event", "")), now, now),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._poke()
        return msg_id

    async def post(self, event: dict[str, Any]) -> None:
        self.enqueue(event)

    async def drain(self) -> None:
        """Nothing to wait for: what was enqueued is stored and delivered by ``start``'s loop."""
        return None

    def _poke(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------ queries
    def prune(self, before_s: float, batch: int = 2000) -> int:
        """Delete at most ``batch`` rows delivered or given up before ``before_s``."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                " WHERE status != 'pending' AND done_at < ? ORDER BY id LIMIT ?)",
                (before_s, batch),
            ).rowcount

    def depth(self) -> int:
        """Rows still to deliver (pending), all destinations."""
        return int(self._exec("SELECT COUNT(*) FROM outbox WHERE status='pending'")[0][0])

    def rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        cols = ("msg_id", "dest", "kind", "status", "attempts", "last_error", "created", "done_at")
        got = self._exec(f"SELECT {', '.join(cols)} FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(cols, r, strict=True)) for r in got]

    # ------------------------------------------------------------ delivery
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def _run(self) -> None:
        while True:
            try:
                wait_s = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox delivery round failed")
                wait_s = self.retry_initial_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, wait_s))

    def _due(self, now: float) -> list[tuple[int, str, str, str, int, float]]:
        if not self.destinations:
            return []
        marks = ",".join("?" * len(self.destinations))
        return self._exec(
            "SELECT id, msg_id, dest, event, attempts, created FROM outbox WHERE status='pending'"
            f" AND next_at<=? AND dest IN ({marks}) ORDER BY next_at LIMIT ?",
            (now, *self.destinations, self.max_parallel * 4),
        )

    def _next_due_in(self, now: float) -> float:
        if not self.destinations:
            return 60.0
        marks = ",".join("?" * len(self.destinations))
        row = self._exec(
            f"SELECT MIN(next_at) FROM outbox WHERE status='pending' AND dest IN ({marks})",
            tuple(self.destinations),
        )
        return 60.0 if row[0][0] is None else min(60.0, max(0.0, float(row[0][0]) - now))

    async def deliver_due(self) -> float:
        """Attempt every due row once; returns seconds until the next row is due."""
        now = self._clock()
        due = self._due(now)
        sem = asyncio.Semaphore(self.max_parallel)

        async def one(row: tuple[int, str, str, str, int, float]) -> None:
            async with sem:
                await self._attempt(*row)

        await asyncio.gather(*(one(r) for r in due))
        return self._next_due_in(self._clock())

    async def _attempt(
        self, row_id: int, msg_id: str, dest_id: str, text: str, attempts: int, created: float
    ) -> None:
        dest = self.destinations[dest_id]
        event = json.loads(text)
        body = json.dumps(render(dest.format, event), sort_keys=True).encode()
        headers = signed_headers(dest.key, msg_id, int(self._clock()), body)
        status, error, hint = await asyncio.to_thread(
            self._poster, dest.url, body, headers, dest.timeout_s
        )
        now = self._clock()
        attempts += 1
        if 200 <= status < 300:
            self.stats.delivered[dest_id] += 1
            self._exec(
                "UPDATE outbox SET status='delivered', attempts=?, done_at=?,"
                " last_error='' WHERE id=?",
                (attempts, now, row_id),
            )
            return
        error = error or f"HTTP {status}"
        if status and status not in RETRYABLE_HTTP:
            self.stats.rejected[dest_id] += 1
            log.error(
                "webhook %s rejected %s %s: %s (not retried)",
                dest.label,
                event.get("event"),
                msg_id,
                error,
            )
            self._exec(
                "UPDATE outbox SET status='rejected', attempts=?, done_at=?,"
                " last_error=? WHERE id=?",
                (attempts, now, error, row_id),
            )
            return
        self.stats.failed_attempts[dest_id] += 1
        if now - created >= self.max_age_s:
            self.stats.expired[dest_id] += 1
            log.error(
                "webhook %s: gave up on %s %s after %d attempts: %s",
                dest.label,
                event.get("event"),
                msg_id,
                attempts,
                error,
            )
            self._exec(
                "UPDATE outbox SET status='expired', attempts=?, done_at=?,"
                " last_error=? WHERE id=?",
                (attempts, now, error, row_id),
            )
            return
        delay = min(self.retry_max_s, self.retry_initial_s * 2 ** (attempts - 1))
        delay *= random.uniform(0.8, 1.2)
        if hint is not None:
            delay = min(self.retry_max_s, max(delay, hint))
        log.warning(
            "webhook %s: %s %s attempt %d failed (%s); retry in %.1f s",
            dest.label,
            event.get("event"),
            msg_id,
            attempts,
            error,
            delay,
        )
        self._exec(
            "UPDATE outbox SET attempts=?, next_at=?, last_error=? WHERE id=?",
            (attempts, now + delay, error, row_id),
        )
