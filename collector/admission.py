"""Admission under overload: evidence always, quiet windows pushed back while behind.

Contract of ``Admission(config, backlog, hot)``:

- ``backlog()`` says how many windows the collector holds in memory now
  (waiting for their commit or their judgement): ``in_flight``.
- ``run()`` (forever, started with the collector) measures how late the event
  loop runs a timer of ``tick_s``: ``lag_s``, smoothed over about ten ticks
  (a moment when the machine lends the collector no CPU is not overload).
  A tick counts as late only while the process used at least
  ``config.busy_share`` of a core over it (``cpu_clock``: the CPU time of
  all its threads): a loop late because the machine gave the collector no
  CPU (another tenant of a shared host, a virtual machine's stolen time) or
  because a thread waited for the disk is not a collector with too much to
  do, and reading it so kept agents paused while the collector sat idle.
- ``behind`` is true while more than ``config.max_in_flight`` windows are in
  flight or the loop lags more than ``config.max_lag_s``.
- ``grace(host_id)`` is asked when a host's stream begins: whether its windows
  are all admitted for its first ``config.grace_s``. An agent pushed back comes
  back before its wait is over only when it has spooled evidence (its shipper
  does so); it then resends its spool in order, the quiet windows before the
  attack window, and is not sent away before it reaches it: grace. An agent back
  on schedule has nothing urgent: no grace, so its spooled quiet windows do not
  flood a collector still behind (with grace for all, every return brought a
  spool's worth of windows, and the collector never caught up). A host never
  pushed back (a new agent, one back after a network cut) has grace.
- ``pushback_ms(host_id, window, stream_age_s)`` is None when the window is
  admitted, else how long its agent should wait before it comes back (the
  ``grpc-retry-pushback-ms`` hint of a RESOURCE_EXHAUSTED end). A window with
  evidence (``tocsin.v1.evidence``) is always admitted, and so is every window
  of a host that ``hot(host_id)`` says is under attack (an open critical incident, a
  command waiting for it: its stream must stay up for the suspend to reach it),
  and every window of a stream in its grace (``stream_age_s`` below ``config.grace_s``; pass
  infinity for a stream without grace). Otherwise a window is refused while the
  collector is behind; the wait is drawn in [``config.pushback_ms``,
  2 x ``config.pushback_ms``) so the agents pushed back together do not all return
  together. The agent keeps the window spooled (nothing was acked) and comes
  back earlier if it spools evidence meanwhile.
- ``hold(key, resume)``: a stream paused on its open connection (its agent
  understands ``Pause``) waits in a queue, first paused first; ``run()`` calls
  ``resume()`` for some of them every tick while the collector has room (fewer
  than half ``config.max_in_flight`` windows in flight or promised, the loop
  no more than ``config.max_lag_s`` late): one more stream per tick than the
  tick before, half as many after a tick without room. ``resume()`` returns
  how many windows that stream will bring back (its agent resends every
  window the pause held): they are promised until ``returned(key)`` (the
  stream caught up, or ended), so that streams called back in one tick cannot
  bring more than the room there was (without it, the spools of streams called
  back while the first ones were still on their way piled up to ten times
  ``max_in_flight``, and every message waited behind them). The collector, not the agents' timers,
  decides when paused agents come back: an agent paused for good measure would
  otherwise come back on its own schedule, be paused again, and the collector
  spend what room it had on pausing. ``release(key)``: the stream came back or
  ended. ``held`` says how many wait.
- ``refused`` counts refusals; at most one warning line every ``config.log_every_s``
  says how many there were.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.evidence import carries_evidence

log = logging.getLogger("tocsin.collector.admission")

# A host back this much before its wait is over came back early (it has evidence).
EARLY_MARGIN_S = 0.05
MAX_WAITING = 200_000
# Paused streams resumed per tick, at most (20 ticks a second).
MAX_RESUMED_PER_TICK = 200


@dataclass(frozen=True)
class AdmissionConfig:
    max_in_flight: int = 2000
    max_lag_s: float = 0.1
    pushback_ms: int = 5000
    grace_s: float = 1.0
    tick_s: float = 0.05
    log_every_s: float = 10.0
    busy_share: float = 0.8


class Admission:
    def __init__(
        self,
        config: AdmissionConfig,
        backlog: Callable[[], int],
        hot: Callable[[str], bool] = lambda host_id: False,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.config, self._backlog, self._hot = config, backlog, hot
        self._clock, self._rand, self._cpu_clock = clock, rand, cpu_clock
        self.lag_s = 0.0
        self.refused = 0
        self._logged = (clock(), 0)  # when the last warning was, and the count then
        # Hosts pushed back -> until when they were told to wait (``grace``).
        self._waiting: dict[str, float] = {}
        # Paused streams, first paused first -> how to tell each to come back.
        self._held: collections.OrderedDict[Hashable, Callable[[], None]] = (
            collections.OrderedDict()
        )
        self._resume_per_tick = 1
        # Streams called back and not caught up yet -> the windows they bring.
        self._returning: dict[Hashable, int] = {}
        self.promised = 0

    @property
    def in_flight(self) -> int:
        return self._backlog()

    @property
    def behind(self) -> bool:
        return self.in_flight > self.config.max_in_flight or self.lag_s > self.config.max_lag_s

    def grace(self, host_id: str) -> bool:
        until = self._waiting.pop(host_id, None)
        return until is None or self._clock() < until - EARLY_MARGIN_S

    def pushback_ms(self, host_id: str, w: pb.Window, stream_age_s: float) -> int | None:
        if stream_age_s < self.config.grace_s or not self.behind or carries_evidence(w):
            return None
        if self._hot(host_id):
            return None
        self.refused += 1
        now = self._clock()
        wait_ms = int(self.config.pushback_ms * (1.0 + self._rand()))
        if len(self._waiting) >= MAX_WAITING:
            self._waiting.clear()  # forgotten hosts get grace once: never refused for it
        self._waiting[host_id] = now + wait_ms / 1000.0
        at, count = self._logged
        if now - at >= self.config.log_every_s:
            log.warning(
                "collector behind (%d windows in flight, %d promised, event loop %.0f ms late):"
                " %d quiet stream(s) pushed back in the last %.0f s; windows with"
                " evidence are still taken",
                self.in_flight,
                self.promised,
                self.lag_s * 1000,
                self.refused - count,
                now - at,
            )
            self._logged = (now, self.refused)
        return wait_ms

    @property
    def held(self) -> int:
        return len(self._held)

    def hold(self, key: Hashable, resume: Callable[[], int]) -> None:
        self._held[key] = resume

    def release(self, key: Hashable) -> None:
        self._held.pop(key, None)

    def returned(self, key: Hashable) -> None:
        self.promised -= self._returning.pop(key, 0)

    def resume_some(self) -> int:
        """One tick's resumes (see the contract); how many streams were told to come back."""
        if not self._held:
            return 0
        limit = self.config.max_in_flight // 2
        in_flight = self.in_flight
        if in_flight + self.promised > limit or self.lag_s > self.config.max_lag_s:
            self._resume_per_tick = max(1, self._resume_per_tick // 2)
            return 0
        n = 0
        while n < self._resume_per_tick and self._held and in_flight + self.promised <= limit:
            key, resume = self._held.popitem(last=False)
            bringing = max(1, resume())
            self.promised += bringing - self._returning.get(key, 0)
            self._returning[key] = bringing
            n += 1
        self._resume_per_tick = min(self._resume_per_tick + 1, MAX_RESUMED_PER_TICK)
        return n

    async def run(self) -> None:
        while True:
            t0, cpu0 = self._clock(), self._cpu_clock()
            await asyncio.sleep(self.config.tick_s)
            self.tick(self._clock() - t0, self._cpu_clock() - cpu0)

    def tick(self, wall_s: float, cpu_s: float) -> None:
        """One tick of ``run``: it took ``wall_s`` and the process used ``cpu_s``."""
        late = max(0.0, wall_s - self.config.tick_s)
        if cpu_s < self.config.busy_share * wall_s:
            late = 0.0  # late, but not busy: the machine's doing, not a backlog
        self.lag_s += (late - self.lag_s) * 0.1
        self.resume_some()
