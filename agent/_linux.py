"""The raw Linux calls the agent makes, behind plain functions (one door to /proc and libc).

Contract: every function returns a plain value or ``None`` when the process or
file is gone or unreadable; none raises for a vanished process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import stat

PR_SET_NAME = 15


def kernel_boot_id() -> str:
    """The running kernel's boot id (/proc/sys/kernel/random/boot_id): new at every boot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22).

    Exact and fixed for the life of the process, unlike psutil's ``create_time``
    (boot time from the wall clock plus these ticks), which moves with the clock.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may hold anything, ")" included.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 counted from 1; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def thread_group(pid: int) -> int | None:
    """The process (Tgid) that ``pid`` belongs to: ``pid`` itself for a process, else a thread's."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (/proc/PID/stat field 4)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw[raw.rfind(b")") + 2 :].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """The live children of ``pid``: its threads' /proc/PID/task/TID/children, read
    from this process's own files (psutil walks every process of the system for it);
    a walk of /proc where the kernel has no such files (CONFIG_PROC_CHILDREN)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if tid == str(pid) and os.path.exists(f"/proc/{pid}/task/{tid}"):
                return [p for p in _pids() if parent_pid(p) == pid]
        except (OSError, ValueError):
            continue
    return out


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def exe_path(pid: int) -> str | None:
    """The path the kernel recorded for ``pid``'s executable (/proc/PID/exe), or None."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def exe_stat(pid: int) -> os.stat_result | None:
    """The inode ``pid`` actually executes (followed through /proc/PID/exe, even if deleted)."""
    try:
        return os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None


def environ(pid: int, max_bytes: int = 65536) -> list[bytes]:
    """The environment ``pid`` was started with (readable only by root or its owner)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read(max_bytes).split(b"\0")
    except OSError:
        return []


def root_only(st: os.stat_result) -> bool:
    """Owned by root and writable by nobody else."""
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def mine_only(st: os.stat_result) -> bool:
    """Owned by this process's effective user and writable by nobody else (root: root only)."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def set_process_name(name: str) -> None:
    """prctl(PR_SET_NAME): what ``ps``, ``top`` and /proc/PID/comm show (15 bytes)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def open_dir_nofollow(path: str) -> int:
    """Open the directory ``path`` walking each component with O_NOFOLLOW from ``/``.

    A symlink anywhere in the path raises OSError (ELOOP or ENOTDIR): whatever
    the caller then does through the returned fd stays in that directory even
    if the path is renamed or replaced by a symlink afterwards.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for part in [p for p in os.path.abspath(path).split("/") if p]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def signal_exact(pid: int, ticks: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` only while it is the process that started at ``ticks``.

    Through a pidfd: once opened it names that process for good, so the check
    and the signal cannot be split by the pid being reused. Raises
    ProcessLookupError when the pid is gone or names another process now,
    OSError otherwise (a thread id is refused by pidfd_open with EINVAL).
    """
    fd = os.pidfd_open(pid)
    try:
        if start_ticks(pid) != ticks:
            raise ProcessLookupError(f"pid {pid} is another process now")
        signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)
