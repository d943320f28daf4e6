"""Per-agent rate limits: how much one host may send, whatever its streams.

Contract: ``AgentRateLimits(limits)`` keeps two token buckets per host id (messages
and bytes, each refilled at its rate up to its burst). ``admit(host_id,
n_bytes)`` takes one message and ``n_bytes`` from that host's buckets and returns
None, or, when either bucket cannot pay, takes nothing and returns a
``Refusal`` saying which limit was hit and how long to wait before the buckets
hold a useful amount again (``retry_after_s``, sent to the agent as the
``grpc-retry-pushback-ms`` hint). Buckets outlive streams (reconnecting does
not refill them) and at most ``max_hosts`` are kept (least recently used
forgotten first), so unknown host ids cannot grow memory without bound.

The defaults are generous: an honest agent sends about one window a second and
resends its spool after an outage as fast as the collector commits; a
backlog larger than the burst is taken in bursts, the stream ending with
RESOURCE_EXHAUSTED and a hint in between.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimits:
    messages_per_s: float = 200.0
    messages_burst: float = 20_000.0
    bytes_per_s: float = 4 * 1024 * 1024
    bytes_burst: float = 64 * 1024 * 1024
    max_hosts: int = 100_000


@dataclass(frozen=True)
class Refusal:
    what: str  # "messages" or "bytes"
    rate_per_s: float
    retry_after_s: float

    def __str__(self) -> str:
        unit = "messages/s" if self.what == "messages" else "bytes/s"
        return f"rate limit exceeded ({self.what}: {self.rate_per_s:g} {unit})"


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` stored; starts full."""

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self.tokens = burst
        self._at_s = now_s

    def refill(self, now_s: float) -> None:
        elapsed = max(0.0, now_s - self._at_s)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate_per_s)
        self._at_s = now_s

    def can_pay(self, n: float) -> bool:
        return self.tokens >= min(n, self.burst)

    def pay(self, n: float) -> None:
        self.tokens -= min(n, self.burst)

    def seconds_until(self, n: float) -> float:
        missing = min(n, self.burst) - self.tokens
        return max(0.0, missing / self.rate_per_s) if self.rate_per_s > 0 else 3600.0


class AgentRateLimits:
    """Token buckets per host (see module contract)."""

    def __init__(
        self, limits: RateLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or RateLimits()
        self._clock = clock
        self._hosts: OrderedDict[str, tuple[TokenBucket, TokenBucket]] = OrderedDict()
        self.refusals = 0

    def admit(self, host_id: str, n_bytes: int) -> Refusal | None:
        now, lim = self._clock(), self.limits
        pair = self._hosts.get(host_id)
        if pair is None:
            pair = (
                TokenBucket(lim.messages_per_s, lim.messages_burst, now),
                TokenBucket(lim.bytes_per_s, lim.bytes_burst, now),
            )
            self._hosts[host_id] = pair
            while len(self._hosts) > lim.max_hosts:
                self._hosts.popitem(last=False)
        else:
            self._hosts.move_to_end(host_id)
        msgs, size = pair
        msgs.refill(now)
        size.refill(now)
        if not msgs.can_pay(1):
            self.refusals += 1
            # Wait until a tenth of the burst is back: a resend makes real progress.
            return Refusal("messages", msgs.rate_per_s, msgs.seconds_until(msgs.burst / 10))
        if not size.can_pay(n_bytes):
            self.refusals += 1
            return Refusal(
                "bytes", size.rate_per_s, size.seconds_until(max(n_bytes, size.burst / 10))
            )
        msgs.pay(1)
        size.pay(n_bytes)
        return None
