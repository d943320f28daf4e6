"""Who started whom, remembered after both are gone: the kernel's process events.

Contract: ``ForkWatch.open()`` returns a started watch, or None when the kernel does
not offer process events here (no CAP_NET_ADMIN, a network namespace other than the
host's that the agent may not enter, a kernel without the proc connector): the caller
then works without it, as before. ``parent_of(pid)`` is the process that forked
``pid`` and when (seconds since boot), for a process started since the watch began,
even after it exited; the newest ``max_kept`` forks are kept. Only the kernel's own
messages are read (sender port 0). ``lost`` counts events the kernel dropped because
the reader fell behind (a fork storm). ``stop()`` ends the reading thread.

Why: an encryptor can run one short process per file (``find -exec``, a shell loop).
Each writer has exited by the time its fanotify event is read, so /proc no longer
says who started it, and there is nothing to stop; the fork it came from names the
launcher, which is alive and is what must be stopped (``tocsin.agent.attribute``).

The events come over a netlink connector socket (``NETLINK_CONNECTOR``, the
``CN_IDX_PROC`` group): after a ``PROC_CN_MCAST_LISTEN`` the kernel sends one message
per fork, exec, exit... of every process on the host; only forks of a new process
(not of a thread) are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import threading

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
NLMSG_DONE = 3
MAX_KEPT = 65_536
_RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33  # Linux; not in Python's socket module
SO_ATTACH_FILTER = 26
CLONE_NEWNET = 0x40000000

_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
_CN_MSG = struct.Struct("=IIIIHH")  # struct cn_msg (id.idx, id.val, seq, ack, len, flags)
_EVENT = struct.Struct("=IIQ")  # struct proc_event head (what, cpu, timestamp_ns)
_FORK = struct.Struct("=IIII")  # parent pid, parent tgid, child pid, child tgid
_FORK_AT = _NLMSG.size + _CN_MSG.size + _EVENT.size


def _listen_message() -> bytes:
    body = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(body), 0) + body
    return _NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def forks_in(data: bytes) -> list[tuple[int, int, float]]:
    """(child, parent, seconds since boot) for each fork of a new process in one read."""
    out: list[tuple[int, int, float]] = []
    at = 0
    while at + _FORK_AT + _FORK.size <= len(data):
        length = _NLMSG.unpack_from(data, at)[0]
        if length < _NLMSG.size:
            break  # malformed: nothing after it can be trusted
        what, _cpu, at_ns = _EVENT.unpack_from(data, at + _NLMSG.size + _CN_MSG.size)
        if what == PROC_EVENT_FORK:
            _ppid, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(data, at + _FORK_AT)
            if child_pid == child_tgid:  # a process, not a thread
                out.append((child_tgid, parent_tgid, at_ns / 1e9))
        at += (length + 3) & ~3  # NLMSG_ALIGN
    return out


def _only_forks(sock: socket.socket) -> None:
    """A socket filter: the kernel drops every event but forks before they reach us (a
    busy host execs and exits as often as it forks). Without it, all are read."""
    what_at = _NLMSG.size + _CN_MSG.size
    fork = struct.unpack(">I", struct.pack("=I", PROC_EVENT_FORK))[0]  # BPF loads big-endian
    program = (
        (0x20, 0, 0, what_at),  # ld [what]
        (0x15, 0, 1, fork),  # jeq fork ? next : drop
        (0x06, 0, 0, 0xFFFFFFFF),  # ret all
        (0x06, 0, 0, 0),  # ret 0 (drop)
    )
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.debug("process events unfiltered: %s", exc)


def _subscribe() -> socket.socket:
    """A proc-connector socket of this thread's network namespace, listening (or OSError)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        sock.bind((0, CN_IDX_PROC))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        _only_forks(sock)
        sock.send(_listen_message())
    except OSError:
        sock.close()
        raise
    return sock


def _subscribe_in_host_netns() -> socket.socket | None:
    """The kernel sends process events only in the host's network namespace. An agent
    started in another one (a unit with PrivateNetwork, a test bed's namespace) that may
    enter the host's opens its socket there, from a short-lived thread: setns moves that
    thread alone, the socket stays in the namespace it was made in, and the rest of the
    agent never leaves its own. The host's namespace is pid 1's; when that cannot be
    read (some sandboxes), each ancestor's that differs from ours is tried, nearest first."""
    made: list[socket.socket] = []

    def subscribe_there() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for path in _other_netns():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                entered = libc.setns(fd, CLONE_NEWNET) == 0
            finally:
                os.close(fd)
            if entered:
                with contextlib.suppress(OSError):
                    made.append(_subscribe())
                    return

    thread = threading.Thread(target=subscribe_there, name="tocsin-forks-open", daemon=True)
    thread.start()
    thread.join(timeout=5.0)
    return made[0] if made else None


def _other_netns() -> list[str]:
    """Network namespace files of pid 1 and of our ancestors, nearest first, that are
    readable and not ours (pid 1 first: it is the host's wherever it can be read)."""
    try:
        ours = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return []
    found: list[str] = []
    seen = {ours}
    pid = os.getpid()
    chain = [1]
    for _ in range(64):
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                pid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
        chain.append(pid)
    for pid in chain:
        path = f"/proc/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue
        if inode not in seen:
            seen.add(inode)
            found.append(path)
    return found


class ForkWatch:
    def __init__(self, sock: socket.socket, max_kept: int = MAX_KEPT) -> None:
        self._sock = sock
        self.max_kept = max_kept
        self.lost = 0
        self.received = 0  # messages read (forks only, when the socket filter holds)
        self._parents: dict[int, tuple[int, float]] = {}  # child -> (parent, when), oldest first
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tocsin-forks", daemon=True)

    @classmethod
    def open(cls, max_kept: int = MAX_KEPT) -> ForkWatch | None:
        """A started watch, or None (logged once) when process events are not offered."""
        try:
            sock = _subscribe()
        except OSError as exc:
            sock = _subscribe_in_host_netns()
            if sock is None:
                log.info("process events unavailable (%s): launchers of short writers unseen", exc)
                return None
            log.info("process events read from the host's network namespace")
        watch = cls(sock, max_kept)
        watch._thread.start()
        return watch

    def parent_of(self, pid: int) -> tuple[int, float] | None:
        with self._lock:
            return self._parents.get(pid)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2.0)
        self._sock.close()

    def _run(self) -> None:
        fd = self._sock.fileno()
        while not self._stopping.is_set():
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data, (sender, _groups) = self._sock.recvfrom(65536)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1  # the kernel dropped events: go on with the next ones
                    continue
                if self._stopping.is_set():
                    return
                log.warning("process events: %s; launchers of short writers unseen from now", exc)
                return
            self.received += 1
            if sender == 0:  # the kernel; another process may not speak for it
                self._keep(forks_in(data))

    def _keep(self, forks: list[tuple[int, int, float]]) -> None:
        if not forks:
            return
        with self._lock:
            for child, parent, at in forks:
                self._parents.pop(child, None)  # a reused pid: its newest fork, kept last
                self._parents[child] = (parent, at)
            while len(self._parents) > self.max_kept:
                del self._parents[next(iter(self._parents))]
