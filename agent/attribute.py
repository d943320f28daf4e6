"""Which processes wrote into the watched trees during a window.

Contract: ``Attributor(roots, ...)`` started with ``start()`` collects writers;
``collect(destroyed_paths)`` (called once per window by the window thread)
returns at most ``top_n`` ``ProcessSample`` messages, biggest writers first,
and resets the per-window counts. The agent's own pid is never reported.

Two sources. As root, fanotify (a filesystem mark for FAN_CLOSE_WRITE on each
root's filesystem, a mount mark on older kernels) names the writer of every
file closed after writing; a reader thread keeps paths under the roots and
counts them per pid (at most ``max_paths_per_pid`` paths kept per pid per
window, every fd closed). A destroyed file counts for the process that closed
it last in the window (the encryptor, not the process that had just created
it), or, when it was probed destroyed only in a later window, for the process
that closed it last before if that process is now stopped or gone: it is
sampled in the later window though it wrote nothing in it (an attacker the
tripwire stopped). Without fanotify, psutil io counters: processes whose
write_chars grew since the last window and whose cwd or an open file lies
under a root (or whose child does).

``tree_root_pid``: from a writer, climb to the parent while the parent has the
same cmdline (forked workers) or wrote recently; stop at pid 1, the agent, and
at a parent with another cmdline that did not write, unless that parent runs
two or more live children whose command lines differ from the writer's only
by paths (``job_shape``: a launcher of workers is the tree from the first
window on). A drill (its writer carries the agent's drill key) climbs only into
parents that carry it too: the launcher of a drill is never in its tree, the
drill's own workers are, from their first file (the tripwire counts per tree).
Siblings: when two or more
writers of one window that are each their own tree share a parent (a launcher
spawning short-lived encryptors with another cmdline), the parent becomes
their tree root (unless it is pid 1, the agent or a ``STOP_NAMES`` process: a
shell, session or daemon by its name and its executable, ``stops_climb``).

A writer gone before its event is read (one short process per file: ``find -exec``,
a shell loop) writes in the place of the nearest live process that started it, known
from the kernel's fork events (``forks``, a ``tocsin.agent.forks.ForkWatch``): never
pid 1, the agent, its ancestors, a protected daemon (by executable, not by name) or a
process started after that fork (a reused pid). Without process events such a writer is not seen.

An smbd worker (``tocsin.agent.smb``) serves one client connection: its
sample carries the client's address and SMB user (``smb_client_addr``,
``smb_user``), read from the worker's socket when it first writes and from
Samba's session data.

Per tree: samples are ordered by their tree's totals (types destroyed, files),
so one tree's workers come together and first; when there are more writers
than ``top_n``, every tree with several writers is folded into one sample
(pid = the tree root, counts summed, ``children`` = its writers), so the
collector always sees the whole damage of a tree as one actor.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from tocsin.agent import _linux, limits
from tocsin.agent.forks import ForkWatch
from tocsin.agent.protect import protection
from tocsin.agent.smb import SmbSessions
from tocsin.agent.watch import READ_BATCH_S
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.text import wire_text

log = logging.getLogger(__name__)

FAN_CLASS_NOTIF = 0x0
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_MARK_ADD = 0x1
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORED_SURV_MODIFY = 0x40
FAN_CLOSE_WRITE = 0x8
FAN_Q_OVERFLOW = 0x4000
AT_FDCWD = -100
O_LARGEFILE = 0o100000
# Never climb into these (a Samba worker is the tree, not the smbd master).
STOP_NAMES = frozenset(
    {
        "systemd",
        "init",
        "sshd",
        "smbd",
        "nmbd",
        "tocsin-agent",
        "bash",
        "sh",
        "zsh",
        "sudo",
        "su",
        "cron",
        "containerd-shim",
        "screen",
        "tmux",
    }
)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# How long a launcher that stood in for a gone writer still names a file's writer.
STAND_IN_FRESH_S = 0.5
# Executables that a STOP_NAMES name may run under besides its own (Debian's sh is dash).
_STOP_ALIASES = {"sh": ("dash", "bash", "busybox"), "init": ("systemd",)}


def stops_climb(info: ProcInfo) -> bool:
    """A shell, session or daemon that trees never climb into: its name in STOP_NAMES
    and its executable's file name the one that name stands for. A name alone is
    anyone's (prctl): an encryptor's launcher calling itself ``sshd`` or ``bash`` is
    climbed into like any other (an unreadable executable keeps the name's word). A
    copy of a real shell or daemon binary still passes: it is one."""
    if info.name not in STOP_NAMES:
        return False
    exe = os.path.basename(info.exe)
    return not exe or exe.startswith(info.name) or exe in _STOP_ALIASES.get(info.name, ())


_META = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata (24 bytes)
_READ_BYTES = 256 * _META.size  # at most 256 events (and descriptors) per read


@dataclass
class ProcInfo:
    """What we remember of a process (captured when first seen: it may exit soon)."""

    pid: int
    ppid: int
    name: str
    exe: str
    user: str
    cmdline: str
    create_time: float
    start_ticks: int = 0


def proc_info(pid: int) -> ProcInfo | None:
    """Snapshot of ``pid`` via psutil, ``None`` if it is gone or hidden."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            try:
                exe = p.exe()
            except (psutil.AccessDenied, OSError):
                exe = ""
            # Names and command lines are bytes: made valid text here, once, for the wire.
            return ProcInfo(
                pid=pid,
                ppid=p.ppid(),
                name=wire_text(p.name()),
                exe=wire_text(exe),
                user=wire_text(p.username()),
                cmdline=wire_text(" ".join(p.cmdline()))[:1024],
                create_time=p.create_time(),
                start_ticks=_linux.start_ticks(pid) or 0,
            )
    except (psutil.Error, OSError):
        return None


def job_shape(argv: list[str]) -> tuple[str, ...]:
    """A command line without its paths: workers of one job differ only by their files."""
    if not argv:
        return ()
    return (os.path.basename(argv[0]), *(a for a in argv[1:] if os.sep not in a))


def _workers_of(ppid: int, shape: tuple[str, ...]) -> int:
    """How many live children of ``ppid`` run a command of this ``job_shape``."""
    n = 0
    for kid in _linux.children(ppid):
        with contextlib.suppress(psutil.Error):
            n += job_shape(psutil.Process(kid).cmdline()) == shape
    return n


def _io_chars(pid: int) -> tuple[int, int] | None:
    """(read_chars, write_chars) of ``pid`` (all read/write syscalls), ``None`` if gone."""
    try:
        io = psutil.Process(pid).io_counters()
    except (psutil.Error, OSError):
        return None
    return (getattr(io, "read_chars", io.read_bytes), getattr(io, "write_chars", io.write_bytes))


def _sample(info: ProcInfo, attribution: pb.Attribution.ValueType) -> pb.ProcessSample:
    return pb.ProcessSample(
        pid=info.pid,
        ppid=info.ppid,
        name=info.name,
        exe=info.exe,
        user=info.user,
        cmdline=info.cmdline,
        create_time=info.create_time,
        attribution=attribution,
    )


def _stopped_or_gone(pid: int) -> bool:
    """``pid`` is stopped (SIGSTOP, traced) or no longer exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("T", "t", "Z", "X")


@dataclass
class _Writer:
    files_touched: int = 0
    paths: set[str] = field(default_factory=set)


class FanotifySource:
    """A fanotify mount mark on each root, read by a daemon thread (root only)."""

    def __init__(self, roots: list[str], on_write: Callable[[int, str], None]) -> None:
        self._roots = roots
        self._on_write = on_write
        libc = limits.libc()
        if libc is None:
            raise OSError(errno.ENOSYS, "no C library to call fanotify with")
        self._init = libc.fanotify_init
        self._init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self._mark = libc.fanotify_mark
        self._mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        fd = self._init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | O_LARGEFILE)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init failed")
        self._fd = fd
        for root in roots:
            # A filesystem mark sees writes made through any mount of the
            # filesystem, from any mount namespace (containers, `ip netns exec`,
            # bind mounts); a mount mark sees only this namespace's mount.
            rc = self._mark(
                fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_CLOSE_WRITE, AT_FDCWD, os.fsencode(root)
            )
            if rc != 0:
                rc = self._mark(
                    fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_CLOSE_WRITE, AT_FDCWD, os.fsencode(root)
                )
            if rc != 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, f"fanotify_mark {root} failed")
        self.overflows = 0
        self._stop = threading.Event()
        # stop() writes here: the reader sleeps in select() until an event or stop.
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="tocsin-fanotify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ignore(self, paths: list[str]) -> None:
        """Ask the kernel for no event about these files (the agent's own SQLite files).

        Every event read opens a descriptor, and closing it drops every POSIX lock
        this process holds on the file: a process that opened the spool for writing
        (any SQLite reader opens its -shm so) would silently take SQLite's locks from
        the agent, and the next reader, seeing none, truncates the -shm the agent
        has mapped (SIGBUS). An ignore mark on each file keeps its events unmade.
        """
        flags = FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY
        for path in paths:
            if self._mark(self._fd, flags, FAN_CLOSE_WRITE, AT_FDCWD, os.fsencode(path)) != 0:
                err = os.strerror(ctypes.get_errno())
                log.warning("fanotify: cannot ignore %s (%s)", path, err)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(timeout=2)
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        # As for inotify (watch.READ_BATCH_S): a pause before each wait lets a storm's
        # events gather, so one read takes many, and the first after a quiet spell is
        # read at once. Each event read opens a descriptor: reads are bounded.
        while not self._stop.wait(READ_BATCH_S):
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._fd not in ready:
                continue
            while True:
                try:
                    buf = os.read(self._fd, _READ_BYTES)
                except BlockingIOError:
                    break
                except OSError:
                    log.exception("fanotify read failed; attribution stops")
                    return
                self._parse(buf)

    def _parse(self, buf: bytes) -> None:
        off = 0
        while off + _META.size <= len(buf):
            event_len, _vers, _res, _mlen, mask, fd, pid = _META.unpack_from(buf, off)
            if event_len < _META.size:
                break
            off += event_len
            if mask & FAN_Q_OVERFLOW:
                self.overflows += 1
            if fd < 0:
                continue
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            finally:
                os.close(fd)
            if path and any(path == r or path.startswith(r + os.sep) for r in self._roots):
                self._on_write(pid, path)


def _ancestors(pid: int) -> frozenset[int]:
    """The pids above ``pid`` (its parent, its parent's parent...), PID 1 excluded."""
    found: set[int] = set()
    try:
        ppid = psutil.Process(pid).ppid()
        while ppid > 1 and ppid not in found and len(found) < 64:
            found.add(ppid)
            ppid = psutil.Process(ppid).ppid()
    except psutil.Error:
        pass
    return frozenset(found)


class Attributor:
    """Per-window writer attribution (see module contract)."""

    def __init__(
        self,
        roots: list[str],
        use_fanotify: bool | None = None,
        top_n: int = 8,
        max_paths_per_pid: int = 4096,
        info: Callable[[int], ProcInfo | None] = proc_info,
        self_pid: int | None = None,
        smb: SmbSessions | None = None,
        is_drill: Callable[[int], bool] = lambda pid: False,
        forks: ForkWatch | None = None,
    ) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self.smb = smb
        self.top_n = top_n
        self.max_paths_per_pid = max_paths_per_pid
        self._info = info
        self._carries_key = is_drill
        # pid -> (its start ticks, whether it carried the drill key, when that was
        # read), read while it lived: a process gone has no environment left to read
        # (a drill's builder, exited, is still a drill), and a reused pid is not it.
        self._drill_of: dict[int, tuple[int, bool, float]] = {}
        self.forks = forks
        self._boot_id = _linux.kernel_boot_id()
        self._self_pid = self_pid if self_pid is not None else os.getpid()
        self._own_ancestors = _ancestors(self._self_pid)
        self._lock = threading.Lock()
        self._writers: dict[int, _Writer] = {}
        # path -> the pid that closed it last in this window: a file created by one
        # process and encrypted by another is destroyed by the second only.
        self._last_writer: dict[str, int] = {}
        # path -> the pid that closed it last, across windows (the newest
        # ``max_paths_per_pid`` paths): ``writer_of`` answers from it.
        self._path_writer: dict[str, int] = {}
        # path -> when a launcher stood in for its gone writer (see ``writer_of``)
        self._stood_in: dict[str, float] = {}
        self._known: dict[int, ProcInfo] = {}
        self._recent_writers: dict[int, float] = {}  # pid -> monotonic time last seen writing
        # parent pid -> {child pid: monotonic time first seen writing}: a launcher's writers
        self._writing_kids: dict[int, dict[int, float]] = {}
        self._io_last: dict[int, tuple[int, int]] = {}
        self._tree_roots: dict[int, int] = {}
        self._io_latest: dict[int, tuple[int, int]] = {}
        self._io_read_at: dict[int, float] = {}
        self._fan: FanotifySource | None = None
        self.canary_trees: set[int] = set()
        if use_fanotify is None:
            use_fanotify = os.geteuid() == 0
        if use_fanotify:
            try:
                self._fan = FanotifySource(self.roots, self._on_write)
            except (OSError, AttributeError) as exc:
                log.warning("fanotify unavailable (%s); falling back to psutil io counters", exc)

    @property
    def method(self) -> str:
        """ "fanotify" or "psutil-io"."""
        return "fanotify" if self._fan is not None else "psutil-io"

    @property
    def overflows(self) -> int:
        return self._fan.overflows if self._fan else 0

    def start(self) -> None:
        if self._fan:
            self._fan.start()

    def ignore(self, paths: list[str]) -> None:
        """No fanotify event about these files (see ``FanotifySource.ignore``)."""
        if self._fan:
            self._fan.ignore(paths)

    def stop(self) -> None:
        if self._fan:
            self._fan.stop()
        if self.smb is not None:
            self.smb.stop()

    def _on_write(self, pid: int, path: str) -> None:
        if pid == self._self_pid:
            return
        with self._lock:
            new = pid not in self._known
        info = parent = None
        stood_in = False
        if new:
            info = self._info(pid)
            if info is None:
                # Gone before its event was read (one short process per file, from
                # ``find -exec`` or a shell loop): the live process that started it
                # writes in its place, so that there is something to stop.
                info = self._stand_in(pid)
                if info is not None:
                    pid, stood_in = info.pid, True
            # The parent too, while it lives: a pool's parent may exit before the
            # window closes, and its tree must still be found.
            if info is not None and info.ppid > 1 and info.ppid not in self._known:
                parent = self._info(info.ppid)
        with self._lock:
            w = self._writers.setdefault(pid, _Writer())
            w.files_touched += 1
            if len(w.paths) < self.max_paths_per_pid:
                w.paths.add(path)
                self._last_writer[path] = pid
            self._path_writer.pop(path, None)
            self._path_writer[path] = pid
            if stood_in:
                self._stood_in[path] = time.monotonic()
            else:
                self._stood_in.pop(path, None)
            if len(self._path_writer) > self.max_paths_per_pid:
                oldest = next(iter(self._path_writer))
                del self._path_writer[oldest]
                self._stood_in.pop(oldest, None)
            if info is not None:
                self._known[pid] = info
                self._writing_kids.setdefault(info.ppid, {}).setdefault(pid, time.monotonic())
            if parent is not None:
                self._known[parent.pid] = parent
        if info is not None and not stood_in and pid not in self._drill_of:
            self._drill_of[pid] = (info.start_ticks, self._carries_key(pid), time.monotonic())
        if info is not None and info.name == "smbd" and self.smb is not None:
            # Read the worker's socket while it lives; starts the session lookup.
            self.smb.client_of(pid)
        now = time.monotonic()
        if now - self._io_read_at.get(pid, 0.0) > 0.2:
            self._io_read_at[pid] = now
            chars = _io_chars(pid)
            if chars is not None:
                with self._lock:
                    self._io_latest[pid] = chars

    def is_drill(self, pid: int) -> bool:
        """Whether ``pid`` carries the agent's drill key (remembered from when it lived)."""
        known = self._drill_of.get(pid)
        ticks = _linux.start_ticks(pid)
        if known is not None:
            was_ticks, drill, read_at = known
            if ticks is None:
                return drill  # gone: what was read while it lived
            # Still the process that was read. A "no" is read again now and then: it
            # may have been read between a child's fork and its exec, when it still
            # held its parent's environment.
            if ticks == was_ticks and (drill or time.monotonic() - read_at < 0.2):
                return drill
        drill = self._carries_key(pid)
        if ticks is not None:
            self._drill_of[pid] = (ticks, drill, time.monotonic())
        return drill

    def _stand_in(self, pid: int) -> ProcInfo | None:
        """The live process that started ``pid`` (gone), through the forks seen since
        the agent started, climbing past launchers gone too; None without process
        events, or when that process is pid 1, the agent or its ancestors, a protected
        daemon (``protect.protection``, by executable: an smbd master is never made the
        writer, a launcher calling itself ``cron`` is), or started after the fork (its
        pid reused)."""
        if self.forks is None:
            return None
        cur = pid
        for _ in range(8):
            fork = self.forks.parent_of(cur)
            if fork is None:
                return None
            ppid, forked_at = fork
            if ppid <= 1 or ppid == self._self_pid or ppid in self._own_ancestors:
                return None
            info = self._info(ppid)
            if info is not None:
                # Started after that fork: the launcher's pid was reused since, by a
                # process that had nothing to do with it.
                if info.start_ticks / _CLK_TCK > forked_at + 0.05:
                    return None
                # A daemon by its executable (an smbd master), never by its name.
                return None if protection(ppid) else info
            cur = ppid
        return None

    def writer_of(self, path: str) -> pb.ProcessSample | None:
        """The process that closed ``path`` last after writing it, with its tree root.

        Fanotify only (None without it, or when its event has not been read yet, or
        the process vanished before it was seen, or a launcher stood in for it more than
        ``STAND_IN_FRESH_S`` ago). Called by the window thread.
        """
        with self._lock:
            pid = self._path_writer.get(path)
            stood_in_at = self._stood_in.get(path)
        if pid is None:
            return None
        if stood_in_at is not None and time.monotonic() - stood_in_at > STAND_IN_FRESH_S:
            # A launcher stood in for a writer gone at once: evidence for the write it
            # just made, not for a later one whose own event is not read yet (a drill's
            # launcher is not the drill its encryptor is).
            return None
        info = self._known.get(pid) or self._info(pid)
        if info is None:
            return None
        s = _sample(info, pb.ATTRIBUTION_FANOTIFY)
        s.tree_root_pid = self.tree_root(pid)
        self._identify(s)
        return s

    def _under_roots(self, path: str) -> bool:
        return any(path == r or path.startswith(r + os.sep) for r in self.roots)

    def _psutil_writers(self) -> dict[int, _Writer]:
        """Fallback: processes whose write_chars grew and which touch a root."""
        out: dict[int, _Writer] = {}
        seen: dict[int, tuple[int, int]] = {}
        for p in psutil.process_iter():
            if p.pid == self._self_pid:
                continue
            try:
                io = p.io_counters()
                chars = (
                    getattr(io, "read_chars", io.read_bytes),
                    getattr(io, "write_chars", io.write_bytes),
                )
            except (psutil.Error, OSError):
                continue
            seen[p.pid] = chars
            last = self._io_last.get(p.pid)
            if last is None or chars[1] <= last[1]:
                continue
            try:
                cwd = p.cwd()
                files = [f.path for f in p.open_files()]
            except (psutil.Error, OSError):
                continue
            if self._under_roots(cwd) or any(self._under_roots(f) for f in files):
                out[p.pid] = _Writer(files_touched=0, paths=set())
                info = self._info(p.pid)
                if info is not None:
                    self._known[p.pid] = info
        self._io_last = seen
        return out

    def tree_root(self, pid: int) -> int:
        """The pid of the process tree ``pid`` belongs to (see module contract)."""
        if pid in self._tree_roots:
            return self._tree_roots[pid]
        now = time.monotonic()
        cur = self._known.get(pid) or self._info(pid)
        if cur is None:
            return pid
        for _ in range(64):
            ppid = cur.ppid
            if ppid <= 1 or ppid == self._self_pid or ppid in self._own_ancestors:
                break  # the agent's own ancestors are never a tree it could suspend
            parent = self._known.get(ppid) or self._info(ppid)
            if parent is None or stops_climb(parent):
                break
            if self.is_drill(cur.pid) and not self.is_drill(ppid):
                break  # a drill is its own tree, never its launcher (its workers are in it)
            recent = now - self._recent_writers.get(ppid, -1e9) < 30.0
            if parent.cmdline != cur.cmdline and not recent:
                if (
                    _workers_of(ppid, job_shape(cur.cmdline.split())) >= 2
                    or self._launched(ppid, now) >= 2
                ):
                    cur = parent  # a launcher of several workers, at once or one by one
                break
            cur = parent
        if len(self._tree_roots) > 4096:
            self._tree_roots = {p: r for p, r in self._tree_roots.items() if p in self._known}
        self._tree_roots[pid] = cur.pid
        return cur.pid

    def _launched(self, ppid: int, now: float) -> int:
        """How many children of ``ppid`` started writing within the last 30 s (one at a
        time, as ``find -exec`` runs them, or side by side); never a protected daemon's."""
        with self._lock:
            kids = self._writing_kids.get(ppid, {})
            n = sum(1 for t in kids.values() if now - t < 30.0)
        return n if n < 2 or not protection(ppid) else 0

    def _merge_siblings(self, samples: list[pb.ProcessSample], now: float) -> None:
        """Writers alone in their tree that share a parent get that parent as tree root."""
        alone: dict[int, list[pb.ProcessSample]] = {}
        for s in samples:
            if (
                s.tree_root_pid == s.pid
                and s.ppid > 1
                and s.ppid != self._self_pid
                and s.ppid not in self._own_ancestors
            ):
                alone.setdefault(s.ppid, []).append(s)
        for ppid, kids in alone.items():
            if len(kids) < 2:
                continue
            parent = self._known.get(ppid) or self._info(ppid)
            if parent is None or stops_climb(parent):
                continue
            if any(self.is_drill(k.pid) for k in kids) and not self.is_drill(ppid):
                continue  # a drill is its own tree, never its launcher (as in tree_root)
            self._known[ppid] = parent
            self._recent_writers[ppid] = now  # later lone workers climb into it too
            for k in kids:
                self._tree_roots.pop(k.pid, None)
            self._tree_roots.pop(ppid, None)
            root = self.tree_root(ppid)
            for k in kids:
                k.tree_root_pid = root
                self._tree_roots[k.pid] = root

    def _per_tree(self, samples: list[pb.ProcessSample]) -> list[pb.ProcessSample]:
        """Order by tree totals; fold multi-writer trees when over ``top_n`` (see contract)."""
        totals: dict[int, list[int]] = {}
        members: dict[int, list[pb.ProcessSample]] = {}
        for s in samples:
            t = totals.setdefault(s.tree_root_pid, [0, 0, 0])
            t[0] += s.files_type_destroyed
            t[1] += s.files_touched
            t[2] += s.bytes_written
            members.setdefault(s.tree_root_pid, []).append(s)
        order = sorted(members, key=lambda r: tuple(totals[r]), reverse=True)
        own = lambda s: (s.files_type_destroyed, s.files_touched, s.bytes_written)  # noqa: E731
        if len(samples) <= self.top_n:
            return [s for r in order for s in sorted(members[r], key=own, reverse=True)]
        out: list[pb.ProcessSample] = []
        for r in order:
            group = sorted(members[r], key=own, reverse=True)
            if len(group) == 1:
                out.append(group[0])
                continue
            agg = pb.ProcessSample()
            agg.CopyFrom(group[0])
            info = self._known.get(r)
            agg.pid, agg.tree_root_pid = r, r
            if info is not None:
                agg.ppid, agg.name, agg.exe, agg.user = info.ppid, info.name, info.exe, info.user
                agg.cmdline, agg.create_time = info.cmdline, info.create_time
            agg.files_type_destroyed, agg.files_touched, agg.bytes_written = totals[r]
            agg.bytes_read = sum(s.bytes_read for s in group)
            agg.children = len(group)
            out.append(agg)
        return out

    def _add_late_writers(self, writers: dict[int, _Writer], destroyed: list[str]) -> None:
        """A file probed destroyed in this window but last written, in an earlier one, by
        a process now stopped or gone (an attacker the tripwire stopped) counts for that
        process, sampled here though it wrote nothing since: the window's damage is never
        left to whoever else happened to write in it. A running writer is left alone: its
        file may have been ruined since by a writer whose event is still on its way."""
        seen = set().union(*(w.paths for w in writers.values())) if writers else set()
        with self._lock:
            late = [(p, self._path_writer.get(p)) for p in destroyed if p not in seen]
        for path, pid in late:
            if pid is None or pid == self._self_pid or pid not in self._known:
                continue
            if _stopped_or_gone(pid):
                writers.setdefault(pid, _Writer()).paths.add(path)

    def collect(
        self,
        destroyed_paths: list[str] | None = None,
        canary_paths: set[str] | None = None,
        ruined_by: dict[int, set[str]] | None = None,
    ) -> list[pb.ProcessSample]:
        """Top writers of the window now closing; resets the window's counts.

        ``canary_trees`` is left holding the tree roots of the writers that
        wrote one of ``canary_paths`` (fanotify only: psutil cannot tell).
        ``ruined_by``: the files shown ruined in this window, by the writer
        ``writer_of`` named for each (what the tripwire counted): each such writer
        is sampled here with them, though its writes were read in an earlier window
        (a window the tripwire closes at once names the tree it counted).
        """
        with self._lock:
            writers, self._writers = self._writers, {}
            last_writer, self._last_writer = self._last_writer, {}
        attribution = pb.ATTRIBUTION_FANOTIFY
        if self._fan is None:
            writers = self._psutil_writers()
            attribution = pb.ATTRIBUTION_PSUTIL_IO
        self._add_late_writers(writers, destroyed_paths or [])
        for pid, paths in (ruined_by or {}).items():
            if pid in self._known and pid != self._self_pid:
                writers.setdefault(pid, _Writer()).paths.update(paths)
        now = time.monotonic()
        for pid in writers:
            self._recent_writers[pid] = now
        self._recent_writers = {p: t for p, t in self._recent_writers.items() if now - t < 60}
        with self._lock:
            self._writing_kids = {
                parent: fresh
                for parent, kids in self._writing_kids.items()
                if (fresh := {k: t for k, t in kids.items() if now - t < 60})
            }
        destroyed = set(destroyed_paths or [])
        canaries = canary_paths or set()
        self.canary_trees = set()
        samples: list[pb.ProcessSample] = []
        for pid, w in writers.items():
            info = self._known.get(pid)
            if info is None:
                continue
            s = _sample(info, attribution)
            s.files_touched = w.files_touched
            s.files_type_destroyed = sum(
                1 for p in destroyed & w.paths if last_writer.get(p, pid) == pid
            )
            chars = _io_chars(pid) or self._io_latest.get(pid)
            if chars is not None:
                last = self._io_last.get(pid, (0, 0))
                if self._fan is not None:
                    self._io_last[pid] = chars
                s.bytes_written = max(chars[1] - last[1], 0)
                s.bytes_read = max(chars[0] - last[0], 0)
            s.children = len(_linux.children(pid))
            s.tree_root_pid = self.tree_root(pid)
            if info.name == "smbd" and self.smb is not None:
                client = self.smb.client_of(pid)
                if client is not None:
                    s.smb_client_addr, s.smb_user = client.addr, wire_text(client.user)
            if canaries & w.paths:
                self.canary_trees.add(s.tree_root_pid)
            samples.append(s)
        self._merge_siblings(samples, now)
        samples = self._per_tree(samples)
        # Forget processes that stopped writing so the caches stay bounded.
        if len(self._known) > 4096:
            self._known = {p: i for p, i in self._known.items() if p in self._recent_writers}
        if len(self._drill_of) > 4096:
            self._drill_of = {p: d for p, d in self._drill_of.items() if p in self._recent_writers}
        if self._fan is not None:
            keep = self._recent_writers
            with self._lock:
                self._io_last = {p: c for p, c in self._io_last.items() if p in keep}
                self._io_latest = {p: c for p, c in self._io_latest.items() if p in keep}
                self._io_read_at = {p: t for p, t in self._io_read_at.items() if p in keep}
        top = samples[: self.top_n]
        for s in top:
            self._identify(s)
        return top

    def _identify(self, s: pb.ProcessSample) -> None:
        """What a command naming this process or its tree must carry (tocsin.agent.protect)."""
        s.kernel_boot_id = self._boot_id
        s.start_ticks = self._start_ticks(s.pid)
        s.tree_root_start_ticks = self._start_ticks(s.tree_root_pid or s.pid)

    def _start_ticks(self, pid: int) -> int:
        info = self._known.get(pid)
        return (info.start_ticks if info else 0) or _linux.start_ticks(pid) or 0
