"""Where alert and action events go: the ``WebhookSink`` seam, and webhook signing.

Signing follows Standard Webhooks: a secret ``whsec_<base64 key>``; headers
``webhook-id`` (the message id, the same on every retry: receivers dedupe on
it), ``webhook-timestamp`` (integer epoch seconds of this attempt) and
``webhook-signature`` = ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``.

Sink contract: ``await sink.post(event)`` delivers one JSON object to every
configured receiver or raises ``ResponseError`` naming the receivers that
refused it after the retries. ``sink.enqueue(event)`` takes it at once and
never blocks on a receiver (the durable outbox stores it; other sinks post it
in the background, bounded, counting what they drop), and may be called from a
worker thread (the responder stores an alert off the event loop); ``await sink.drain()``
waits for background posts in flight. ``HttpWebhookSink`` POSTs with urllib in a worker
thread (``timeout_s`` per attempt), retrying connection errors, 408, 429 and
5xx with capped exponential backoff and jitter. ``MemoryWebhookSink`` keeps
what it was given (tests; a collector without receivers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

from tocsin.v1.errors import ConfigError, ResponseError

log = logging.getLogger("tocsin.collector.webhook")

_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
SECRET_PREFIX = "whsec_"


# What deploy/collector.toml ships instead of a secret: refused, so that no town
# signs its alerts with a key published in our repository.
SECRET_PLACEHOLDER = "CHANGE-ME"


def redact_url(url: object) -> str:
    """What of a webhook URL may be shown: ``scheme://host[:port]/…``, never its path.

    Slack, Mattermost and Teams put the secret in the path (or the query);
    logs, metric labels and error lines show this instead.
    """
    if not isinstance(url, str):
        return repr(type(url).__name__)
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return "(not a URL)"
    host = parts.netloc.rpartition("@")[2]  # user:password@ never shown
    tail = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{tail}"


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ``ConfigError`` if it is not one."""
    if SECRET_PLACEHOLDER in secret:
        raise ConfigError(
            "the secret is still the example's placeholder: make one with"
            ' echo "whsec_$(head -c 32 /dev/urandom | base64)" and give it to the receiver too'
        )
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError("a webhook secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("a webhook secret must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise ConfigError("a webhook secret needs at least 16 bytes of key")
    return key


def sign(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes | None, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers (the signature only when there is a key)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp_s)}
    if key is not None:
        headers["webhook-signature"] = sign(key, msg_id, timestamp_s, body)
    return headers


class WebhookSink(Protocol):
    """Where events go (see module contract)."""

    async def post(self, event: dict[str, Any]) -> None: ...
    def enqueue(self, event: dict[str, Any]) -> None: ...
    async def drain(self) -> None: ...


class MemoryWebhookSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def post(self, event: dict[str, Any]) -> None:
        self.enqueue(event)

    def enqueue(self, event: dict[str, Any]) -> None:
        self.events.append(json.loads(json.dumps(event)))

    async def drain(self) -> None:
        return None


class HttpWebhookSink:
    def __init__(
        self,
        urls: Sequence[str],
        timeout_s: float = 5.0,
        attempts: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        user_agent: str = "tocsin-collector",
        max_inflight: int = 256,
    ) -> None:
        self.urls = list(urls)
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.user_agent = user_agent
        self.failures = 0
        self.max_inflight = max_inflight
        self.dropped = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def enqueue(self, event: dict[str, Any]) -> None:
        """Post in the background (at most ``max_inflight`` at once; more are dropped).

        Thread-safe: from a worker thread the post is started on the sink's event loop
        (the one it was built or first used on).
        """
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is None or self._loop.is_closed():
                raise
            self._loop.call_soon_threadsafe(self.enqueue, event)
            return
        if len(self._inflight) >= self.max_inflight:
            self.dropped += 1
            log.warning("webhook backlog full; dropped %s %s", event["event"], event["host_id"])
            return
        task = asyncio.get_running_loop().create_task(self._post_logged(event))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _post_logged(self, event: dict[str, Any]) -> None:
        try:
            await self.post(event)
        except ResponseError as exc:
            log.warning("%s", exc)

    async def drain(self) -> None:
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def post(self, event: dict[str, Any]) -> None:
        body = json.dumps(event, sort_keys=True).encode()
        results = await asyncio.gather(
            *(self._post_one(url, body) for url in self.urls), return_exceptions=True
        )
        failed = [f"{redact_url(u)}: {r}" for u, r in zip(self.urls, results, strict=True) if r]
        if failed:
            self.failures += len(failed)
            raise ResponseError("webhook not delivered: " + "; ".join(failed))

    async def _post_one(self, url: str, body: bytes) -> str | None:
        """None on success, else the last error."""
        error = "not tried"
        for attempt in range(self.attempts):
            retryable, error = await asyncio.to_thread(self._attempt, url, body)
            if not error:
                return None
            if not retryable:
                break
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        return error

    def _attempt(self, url: str, body: bytes) -> tuple[bool, str]:
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": self.user_agent},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
            return False, ""
        except urllib.error.HTTPError as exc:
            return exc.code in _RETRYABLE_HTTP, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return True, str(getattr(exc, "reason", exc))
