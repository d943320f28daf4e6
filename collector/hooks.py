"""Operator hooks: executables the operator configured, run on alerts.

Contract: a ``Hook`` is an absolute path to an executable, its arguments, a
timeout and the triggers (``on``: alert severities "warning" / "critical",
or event names such as "fleet_guard" or "action"). ``HookRunner.fire(event,
on_outcome)`` starts every hook whose trigger matches, in the background (at most
``max_running`` at once; more are refused and counted in ``dropped``), and
never blocks the caller. Each run: no shell (``exec`` of path + args), the
event as JSON on stdin, environment reduced to PATH/LANG plus TOCSIN_EVENT,
TOCSIN_HOST_ID and TOCSIN_ALERT_ID; killed (SIGKILL, its whole process group)
after ``timeout_s``. The outcome (``HookOutcome``: status "done" for exit 0,
"failed" for another exit, "timeout", or "error" when it cannot start, with
the exit code and the tail of stderr) goes to the ``on_outcome`` given with
the event (the responder audits it). ``drain()`` waits for the runs in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tocsin.v1.errors import ConfigError

log = logging.getLogger("tocsin.collector.hooks")

_HOOK_KEYS = {"path", "args", "timeout_s", "on", "name"}
TRIGGERS = ("warning", "critical", "alert", "action", "fleet_guard", "host_silent")


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    timeout_s: float = 30.0
    on: frozenset[str] = frozenset({"critical"})
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name

    def matches(self, event: dict[str, Any]) -> bool:
        kind = str(event.get("event", ""))
        if kind == "alert":
            return "alert" in self.on or str(event.get("severity")) in self.on
        return kind in self.on


def hook(spec: dict[str, Any], where: str = "hooks") -> Hook:
    """A ``Hook`` from one ``[[hooks]]`` table; ``ConfigError`` naming the problem."""
    unknown = set(spec) - _HOOK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    path = spec.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ConfigError(f"{where}: path must be an absolute path, got {path!r}")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ConfigError(f"{where}: {path} is not an executable file")
    args = spec.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}: args must be a list of strings")
    timeout_s = spec.get("timeout_s", 30.0)
    if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 3600:
        raise ConfigError(f"{where}: timeout_s must be a number of seconds in (0, 3600]")
    on = spec.get("on", ["critical"])
    if not isinstance(on, list) or not on or any(t not in TRIGGERS for t in on):
        raise ConfigError(f"{where}: on must be a non-empty list of {', '.join(TRIGGERS)}")
    return Hook(
        path=path,
        args=tuple(args),
        timeout_s=float(timeout_s),
        on=frozenset(on),
        name=str(spec.get("name", "")),
    )


@dataclass(frozen=True)
class HookOutcome:
    hook: Hook
    event: dict[str, Any]
    status: str
    exit_code: int | None
    detail: str
    duration_s: float


OnOutcome = Callable[[HookOutcome], Awaitable[None] | None]


class HookRunner:
    def __init__(
        self,
        hooks: Sequence[Hook],
        max_running: int = 16,
    ) -> None:
        self.hooks = list(hooks)
        self.max_running = max_running
        self.dropped = 0
        self.runs: dict[str, int] = {}
        self._running: set[asyncio.Task[None]] = set()

    def fire(self, event: dict[str, Any], on_outcome: OnOutcome | None = None) -> int:
        """Start the matching hooks in the background; returns how many were started."""
        started = 0
        for h in self.hooks:
            if not h.matches(event):
                continue
            if len(self._running) >= self.max_running:
                self.dropped += 1
                log.error("hook %s not run: %d hooks already running", h.label, self.max_running)
                continue
            task = asyncio.get_running_loop().create_task(self._run(h, event, on_outcome))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            started += 1
        return started

    async def _run(self, h: Hook, event: dict[str, Any], on_outcome: OnOutcome | None) -> None:
        outcome = await run_hook(h, event)
        self.runs[outcome.status] = self.runs.get(outcome.status, 0) + 1
        level = logging.INFO if outcome.status == "done" else logging.WARNING
        log.log(level, "hook %s: %s %s", h.label, outcome.status, outcome.detail)
        if on_outcome is not None:
            try:
                maybe = on_outcome(outcome)
                if maybe is not None:
                    await maybe
            except Exception:
                log.exception("recording the outcome of hook %s failed", h.label)

    async def drain(self) -> None:
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)


async def run_hook(h: Hook, event: dict[str, Any]) -> HookOutcome:
    """Run one hook to its end or its timeout (see module contract)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TOCSIN_EVENT": str(event.get("event", "")),
        "TOCSIN_HOST_ID": str(event.get("host_id", "")),
        "TOCSIN_ALERT_ID": str(event.get("alert_id", "")),
    }
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            h.path,
            *h.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return HookOutcome(
            h, event, "error", None, f"cannot start: {exc.strerror or exc}", time.monotonic() - t0
        )
    data = json.dumps(event, sort_keys=True).encode()
    try:
        _, err = await asyncio.wait_for(proc.communicate(data), timeout=h.timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return HookOutcome(
            h, event, "timeout", None, f"killed after {h.timeout_s:g} s", time.monotonic() - t0
        )
    code = proc.returncode if proc.returncode is not None else -1
    tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
    detail = f"exit {code}" + (f": {' | '.join(tail)[:300]}" if tail else "")
    return HookOutcome(
        h, event, "done" if code == 0 else "failed", code, detail, time.monotonic() - t0
    )
