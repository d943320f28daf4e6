"""The systemd notification protocol (sd_notify) for the collector's event loop.

Contract: ``notify(state)`` sends one datagram (``"READY=1"``, ``"STOPPING=1"``,
``"STATUS=..."``...) to ``$NOTIFY_SOCKET`` (``@name``: abstract namespace);
False and nothing else when not under systemd or on an error.
``start_watchdog()`` starts an asyncio task on the running loop that sends
``WATCHDOG=1`` every half ``$WATCHDOG_USEC``: a blocked event loop stops the
pings, and systemd restarts the collector. None when no watchdog is asked.
(The agent has its own copy: agent and collector share only the wire.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("tocsin.collector.sdnotify")


def notify(state: str) -> bool:
    name = os.environ.get("NOTIFY_SOCKET", "")
    if not name:
        return False
    addr: str | bytes = b"\0" + name[1:].encode() if name.startswith("@") else name
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", state, exc)
        return False


def watchdog_interval_s() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


async def _ping(interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        notify("WATCHDOG=1")


def start_watchdog() -> asyncio.Task[None] | None:
    interval_s = watchdog_interval_s()
    if interval_s is None:
        return None
    return asyncio.get_running_loop().create_task(_ping(interval_s))
