"""Which processes the agent may stop, and how it knows a pid is still the process it was told of.

Contract:

- ``ProcessId(pid, start_ticks, kernel_boot_id)`` names one process for the
  life of the machine: pid alone is reused (after the process exits, and at
  every reboot); the start time in clock ticks since boot (/proc/PID/stat field
  22) tells two processes of one boot apart, and the kernel's boot id
  (/proc/sys/kernel/random/boot_id, a random UUID the kernel draws at each
  boot) tells two boots apart. ``ProcessId.live(pid)`` reads the running
  process; ``same_as_live()`` says whether the pid still names it.
- ``protection(pid)`` is the one rule for "never stop this process": a
  non-empty reason for kernel threads, threads that are not a process (a
  signal to a thread id stops its whole process), and daemons recognised by
  the executable the kernel runs (``/proc/PID/exe``) being one of
  ``PROTECTED_EXES`` and owned by root, writable by nobody else. A process's
  name (``comm``, settable by anyone with prctl PR_SET_NAME, or a copied
  binary) never protects it. Samba's per-client ``smbd`` workers are the
  exception (``smbd_client_worker``): they run the user's session, so they
  may be stopped.
- ``listed_executable(pid, listed)`` is the same rule for the operator's own
  list (the tripwire's ``protect``): a pid, or an executable path or file name
  that ``/proc/PID/exe`` resolves to, root-owned and writable by nobody else.
  A name is never compared with the name a process gives itself.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from tocsin.agent import _linux
from tocsin.v1 import telemetry_pb2 as pb

# The daemons tocsin never stops: the host must stay reachable and manageable.
# Compared with the resolved /proc/PID/exe, so /sbin/init and /lib/... match
# their /usr targets too.
PROTECTED_EXES = (
    "/sbin/init",
    "/usr/lib/systemd/systemd",
    "/usr/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-logind",
    "/usr/lib/systemd/systemd-udevd",
    "/usr/bin/dbus-daemon",
    "/usr/sbin/sshd",
    "/usr/sbin/smbd",
    "/usr/sbin/nmbd",
    "/usr/sbin/winbindd",
)
SMBD = "/usr/sbin/smbd"


@dataclass(frozen=True)
class ProcessId:
    """One process on one boot (see module contract)."""

    pid: int
    start_ticks: int
    kernel_boot_id: str

    @classmethod
    def live(cls, pid: int, boot_id: str | None = None) -> ProcessId | None:
        """The running process ``pid`` (None when there is none)."""
        ticks = _linux.start_ticks(pid) if pid > 0 else None
        if ticks is None:
            return None
        return cls(pid, ticks, boot_id or _linux.kernel_boot_id())

    def mismatch(self, boot_id: str) -> str:
        """Why ``pid`` no longer names this process on the running kernel ("" when it does)."""
        if self.kernel_boot_id != boot_id:
            return f"pid {self.pid} is from another boot ({self.kernel_boot_id[:8] or 'none'})"
        ticks = _linux.start_ticks(self.pid)
        if ticks is None:
            return f"pid {self.pid} does not exist"
        if ticks != self.start_ticks:
            return (
                f"pid {self.pid} is another process now (started at tick {ticks}, "
                f"not {self.start_ticks})"
            )
        return ""

    def as_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "boot_id": self.kernel_boot_id}

    @classmethod
    def from_json(cls, d: object) -> ProcessId | None:
        if not isinstance(d, dict):
            return None
        pid, ticks, boot = d.get("pid"), d.get("start_ticks"), d.get("boot_id")
        if type(pid) is not int or type(ticks) is not int or not isinstance(boot, str):
            return None
        return cls(pid, ticks, boot)


def _real(path: str) -> str:
    return os.path.realpath(path)


_PROTECTED_REAL = frozenset(_real(p) for p in PROTECTED_EXES)


def _daemon_exe(pid: int) -> str:
    """The protected executable ``pid`` runs ("" if none), checked by path, inode and owner."""
    path = _linux.exe_path(pid)
    st = _linux.exe_stat(pid)
    if path is None or st is None:
        return ""
    # An upgraded package leaves running daemons on the old, deleted inode.
    path = path.removesuffix(" (deleted)")
    if path not in _PROTECTED_REAL or not _linux.root_only(st):
        return ""
    return path


def listed_paths(entries: Iterable[str]) -> frozenset[str]:
    """The operator's list as ``listed_executable`` compares it: paths resolved."""
    return frozenset(_real(e) if e.startswith("/") else e for e in entries)


