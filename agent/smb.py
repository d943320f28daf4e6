"""Which workstation an smbd worker serves: the client's address and SMB user.

Samba forks one worker per client connection; every file that client writes is
written by that worker. ``SmbSessions`` names the session behind a worker.

Contract:

- ``worker_peer(pid)``: for an smbd per-client worker, the (address, port)
  of its client; ``None`` for any other process. A worker runs the same
  executable as its parent (the smbd master), that executable is named
  ``smbd`` and owned by root, and one of its descriptors is an established
  TCP connection whose local port is 445 or 139: decided by the executable's
  path and owner, never by a name a process chooses. The address comes from
  the worker's socket (``/proc/PID/fd`` against ``/proc/PID/net/tcp`` and
  ``tcp6``: the worker's own network namespace, whatever the agent's).
- ``SmbSessions(conf).client_of(pid)`` -> ``SmbClient`` (address, port, user)
  or ``None`` (not a worker). The user comes from Samba's own session data
  (``smbstatus -p --json``, with ``-s CONF`` when the agent was given Samba's
  configuration), read by a background thread: a worker seen for the first
  time starts one read, ``delay_s`` later (the first files of an attack are
  when the agent and the collector need the CPU most; smbstatus costs some
  50 ms of it and answers after a few tenths of a second anyway), at most one
  every ``min_refresh_s``. Until Samba answered for the worker, the user is
  the Unix account the worker acts as (its effective uid), which tdbsam maps
  one to one; ``SmbClient.user_source`` says which ("samba" or "uid"). A
  worker caught acting as root (between two requests of its client) is read
  again at the next call until it names a user.
- Results are cached per (pid, start time), at most ``max_cached`` workers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import pwd
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

SMB_PORTS = frozenset({445, 139})
_ESTABLISHED = "01"

# smb.conf path -> smbstatus --json output (text), or "" when it could not run.
StatusReader = Callable[[str], str]


@dataclass(frozen=True)
class SmbClient:
    addr: str
    port: int
    user: str = ""
    user_source: str = ""


def smbstatus_json(conf: str) -> str:
    """``smbstatus -p --json`` for the Samba of ``conf`` ("" for the default)."""
    exe = shutil.which("smbstatus") or "/usr/bin/smbstatus"
    args = [exe, "-p", "--json"] + (["-s", conf] if conf else [])
    try:
        cp = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("smbstatus: %s", exc)
        return ""
    if cp.returncode != 0:
        log.warning("smbstatus exit %d: %s", cp.returncode, cp.stderr.strip()[:200])
        return ""
    return cp.stdout


def session_users(text: str) -> dict[int, str]:
    """pid of the worker -> user name, from ``smbstatus -p --json`` output."""
    try:
        sessions = json.loads(text).get("sessions", {})
    except (ValueError, AttributeError):
        return {}
    out: dict[int, str] = {}
    if not isinstance(sessions, dict):
        return out
    for s in sessions.values():
        with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
            out[int(s["server_id"]["pid"])] = str(s["username"])[:256]
    return out


def _hex_addr(text: str) -> tuple[str, int]:
    """An address:port of /proc/net/tcp{,6} (host byte order words) as (ip, port)."""
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    # Each 32-bit word is in host (little-endian) order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port_hex, 16)


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(link[8:-1])
    return out


def client_socket(pid: int) -> tuple[str, int] | None:
    """The (address, port) at the other end of ``pid``'s SMB connection, if any."""
    inodes = _socket_inodes(pid)
    if not inodes:
        return None
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    f = line.split()
                    if len(f) < 10 or f[3] != _ESTABLISHED or f[9] not in inodes:
                        continue
                    _, lport = _hex_addr(f[1])
                    if lport in SMB_PORTS:
                        return _hex_addr(f[2])
        except (OSError, ValueError):
            continue
    return None


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, start time in clock ticks) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            rest = fh.read().rpartition(")")[2].split()
        return int(rest[1]), float(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _is_smbd_binary(exe: str) -> bool:
    if os.path.basename(exe) != "smbd":
        return False
    try:
        st = os.stat(exe)
    except OSError:
        return False
    return st.st_uid == 0 and not st.st_mode & 0o022


def _effective_user(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    euid = int(line.split()[2])
                    break
            else:
                return ""
    except (OSError, ValueError, IndexError):
        return ""
    if euid == 0:
        return ""
    try:
        return pwd.getpwuid(euid).pw_name
    except KeyError:
        return str(euid)


def worker_peer(pid: int) -> tuple[str, int] | None:
    """The client (address, port) of an smbd per-client worker; None for any other process."""
    stat = _stat(pid)
    if stat is None:
        return None
    exe = _exe(pid)
    if not exe or exe != _exe(stat[0]) or not _is_smbd_binary(exe):
        return None
    return client_socket(pid)


class SmbSessions:
    """smbd workers -> their client (see module contract)."""

    def __init__(
        self,
        conf: str = "",
        read_status: StatusReader = smbstatus_json,
        min_refresh_s: float = 1.0,
        delay_s: float = 1.0,
        max_cached: int = 4096,
    ) -> None:
        self.conf = conf
        self._read = read_status
        self.min_refresh_s = min_refresh_s
        self.delay_s = delay_s
        self.max_cached = max_cached
        self._lock = threading.Lock()
        self._clients: dict[tuple[int, float], SmbClient | None] = {}
        self._wanted = threading.Event()
        self._last_read = -1e9
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.status_reads = 0

    def client_of(self, pid: int) -> SmbClient | None:
        stat = _stat(pid)
        if stat is None:
            return None
        key = (pid, stat[1])
        with self._lock:
            cached = self._clients.get(key, False)
        if cached is None or (cached and cached.user):
            return cached
        if cached:  # a worker read while it acted as root: its user now, if it acts as one
            user = _effective_user(pid)
            with self._lock:
                now = self._clients.get(key)
                if user and now is not None and not now.user:
                    self._clients[key] = now = replace(now, user=user, user_source="uid")
            return now
        peer = worker_peer(pid)
        user = _effective_user(pid) if peer else ""
        client = SmbClient(peer[0], peer[1], user, "uid" if user else "") if peer else None
        with self._lock:
            if len(self._clients) >= self.max_cached:
                self._clients.clear()
            self._clients[key] = client
        if client is not None:
            self._want_status()
        return client

    # ------------------------------------------------------------ Samba's sessions
    def _want_status(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._run, name="tocsin-smbstatus", daemon=True
                )
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping:
                return
            wait_s = max(self.delay_s, self._last_read + self.min_refresh_s - time.monotonic())
            if wait_s > 0:
                time.sleep(wait_s)
            self._wanted.clear()
            self._last_read = time.monotonic()
            self.refresh()

    def refresh(self) -> None:
        """Read Samba's sessions now and name the users of the cached workers."""
        users = session_users(self._read(self.conf))
        self.status_reads += 1
        named = []
        with self._lock:
            for key, client in self._clients.items():
                user = users.get(key[0])
                if client is not None and user and client.user_source != "samba":
                    self._clients[key] = replace(client, user=user, user_source="samba")
                    named.append((key[0], client.addr, user))
        for pid, addr, user in named:
            log.info(
                "smbd worker %d serves %s as SMB user %r (Samba's session data)", pid, addr, user
            )

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
