"""One-time sign-in links and cookie sessions for the console.

Contract:

- ``LoginLinks.issue(operator)`` returns a random token (32 bytes, URL-safe)
  valid ``ttl_s`` (300 s). ``redeem(token)`` returns the operator's name once
  and only once, within that time; any other call returns None. Tokens are
  kept only as SHA-256 digests, at most ``max_pending`` at a time (the oldest
  is forgotten first).
- ``Sessions.open(operator)`` returns a new ``Session`` (random id, random
  CSRF token) valid ``ttl_s`` (12 h). ``get(session_id)`` returns it while it
  is valid. ``check_csrf(session, token)`` compares in constant time. At most
  ``max_sessions`` live at once (the oldest is closed first).

Both live in the collector's memory: a collector restart signs everybody out,
which is the safe direction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

LINK_TTL_S = 300.0
SESSION_TTL_S = 12 * 3600.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class LoginLinks:
    def __init__(
        self,
        ttl_s: float = LINK_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = 64,
    ) -> None:
        self.ttl_s, self._clock, self.max_pending = ttl_s, clock, max_pending
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def issue(self, operator: str) -> str:
        token = secrets.token_urlsafe(32)
        self._pending[_digest(token)] = (operator, self._clock() + self.ttl_s)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
        return token

    def redeem(self, token: str) -> str | None:
        entry = self._pending.pop(_digest(token), None)
        if entry is None:
            return None
        operator, expires = entry
        return operator if self._clock() <= expires else None


@dataclass(frozen=True)
class Session:
    session_id: str
    operator: str
    csrf: str
    expires_mono: float
    max_age_s: int


class Sessions:
    def __init__(
        self,
        ttl_s: float = SESSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = 256,
    ) -> None:
        self.ttl_s, self._clock, self.max_sessions = ttl_s, clock, max_sessions
        self._live: OrderedDict[str, Session] = OrderedDict()

    def open(self, operator: str) -> Session:
        s = Session(
            session_id=secrets.token_urlsafe(32),
            operator=operator,
            csrf=secrets.token_urlsafe(32),
            expires_mono=self._clock() + self.ttl_s,
            max_age_s=int(self.ttl_s),
        )
        self._live[s.session_id] = s
        while len(self._live) > self.max_sessions:
            self._live.popitem(last=False)
        return s

    def get(self, session_id: str) -> Session | None:
        s = self._live.get(session_id)
        if s is None:
            return None
        if self._clock() > s.expires_mono:
            del self._live[session_id]
            return None
        return s

    def close(self, session_id: str) -> None:
        self._live.pop(session_id, None)

    @staticmethod
    def check_csrf(session: Session, token: str) -> bool:
        return hmac.compare_digest(session.csrf.encode(), token.encode("utf-8", "replace"))


@dataclass(frozen=True)
class LinkIssuer:
    """Turns a one-time token into the URL an operator opens (``base_url`` has no trailing /)."""

    links: LoginLinks
    base_url: str

    def link(self, operator: str) -> tuple[str, int]:
        """(sign-in URL, seconds it stays valid) for ``operator``."""
        return f"{self.base_url}/login/{self.links.issue(operator)}", int(self.links.ttl_s)
