"""Admission under overload: evidence always, quiet windows pushed back while behind.

Contract of ``Admission``:

- ``holding()`` wraps one window from its receipt to the end of its
  judgement; ``in_flight`` is how many are held now (what the collector keeps
  of agents' windows in memory).
- ``run()`` (forever, started with the collector) measures how late the event
  loop runs a timer of ``tick_s``: ``lag_s``, smoothed over about ten ticks
  (a moment when the machine lends the collector no CPU is not overload).
- ``behind`` is true while more than ``max_in_flight`` windows are in flight
  or the loop lags more than ``max_lag_s``.
- ``pushback_ms(window, stream_age_s)`` is None when the window is admitted,
  else how long its agent should wait before it comes back (the
  ``grpc-retry-pushback-ms`` hint of a RESOURCE_EXHAUSTED end). A window with
  evidence (``tocsin.v1.evidence``) is always admitted, and so is every window
  of a stream younger than ``grace_s``: an agent back from a pushback resends
  its spool in order, the quiet windows before an attack window, and is not
  sent away before it reaches it. Otherwise a window is refused while the
  collector is behind; the wait is drawn in [``pushback_ms``,
  2 x ``pushback_ms``) so the agents pushed back together do not all return
  together. The agent keeps the window spooled (nothing was acked) and comes
  back earlier if it spools evidence meanwhile.
- ``refused`` counts refusals; at most one warning line every ``log_every_s``
  says how many there were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator

from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.evidence import carries_evidence

log = logging.getLogger("tocsin.collector.admission")


class Admission:
    def __init__(
        self,
        max_in_flight: int = 2000,
        max_lag_s: float = 0.15,
        pushback_ms: int = 2000,
        grace_s: float = 1.0,
        tick_s: float = 0.05,
        log_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.max_in_flight, self.max_lag_s = max_in_flight, max_lag_s
        self.base_pushback_ms, self.grace_s = pushback_ms, grace_s
        self.tick_s, self.log_every_s = tick_s, log_every_s
        self._clock, self._rand = clock, rand
        self.in_flight = 0
        self.lag_s = 0.0
        self.refused = 0
        self._logged = (clock(), 0)  # when the last warning was, and the count then

    @property
    def behind(self) -> bool:
        return self.in_flight > self.max_in_flight or self.lag_s > self.max_lag_s

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def pushback_ms(self, w: pb.Window, stream_age_s: float) -> int | None:
        if stream_age_s < self.grace_s or not self.behind or carries_evidence(w):
            return None
        self.refused += 1
        now = self._clock()
        at, count = self._logged
        if now - at >= self.log_every_s:
            log.warning(
                "collector behind (%d windows in flight, event loop %.0f ms late):"
                " %d quiet stream(s) pushed back in the last %.0f s; windows with"
                " evidence are still taken",
                self.in_flight,
                self.lag_s * 1000,
                self.refused - count,
                now - at,
            )
            self._logged = (now, self.refused)
        return int(self.base_pushback_ms * (1.0 + self._rand()))

    async def run(self) -> None:
        while True:
            t0 = self._clock()
            await asyncio.sleep(self.tick_s)
            late = max(0.0, self._clock() - t0 - self.tick_s)
            self.lag_s += (late - self.lag_s) * 0.1
