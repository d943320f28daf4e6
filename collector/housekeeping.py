"""Housekeeping: old raw windows pruned, the database's disk watched.

Contract of ``Housekeeper(store, outbox, sink, config)``:

- ``prune_once()`` removes raw windows older than ``retention_days``, hourly
  rollups older than ``rollup_days`` and webhook outbox rows delivered or
  given up longer than ``retention_days`` ago, in batches of ``batch_rows``
  (each one short transaction through the store's own door), pausing
  ``pause_s`` between batches so ingest is never held for longer than one
  batch. Alerts, actions, incidents and audit rows are never pruned. Returns
  the rows removed.
- ``check_disk()`` measures the filesystem holding the database file (none
  when the database is a server, ``db_path`` None: its disk is the server's to
  watch, and ``check_disk`` measures nothing). When its use
  reaches ``disk_warn_ratio`` it logs a warning and posts one ``disk_high``
  event (a warning) to the webhook sink; it posts again only after use fell
  below the ratio by ``disk_rearm_ratio`` and rose again. ``disk_used_ratio``
  is kept for the metrics.
- ``run()`` does both every ``every_s`` until cancelled; blocking calls go
  through ``asyncio.to_thread``.

Every failure (a locked or full database) is logged and retried at the next
round; housekeeping never stops the collector.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tocsin.collector.events import DiskEvent
from tocsin.collector.store import Store, StoreUnavailable
from tocsin.collector.webhook import WebhookSink
from tocsin.v1.errors import TocsinError

log = logging.getLogger("tocsin.collector.housekeeping")

DAY_S = 86400.0


@dataclass(frozen=True)
class RetentionConfig:
    """How long what is kept; defaults: a month of raw windows, a year of rollups."""

    retention_days: float = 30.0
    rollup_days: float = 365.0
    disk_warn_ratio: float = 0.80
    disk_rearm_ratio: float = 0.02
    every_s: float = 300.0
    batch_rows: int = 2000
    pause_s: float = 0.05


class PrunableOutbox(Protocol):
    def prune(self, before_s: float, batch: int) -> int: ...


DiskUsage = Callable[[Path], tuple[int, int]]  # path -> (total bytes, free bytes)


def disk_usage(path: Path) -> tuple[int, int]:
    usage = shutil.disk_usage(path)
    return usage.total, usage.free


class Housekeeper:
    def __init__(
        self,
        store: Store,
        db_path: Path | None,
        outbox: PrunableOutbox | None,
        sink: WebhookSink | None,
        config: RetentionConfig | None = None,
        clock: Callable[[], float] = time.time,
        usage: DiskUsage = disk_usage,
        collector_name: str = "",
    ) -> None:
        self.store = store
        self.db_path = db_path
        self.outbox = outbox
        self.sink = sink
        self.config = config or RetentionConfig()
        self._clock = clock
        self._usage = usage
        self.collector_name = collector_name or socket.gethostname()
        self.disk_used_ratio = 0.0
        self.disk_high = False
        self.rows_pruned = 0
        self.events_posted: list[str] = []

    async def prune_once(self) -> int:
        cfg = self.config
        now = self._clock()
        windows_before = now - cfg.retention_days * DAY_S
        rollups_before = now - cfg.rollup_days * DAY_S
        removed = 0
        while True:
            gone = await asyncio.to_thread(
                self.store.prune, windows_before, rollups_before, cfg.batch_rows
            )
            if self.outbox is not None:
                gone += await asyncio.to_thread(self.outbox.prune, windows_before, cfg.batch_rows)
            removed += gone
            if gone == 0:
                break
            await asyncio.sleep(cfg.pause_s)
        self.rows_pruned += removed
        if removed:
            log.info("pruned %d rows older than the retention period", removed)
        return removed

    async def check_disk(self) -> float:
        cfg = self.config
        if self.db_path is None:
            return 0.0
        total, free = await asyncio.to_thread(self._usage, self.db_path.parent)
        ratio = 1.0 - free / total if total > 0 else 0.0
        self.disk_used_ratio = ratio
        if ratio >= cfg.disk_warn_ratio and not self.disk_high:
            self.disk_high = True
            log.warning(
                "the database's disk (%s) is %.0f %% full: free space or lower"
                " retention_days before the collector has to refuse windows",
                self.db_path.parent,
                ratio * 100,
            )
            await self._post(self._event(ratio, free))
        elif self.disk_high and ratio < cfg.disk_warn_ratio - cfg.disk_rearm_ratio:
            self.disk_high = False
            log.info("the database's disk is back to %.0f %% used", ratio * 100)
        return ratio

    async def run(self) -> None:
        while True:
            try:
                await self.check_disk()
                await self.prune_once()
            except (StoreUnavailable, OSError) as exc:
                log.warning("housekeeping skipped this round: %s", exc)
            await asyncio.sleep(self.config.every_s)

    def _event(self, ratio: float, free: int) -> dict[str, Any]:
        percent = round(ratio * 100, 1)
        disk = self.db_path.parent if self.db_path else "?"
        return DiskEvent(
            alert_id=uuid.uuid4().hex[:16],
            collector_name=self.collector_name,
            at_s=self._clock(),
            used_percent=percent,
            free_bytes=free,
            summary=(
                f"the tocsin collector's disk ({disk}) is {percent:g} % full;"
                f" raw windows are kept {self.config.retention_days:g} days: free space or"
                " lower retention_days before windows have to be refused"
            ),
        ).to_json()

    async def _post(self, event: dict[str, Any]) -> None:
        self.events_posted.append(event["event"])
        if self.sink is None:
            return
        try:
            await self.sink.post(event)
        except TocsinError as exc:
            log.warning("%s", exc)
        except Exception as exc:  # the outbox's own storage failing on a full disk
            log.error("could not post %s: %s", event["event"], exc)