def listed_executable(pid: int, listed: Collection[str]) -> str:
    """The entry of ``listed`` (from ``listed_paths``) that ``pid`` matches ("" if none).

    ``pid`` itself, or the executable the kernel runs for it (its resolved path or
    its file name) if that file is root's and writable by nobody else: a copied or
    user-owned binary, and a name set with prctl, match nothing.
    """
    if str(pid) in listed:
        return str(pid)
    path, st = _linux.exe_path(pid), _linux.exe_stat(pid)
    if path is None or st is None or not _linux.root_only(st):
        return ""
    path = path.removesuffix(" (deleted)")
    for key in (path, os.path.basename(path)):
        if key in listed:
            return key
    return ""


def smbd_client_worker(pid: int) -> bool:
    """True when ``pid`` is a Samba per-client worker, which tocsin may stop.

    Rule: ``pid`` runs the root-owned Samba server executable (``/usr/sbin/smbd``,
    checked through /proc/PID/exe) and its parent runs the very same
    executable inode: smbd forks one such child per client connection, and
    that child does the share user's reads and writes. The master (whose
    parent is not smbd) stays protected. The master's helpers (smbd-notifyd,
    cleanupd) are such children too: the rule cannot tell them from workers by
    anything but their self-chosen names, and no command names them unless
    they write on the share. A process merely named ``smbd`` is not smbd at
    all and is never protected in the first place.
    """
    if _daemon_exe(pid) != _real(SMBD):
        return False
    ppid = _linux.parent_pid(pid)
    if ppid is None or ppid <= 1 or _daemon_exe(ppid) != _real(SMBD):
        return False
    mine, theirs = _linux.exe_stat(pid), _linux.exe_stat(ppid)
    return (
        mine is not None
        and theirs is not None
        and (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
    )


def protection(pid: int) -> str:
    """Why ``pid`` must never be stopped, resumed or killed by tocsin ("" when it may be)."""
    if pid <= 1:
        return f"pid {pid} is init"
    tgid = _linux.thread_group(pid)
    if tgid is None:
        return ""  # gone: the identity check reports it
    if tgid != pid:
        return f"pid {pid} is a thread of process {tgid}, not a process"
    if pid == 2 or _linux.parent_pid(pid) == 2:
        return f"pid {pid} is a kernel thread"
    daemon = _daemon_exe(pid)
    if daemon and not smbd_client_worker(pid):
        return f"pid {pid} runs {daemon}, a protected daemon"
    return ""


def process_ref(root: int, samples: Iterable[pb.ProcessSample]) -> pb.ProcessRef:
    """The identity of the tree root ``root`` as ``samples`` recorded it.

    Without one (no sample names that root) the reference carries no start
    time, and ``Actions`` refuses it: an unverified pid is never signalled.
    """
    for s in samples:
        if s.pid == root and s.start_ticks:
            return pb.ProcessRef(
                pid=root, start_ticks=s.start_ticks, kernel_boot_id=s.kernel_boot_id
            )
        if (s.tree_root_pid or s.pid) == root and s.tree_root_start_ticks:
            return pb.ProcessRef(
                pid=root, start_ticks=s.tree_root_start_ticks, kernel_boot_id=s.kernel_boot_id
            )
    return pb.ProcessRef(pid=root)
