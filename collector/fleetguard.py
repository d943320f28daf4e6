"""The fleet guard: a model bug must not take the whole town offline.

Contract: ``FleetGuard(max_per_minute)``. ``admit(host_id)`` is asked before
an AUTOMATIC isolation: it returns True (and counts it) while fewer than
``max_per_minute`` hosts were admitted in the last 60 s, else False: the
isolation is held for a human, and ``held`` remembers the host. A host
already admitted within the minute is admitted again (a repeated command is
not a new host). ``max_per_minute = 0`` disables the guard (always admits).
Operator isolations never go through the guard. Not thread-safe: the
collector's event loop is its only caller.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

WINDOW_S = 60.0


class FleetGuard:
    def __init__(self, max_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_per_minute < 0:
            raise ValueError("max_per_minute must be >= 0")
        self.max_per_minute = max_per_minute
        self._clock = clock
        self._admitted: OrderedDict[str, float] = OrderedDict()
        self.held: OrderedDict[str, float] = OrderedDict()
        self.held_total = 0

    def _expire(self, now: float) -> None:
        while self._admitted and next(iter(self._admitted.values())) <= now - WINDOW_S:
            self._admitted.popitem(last=False)
        while self.held and next(iter(self.held.values())) <= now - 3600:
            self.held.popitem(last=False)

    def recent(self) -> int:
        """Hosts admitted for isolation in the last minute."""
        self._expire(self._clock())
        return len(self._admitted)

    def admit(self, host_id: str) -> bool:
        now = self._clock()
        self._expire(now)
        if self.max_per_minute == 0 or host_id in self._admitted:
            self._admitted[host_id] = self._admitted.get(host_id, now)
            return True
        if len(self._admitted) < self.max_per_minute:
            self._admitted[host_id] = now
            return True
        self.held[host_id] = now
        self.held.move_to_end(host_id)
        self.held_total += 1
        return False
