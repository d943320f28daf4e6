"""Silence is an alarm: an agent that stops talking without a Goodbye.

Contract of ``SilenceWatch(sink, silent_after_s)``:

- ``seen(host_id)`` is called for every message a host sends (its streams'
  hellos, windows, heartbeats...). If the host had been declared silent, a
  ``host_back`` event is posted (with how long it was silent).
- ``goodbye(host_id)``: the agent said goodbye (a clean stop); it is no longer
  watched until it is seen again.
- ``check()`` posts one ``host_silent`` event for every watched host not seen
  for more than ``silent_after_s`` (and not already declared silent);
  ``run()`` calls it every ``check_every_s`` until cancelled.
- ``watch(host_id, last_seen_s)`` starts watching a host known from the store
  (a collector restart); its silence counts from no earlier than the
  collector's start, so a restart does not raise alarms for hosts that had no
  chance to reconnect.

Events go through the same ``WebhookSink`` the responder posts alerts to, in
bounded background tasks (``max_inflight``; extra posts are dropped and
counted in ``posts_dropped``). Their body has the alert fields (``event``,
``alert_id``, ``host_id``, ``severity`` "warning" / "info", ``detected_at``,
``reasons``, ``process`` null, ``actions`` []) plus ``last_seen`` and
``silent_for_s``. The agent heartbeats every 10 s when idle, so
``silent_after_s`` should stay well above that (default 60 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from tocsin.collector.events import SilenceEvent
from tocsin.collector.webhook import WebhookSink
from tocsin.v1.errors import TocsinError

log = logging.getLogger("tocsin.collector.silence")


class SilenceWatch:
    def __init__(
        self,
        sink: WebhookSink,
        silent_after_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        check_every_s: float | None = None,
        max_inflight: int = 256,
        max_hosts: int = 100_000,
    ) -> None:
        if silent_after_s <= 0:
            raise ValueError("silent_after_s must be > 0")
        self.sink = sink
        self.silent_after_s = silent_after_s
        self.check_every_s = check_every_s or max(0.2, min(5.0, silent_after_s / 4))
        self._clock = clock
        self._started_s = clock()
        self._last_seen: dict[str, float] = {}
        self._silent: set[str] = set()
        self.max_inflight = max_inflight
        self.max_hosts = max_hosts
        self.posts_dropped = 0
        self.posts_failed = 0
        self.events_posted: list[str] = []
        self._inflight: set[asyncio.Task[None]] = set()

    def watch(self, host_id: str, last_seen_s: float) -> None:
        self._last_seen[host_id] = max(last_seen_s, self._started_s)

    def seen(self, host_id: str) -> None:
        now = self._clock()
        if host_id not in self._last_seen and len(self._last_seen) >= self.max_hosts:
            return  # bounded; an authenticated town never has this many hosts
        before = self._last_seen.get(host_id, now)
        self._last_seen[host_id] = now
        if host_id in self._silent:
            self._silent.discard(host_id)
            log.warning("host %s is back after %.0f s of silence", host_id, now - before)
            self._post(self._event("host_back", host_id, before, now, "info"))

    def goodbye(self, host_id: str) -> None:
        self._last_seen.pop(host_id, None)
        self._silent.discard(host_id)

    def silent_hosts(self) -> list[str]:
        return sorted(self._silent)

    def check(self) -> list[str]:
        """Declare silent every host quiet for longer than ``silent_after_s``; returns them."""
        now = self._clock()
        newly = [
            h
            for h, t in self._last_seen.items()
            if h not in self._silent and now - t > self.silent_after_s
        ]
        for host_id in newly:
            self._silent.add(host_id)
            last = self._last_seen[host_id]
            log.warning("host %s silent for %.0f s without a goodbye", host_id, now - last)
            self._post(self._event("host_silent", host_id, last, now, "warning"))
        return newly

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_every_s)
            self.check()

    def _event(
        self, kind: str, host_id: str, last_seen_s: float, now_s: float, severity: str
    ) -> dict[str, Any]:
        return SilenceEvent(
            kind=kind,
            alert_id=uuid.uuid4().hex[:16],
            host_id=host_id,
            severity=severity,
            last_seen_s=last_seen_s,
            now_s=now_s,
            silent_after_s=self.silent_after_s,
        ).to_json()

    def _post(self, event: dict[str, Any]) -> None:
        if len(self._inflight) >= self.max_inflight:
            self.posts_dropped += 1
            log.warning("webhook backlog full; dropped %s %s", event["event"], event["host_id"])
            return
        self.events_posted.append(f"{event['event']}:{event['host_id']}")
        del self.events_posted[:-1000]
        task = asyncio.get_running_loop().create_task(self._send(event))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self.sink.post(event)
        except TocsinError as exc:
            self.posts_failed += 1
            log.warning("%s", exc)
        except Exception as exc:  # a sink's own storage failing (disk full) must not kill us
            self.posts_failed += 1
            log.error("could not post %s for %s: %s", event["event"], event["host_id"], exc)

    async def drain(self) -> None:
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
