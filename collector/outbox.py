"""The durable webhook outbox: events survive a receiver outage and a collector restart.

Contract:

- ``Outbox(db, destinations)`` keeps its rows in table ``outbox`` of the
  collector's database (``tocsin.collector.db``, SQLite or PostgreSQL, shared
  with the store: an alert and its rows commit in one transaction).
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
- Several deliverers (collector workers) may share one database; each row is
  sent by one at a time. A deliverer claims due rows in one short transaction
  (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer
  at a time) by setting ``claimed_by`` to its ``deliverer`` name and
  ``claimed_until`` to now + ``lease_s``; no other deliverer takes a row while
  its lease runs, and the outcome is written only by the holder. At most
  ``max_parallel`` rows are claimed per round and all are POSTed at once, and
  the lease is at least twice the longest destination timeout, so a lease
  outlives the attempt it covers. A deliverer killed mid-lease leaves its rows
  to be claimed by another once the lease has run out (a receiver may then get
  a row it had already received from the dead one: at least once). Leases are
  compared with each deliverer's own clock: keep the workers' clocks in sync.
  A row enqueued by this process wakes its loop at once; one enqueued by
  another process is seen within ``poll_s``.
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
import os
import random
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tocsin.collector.db import Schema, SqlDatabase
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

_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    id {id}, msg_id TEXT NOT NULL, dest TEXT NOT NULL, event TEXT NOT NULL,
    kind TEXT, created {real}, attempts INTEGER DEFAULT 0, next_at {real},
    status TEXT DEFAULT 'pending', last_error TEXT DEFAULT '', done_at {real},
    UNIQUE(msg_id, dest)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_at);
"""
_SCHEMA = Schema(
    sqlite=_TABLE.format(id="INTEGER PRIMARY KEY", real="REAL"),
    postgresql=_TABLE.format(id="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION"),
)
# The lease of several deliverers (a database from before it gets the columns).
_LEASE_COLUMNS = (
    ("claimed_by", Schema("TEXT", "TEXT")),
    ("claimed_until", Schema("REAL", "DOUBLE PRECISION")),
)
# Due rows: (id, msg_id, dest, event, attempts, created).
DueRow = tuple[int, str, str, str, int, float]


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
        db: SqlDatabase,
        destinations: Sequence[Destination],
        poster: Poster = urllib_post,
        clock: Callable[[], float] = time.time,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 300.0,
        max_age_s: float = 86400.0,
        max_pending: int = 100_000,
        max_parallel: int = 8,
        lease_s: float = 60.0,
        deliverer: str = "",
        poll_s: float = 60.0,
    ) -> None:
        self.destinations = {d.dest_id: d for d in destinations}
        self._poster, self._clock = poster, clock
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self.max_age_s, self.max_pending, self.max_parallel = max_age_s, max_pending, max_parallel
        longest_s = max((d.timeout_s for d in destinations), default=0.0)
        self.lease_s = max(lease_s, 2 * longest_s)
        self.deliverer = deliverer or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.poll_s = poll_s
        self.dropped = 0
        self.stats = OutboxStats()
        self.db = db
        db.schema(_SCHEMA)
        for column, decl in _LEASE_COLUMNS:
            db.add_column("outbox", column, decl)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self.db.execute(sql, args)

    # ------------------------------------------------------------ producers
    def recover(self, events: Iterable[dict[str, Any]]) -> int:
        """Queue the events that never reached the outbox; returns how many were queued."""
        queued = 0
        for event in events:
            known = self._exec("SELECT 1 FROM outbox WHERE msg_id=? LIMIT 1", (message_id(event),))
            if not known and self.enqueue(event):
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
        with self.db.transaction() as con:  # joins the caller's, if one is open (an alert's)
            for d in targets:
                con.execute(
                    "INSERT INTO outbox(msg_id, dest, event, kind, created, next_at)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT (msg_id, dest) DO NOTHING",
                    (msg_id, d.dest_id, text, str(event.get("event", "")), now, now),
                )
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
        with self.db.transaction() as con:
            return con.execute(
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

    async def stop(self, flush_s: float = 0.0) -> None:
        """Stop delivering; first, for at most ``flush_s``, deliver what is due now.

        A collector stopped right after an attack still posts its alert: rows due
        now and those this deliverer is sending are given ``flush_s`` to go out.
        What does not (a receiver down, a retry not yet due) stays queued for the
        next start."""
        if self._task is not None and flush_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush(), flush_s)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def close(self) -> None:
        """The database is shared: the assembly closes it."""

    async def _run(self) -> None:
        while True:
            # Cleared before the round, not after: a row enqueued while the round's
            # claim runs in its thread wakes the next round instead of waiting poll_s.
            self._wake.clear()
            try:
                wait_s = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox delivery round failed")
                wait_s = self.retry_initial_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, wait_s))

    async def _flush(self) -> None:
        while True:
            await self.deliver_due()
            if not await asyncio.to_thread(self._owed, self._clock()):
                return
            await asyncio.sleep(0.05)

    def _owed(self, now: float) -> int:
        """Rows due now that no other deliverer holds, and rows this one is sending."""
        if not self.destinations:
            return 0
        marks, dests = self._dests()
        row = self._exec(
            "SELECT COUNT(*) FROM outbox WHERE status='pending' AND dest IN"
            f" ({marks}) AND ((next_at<=? AND (claimed_until IS NULL OR claimed_until<=?))"
            " OR claimed_by=?)",
            (*dests, now, now, self.deliverer),
        )
        return int(row[0][0])

    def _dests(self) -> tuple[str, tuple[str, ...]]:
        """The ``IN (...)`` of this deliverer's destinations and their ids."""
        return ",".join("?" * len(self.destinations)), tuple(self.destinations)

    def _claim(self, now: float) -> list[DueRow]:
        """Take the lease of at most ``max_parallel`` due rows no live lease holds."""
        if not self.destinations:
            return []
        marks, dests = self._dests()
        with self.db.transaction() as tx:
            due = tx.execute(
                "SELECT id, msg_id, dest, event, attempts, created FROM outbox"
                " WHERE status='pending' AND next_at<=?"
                " AND (claimed_until IS NULL OR claimed_until<=?)"
                f" AND dest IN ({marks}) ORDER BY next_at LIMIT ?{self.db.skip_locked}",
                (now, now, *dests, self.max_parallel),
            ).fetchall()
            if due:
                tx.execute(
                    "UPDATE outbox SET claimed_by=?, claimed_until=?"
                    f" WHERE id IN ({','.join('?' * len(due))})",
                    (self.deliverer, now + self.lease_s, *(r[0] for r in due)),
                )
        return [tuple(r) for r in due]

    def _next_due_in(self, now: float) -> float:
        if not self.destinations:
            return self.poll_s
        marks, dests = self._dests()
        row = self._exec(
            "SELECT MIN(CASE WHEN claimed_until > next_at THEN claimed_until ELSE next_at END)"
            f" FROM outbox WHERE status='pending' AND dest IN ({marks})",
            dests,
        )
        if row[0][0] is None:
            return self.poll_s
        return min(self.poll_s, max(0.0, float(row[0][0]) - now))

    def _settle(self, row_id: int, sets: str, args: Sequence[Any]) -> None:
        """Write an attempt's outcome and end the lease, if this deliverer still holds it."""
        with self.db.transaction() as tx:
            done = tx.execute(
                f"UPDATE outbox SET {sets}, claimed_by=NULL, claimed_until=NULL"
                " WHERE id=? AND claimed_by=?",
                (*args, row_id, self.deliverer),
            ).rowcount
        if not done:
            log.warning("webhook outbox row %d: lease lost before its outcome was written", row_id)

    async def deliver_due(self) -> float:
        """Attempt every due row once; returns seconds until the next row is due."""
        due = await asyncio.to_thread(self._claim, self._clock())
        await asyncio.gather(*(self._attempt(*r) for r in due))
        return await asyncio.to_thread(self._next_due_in, self._clock())

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
            await asyncio.to_thread(
                self._settle,
                row_id,
                "status='delivered', attempts=?, done_at=?, last_error=''",
                (attempts, now),
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
            await asyncio.to_thread(
                self._settle,
                row_id,
                "status='rejected', attempts=?, done_at=?, last_error=?",
                (attempts, now, error),
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
            await asyncio.to_thread(
                self._settle,
                row_id,
                "status='expired', attempts=?, done_at=?, last_error=?",
                (attempts, now, error),
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
        await asyncio.to_thread(
            self._settle,
            row_id,
            "attempts=?, next_at=?, last_error=?",
            (attempts, now + delay, error),
        )
