"""The systemd notification protocol (sd_notify), without libsystemd.

Contract: ``notify(state)`` sends ``state`` (e.g. ``"READY=1"``,
``"WATCHDOG=1"``, ``"STOPPING=1"``, ``"STATUS=..."``, newline-separated) as
one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a name
starting with ``@`` is in the abstract namespace) and returns True; without
``$NOTIFY_SOCKET`` (not under systemd) or on a send error it returns False and
does nothing else: readiness reporting never stops the agent.
``watchdog_interval_s()`` is half of ``$WATCHDOG_USEC`` (None when no watchdog
is asked for, or when ``$WATCHDOG_PID`` names another process).
``Watchdog(trouble)`` is a thread that sends ``WATCHDOG=1`` every interval
while ``trouble()`` returns "" (healthy); once it names a problem (a worker
thread gone, a loop that stopped making progress), that is logged, the pings
stop for good and systemd restarts the service after WatchdogSec.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes:
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def notify(state: str) -> bool:
    name = os.environ.get("NOTIFY_SOCKET", "")
    if not name:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(name))
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
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


class Watchdog:
    def __init__(self, trouble: Callable[[], str], interval_s: float | None = None) -> None:
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self.trouble = trouble
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tocsin-watchdog", daemon=True)

    def start(self) -> bool:
        """Start pinging; False (and no thread) when systemd asked for no watchdog."""
        if self.interval_s is None:
            return False
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            problem = self.trouble()
            if problem:
                log.error("watchdog: %s; no more pings, systemd will restart us", problem)
                return
            if notify("WATCHDOG=1"):
                self.pings += 1
