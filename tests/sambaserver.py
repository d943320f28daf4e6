"""A throw-away Samba file server inside a test's network namespace.

``samba_server(ns, users)`` writes an ``smb.conf`` in a fresh directory (private,
lock, state, cache, pid and ncalrpc dirs all under it; SMB 3 only; no NetBIOS,
no printers), gives the namespace its own ``/etc/passwd`` and ``/etc/group``
with the Unix accounts of ``users`` (``ip netns exec`` bind-mounts
``/etc/netns/NAME/*`` over ``/etc``: the machine's accounts are untouched),
creates their tdbsam entries (``smbpasswd -a -s``), starts ``smbd
--foreground --no-process-group -s CONF`` in the namespace and removes all of
it on exit. The share ``[share]`` is the directory ``share`` of the server's
directory; the directory is world-traversable so the users' smbd workers
reach it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netns import Netns

SMB_PORT = 445


def samba_missing() -> str | None:
    """Why Samba cannot run here (Debian packages samba, smbclient), or None."""
    for tool in ("smbd", "smbpasswd", "smbstatus"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"needs {tool} (Debian packages samba and smbclient)"
    return None


@dataclass(frozen=True)
class SmbUser:
    name: str
    password: str
    uid: int


@dataclass
class SambaServer:
    ns: Netns
    root: Path
    conf: Path
    share: Path
    proc: subprocess.Popen[bytes]

    @property
    def master_pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return (self.root / "smbd.log").read_text(errors="replace")[-4000:]


def _conf(root: Path) -> str:
    return f"""[global]
  server role = standalone server
  passdb backend = tdbsam:{root}/private/passdb.tdb
  private dir = {root}/private
  binddns dir = {root}/private
  lock directory = {root}/lock
  state directory = {root}/state
  cache directory = {root}/cache
  pid directory = {root}/pid
  ncalrpc dir = {root}/ncalrpc
  log file = {root}/log/log.%m
  log level = 1
  smb ports = {SMB_PORT}
  disable netbios = yes
  server min protocol = SMB3
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  rpc start on demand helpers = no
[share]
  path = {root}/share
  read only = no
  create mask = 0666
  directory mask = 0777
"""


@contextmanager
def samba_server(ns: Netns, users: list[SmbUser], share_from: Path) -> Iterator[SambaServer]:
    """Samba serving a copy of ``share_from`` as ``[share]`` (see module doc)."""
    root = Path(tempfile.mkdtemp(prefix="tocsin-smb-", dir="/tmp"))
    etc = Path("/etc/netns") / ns.name
    proc: subprocess.Popen[bytes] | None = None
    try:
        root.chmod(0o755)
        for d in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            (root / d).mkdir()
        share = root / "share"
        shutil.copytree(share_from, share)
        for dirpath, _dirs, files in os.walk(share):
            os.chmod(dirpath, 0o777)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o666)
        conf = root / "smb.conf"
        conf.write_text(_conf(root))
        etc.mkdir(parents=True)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        for u in users:
            passwd += f"{u.name}:x:{u.uid}:{u.uid}:{u.name}:/nonexistent:/usr/sbin/nologin\n"
            group += f"{u.name}:x:{u.uid}:\n"
        (etc / "passwd").write_text(passwd)
        (etc / "group").write_text(group)
        for u in users:
            res = ns.run(
                ["smbpasswd", "-c", str(conf), "-a", "-s", u.name],
                input=f"{u.password}\n{u.password}\n",
            )
            if res.returncode != 0:
                raise RuntimeError(f"smbpasswd -a {u.name}: {res.stderr}{res.stdout}")
        with (root / "smbd.log").open("wb") as log:
            proc = ns.popen(
                ["smbd", "--foreground", "--no-process-group", "--debug-stdout", "-s", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        yield SambaServer(ns, root, conf, share, proc)
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, 18)
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
