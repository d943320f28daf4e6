"""What the judge stage counts as windows go through it, for ``/metrics`` to read.

``WindowMeter`` is a plain part of the stage, always there (a few integer
additions per window): ``window(host_id, w)`` counts the file events, the
events the agent lost and its spool drops; ``score(value)`` counts one anomaly
score into a histogram, whichever model produced it (the shipped one or a
host's own).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter

from tocsin.v1 import telemetry_pb2 as pb

SCORE_BUCKETS = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0)
EVENT_KINDS = ("created", "modified", "deleted", "moved")


class WindowMeter:
    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.agent_events_dropped = 0
        self.spool_dropped: dict[str, int] = {}
        self._lock = threading.Lock()
        self._bucket_counts = [0] * len(SCORE_BUCKETS)
        self._count = 0
        self._total = 0.0

    def window(self, host_id: str, w: pb.Window) -> None:
        self.events["created"] += int(w.events_created)
        self.events["modified"] += int(w.events_modified)
        self.events["deleted"] += int(w.events_deleted)
        self.events["moved"] += int(w.events_moved)
        self.agent_events_dropped += int(w.events_dropped) + int(w.queue_overflows)
        self.spool_dropped[host_id] = int(w.spool_dropped)

    def score(self, value: float) -> None:
        if not math.isfinite(value):
            return
        i = bisect.bisect_left(SCORE_BUCKETS, value)
        with self._lock:
            if i < len(SCORE_BUCKETS):
                self._bucket_counts[i] += 1
            self._count += 1
            self._total += value

    def histogram(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (upper bound, count) buckets ending with +Inf, and the sum of scores."""
        with self._lock:
            cumulative, running = [], 0
            for bound, n in zip(SCORE_BUCKETS, self._bucket_counts, strict=True):
                running += n
                cumulative.append((repr(bound), float(running)))
            cumulative.append(("+Inf", float(self._count)))
            return cumulative, self._total
