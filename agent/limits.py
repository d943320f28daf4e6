"""The agent's budgets, in one place, and the kernel limit it may raise.

Contract: every per-window budget and queue bound of the agent is a constant
here (the window thread and the watcher take them as defaults, tests and the
config may pass others). ``ensure_max_user_watches(dirs_needed)`` makes sure
``fs.inotify.max_user_watches`` leaves room for ``dirs_needed`` directories
(plus ``WATCH_HEADROOM``): it raises the limit when it can (root), and
otherwise logs ONE clear line saying it could not and what to run. It never
lowers the limit and never raises.

Memory: ``cap_malloc_arenas()`` (called before any thread starts) keeps glibc
from giving each of the agent's ~15 threads (most of them grpc's) its own
malloc arena; ``release_startup_memory()`` (called once the agent is ready)
hands back the heap pages that imports and the initial tree walk freed. Both
are no-ops where glibc is absent.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Content probes: at most this many written files, and this many bytes read, per window.
PROBE_MAX_FILES_PER_WINDOW = 64
PROBE_MAX_BYTES_PER_WINDOW = 2 * 1024 * 1024
# Watcher -> window thread queue (events beyond it are dropped and counted).
WATCH_QUEUE_EVENTS = 65_536
# A window closes early once this many events arrived.
BURST_EVENTS = 20_000
# Initial walk (known extensions, directory count): at most this many entries.
SCAN_MAX_FILES = 200_000
# Room kept above the watched directories when sizing max_user_watches.
WATCH_HEADROOM = 8192
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
# glibc malloc arenas shared by all threads (glibc's default: 8 per core).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter, from <malloc.h>


def libc() -> ctypes.CDLL | None:
    """The C library already loaded in this process (``dlopen(NULL)``: no lookup)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Share ``arenas`` malloc arenas among all threads (call before starting any)."""
    c = libc()
    if c is not None and hasattr(c, "mallopt"):
        c.mallopt(_M_ARENA_MAX, arenas)


def release_startup_memory() -> None:
    """Collect garbage and return freed heap pages to the system (``malloc_trim``)."""
    gc.collect()
    c = libc()
    if c is not None and hasattr(c, "malloc_trim"):
        c.malloc_trim(0)


@dataclass(frozen=True)
class WatchLimit:
    """What ``ensure_max_user_watches`` found and did."""

    before: int
    after: int
    needed: int
    raised: bool
    ok: bool  # the limit leaves room for ``needed`` after the call


def ensure_max_user_watches(
    dirs_needed: int, sysctl: Path = MAX_USER_WATCHES, headroom: int = WATCH_HEADROOM
) -> WatchLimit:
    """Raise fs.inotify.max_user_watches to fit ``dirs_needed`` + ``headroom`` if permitted."""
    needed = dirs_needed + headroom
    try:
        before = int(sysctl.read_text().strip())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s); inotify watch limit unknown", sysctl, exc)
        return WatchLimit(0, 0, needed, False, False)
    if before >= needed:
        return WatchLimit(before, before, needed, False, True)
    target = max(needed, 2 * dirs_needed)
    try:
        sysctl.write_text(f"{target}\n")
        after = int(sysctl.read_text().strip())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        log.error(
            "fs.inotify.max_user_watches is %d but %d directories need watching and it "
            "could not be raised (%s; uid %d): run `sysctl fs.inotify.max_user_watches=%d`",
            before,
            dirs_needed,
            reason,
            os.geteuid(),
            target,
        )
        return WatchLimit(before, before, needed, False, False)
    log.info(
        "raised fs.inotify.max_user_watches from %d to %d for %d directories",
        before,
        after,
        dirs_needed,
    )
    return WatchLimit(before, after, needed, True, after >= needed)
