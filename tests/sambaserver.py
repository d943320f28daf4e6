"""A throw-away Samba file server inside a test's network namespace, and a town around it.

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

``smb_town(tmp)`` builds the whole town around it (file server with
tocsin-agent, collector host, attacker and colleague workstations speaking SMB
3 through tools/smb_workstation.py) and ``smb_attack(town, style)`` runs one
attack and records what tocsin did (``SmbAttack``): the SMB end-to-end test
asserts on it, ``make eval`` reports it. Every packet stays inside namespaces
created here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from transport_procs import wait_for

from netns import Netns, star
from receiver import read_records
from tocsin.agent.simulate import make_share

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


# ---------------------------------------------------------------------------
# A town: the file server (hub: smbd and tocsin-agent), the collector host
# (tocsin-collector, a webhook receiver, an operator hook), the attacker's and a
# colleague's workstations, each a leaf joined to the hub by its own veth pair.

BIN = Path(sys.executable).parent
TOOLS = Path(__file__).resolve().parents[1] / "tools"
COLLECTOR_PORT = 50051
WEBHOOK_PORT = 8080
HOST_ID = "mairie-fs1"
ATTACKER = SmbUser("compta", "Compta-2026!", 41201)
COLLEAGUE = SmbUser("accueil", "Accueil-2026!", 41202)
STYLES = ("inplace", "copy", "rename")


def lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split() for ln in path.read_text().splitlines() if ln.strip()]


@dataclass
class Town:
    server: SambaServer
    server_for: dict[str, str]  # leaf name -> the file server's address on its link
    collector: Netns
    attacker: Netns
    colleague: Netns
    tmp: Path
    procs: list[subprocess.Popen[bytes]]

    @property
    def collector_addr(self) -> str:
        return f"{self.collector.address}:{COLLECTOR_PORT}"

    def spawn(self, ns: Netns, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.tmp / log).open("wb") as fh:
            proc = ns.popen(args, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def workstation(
        self, ns: Netns, user: SmbUser, args: list[str], log: str
    ) -> subprocess.Popen[bytes]:
        server = self.server_for[ns.name]
        login = ["--server", server, "--user", user.name, "--password", user.password]
        return self.spawn(
            ns, [sys.executable, str(TOOLS / "smb_workstation.py"), *args, *login], log
        )

    def tocsin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator CLI on the collector's host (loopback: --insecure answers no other)."""
        local = f"127.0.0.1:{COLLECTOR_PORT}"
        return self.collector.run([str(BIN / "tocsin"), *args, "--collector", local, "--insecure"])

    def webhooks(self) -> list[dict[str, Any]]:
        return read_records(self.tmp / "webhooks.jsonl")

    def critical(self) -> dict[str, Any] | None:
        for rec in self.webhooks():
            b = rec["body"]
            if b.get("event") == "alert" and b.get("severity") == "critical":
                return rec
        return None

    def ruined_on_server(self) -> int:
        """The share's first files that the server no longer holds as they were (gone or
        changed), read from the server's disk."""
        seed = self.tmp / "seed"
        n = 0
        for f in seed.rglob("*"):
            if f.is_file():
                try:
                    n += (self.server.share / f.relative_to(seed)).read_bytes() != f.read_bytes()
                except FileNotFoundError:
                    n += 1
        return n

    def smb_reachable(self, ns: Netns) -> bool:
        return ns.can_connect(self.server_for[ns.name], SMB_PORT, 1.0)

    def logs(self) -> str:
        out = [f"--- smbd\n{self.server.log()}"]
        out += [
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        ]
        return "\n".join(out)


@contextmanager
def smb_town(tmp: Path, share_files: int = 600, tripwire: str = "enforce") -> Iterator[Town]:
    """A town with the agent connected and settled (see above); everything removed on exit."""
    seed = tmp / "seed"
    make_share(seed, files=share_files, seed=12)
    with (
        star(3, "tsm") as (hubs, leaves),
        samba_server(hubs[0], [ATTACKER, COLLEAGUE], seed) as srv,
    ):
        cns, ans, wns = leaves
        server_for = {leaf.name: hub.address for hub, leaf in zip(hubs, leaves, strict=True)}
        town = Town(srv, server_for, cns, ans, wns, tmp, [])
        try:
            _start(town, hubs[0], tripwire)
            yield town
        finally:
            for proc in town.procs:
                if proc.poll() is None:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)


def _start(town: Town, hub: Netns, tripwire: str) -> None:
    tmp, cns = town.tmp, town.collector
    hook = tmp / "hook.sh"
    hook.write_text(
        f'#!/bin/sh\n{{ env | grep ^TOCSIN_ | sort; cat; echo; }} >> "{tmp}/hook.out"\n'
    )
    hook.chmod(0o755)
    (tmp / "collector.toml").write_text(
        f'[[hooks]]\npath = "{hook}"\non = ["critical"]\nname = "switch"\n'
    )
    receiver = [sys.executable, str(TOOLS / "receiver.py"), "webhook", cns.address]
    town.spawn(cns, [*receiver, str(WEBHOOK_PORT), str(tmp / "webhooks.jsonl")], "receiver.log")
    town.spawn(
        cns,
        [
            str(BIN / "tocsin-collector"),
            "--listen",
            f"0.0.0.0:{COLLECTOR_PORT}",  # the agent's address and the operator's loopback
            "--db",
            str(tmp / "collector.db"),
            "--webhook",
            f"http://{cns.address}:{WEBHOOK_PORT}/hook",
            "--respond",
            "enforce",
            "--config",
            str(tmp / "collector.toml"),
            "--insecure",
        ],
        "collector.log",
    )
    hub.wait_connect(cns.address, COLLECTOR_PORT)
    town.spawn(
        hub,
        [
            str(BIN / "tocsin-agent"),
            "--collector",
            town.collector_addr,
            "--watch",
            str(town.server.share),
            "--host-id",
            HOST_ID,
            "--state-dir",
            str(tmp / "agent-state"),
            "--smb-conf",
            str(town.server.conf),
            "--insecure",
            "--tripwire",
            tripwire,
        ],
        "agent.log",
    )
    town.attacker.wait_connect(town.server_for[town.attacker.name], SMB_PORT)

    def connected() -> bool:
        res = town.tocsin("hosts", "--json")
        return res.returncode == 0 and any(
            h["host_id"] == HOST_ID and h["connected"] for h in json.loads(res.stdout)
        )

    try:
        wait_for("the agent to connect", connected, timeout_s=40, interval_s=0.5)
    except AssertionError:
        raise AssertionError("agent never connected\n" + town.logs()) from None
    time.sleep(1.0)  # the agent's watches are in place before it says hello; settle


@dataclass
class SmbAttack:
    """What one attack over the share did, and what tocsin did about it."""

    style: str
    alert: dict[str, Any]  # the critical webhook record (body, received_at)
    worker_pid: int
    worker_ppid: int
    worker_stopped: bool
    client_blocked: bool
    master_running: bool  # the smbd master neither stopped nor gone, after the response
    colleague_reachable: bool
    host_isolated: bool
    ruined: list[float]  # when the attacker saw each file ruined, before its worker stopped
    # The share's own files no longer as they were, counted on the server: when the
    # attacker was cut (stopped and blocked, 0.5 s later), and at the release. The
    # attacker's own count can lag the server's: a reply the block held back reaches it
    # once the release unblocks it, for a file ruined before the stop.
    server_ruined_at_cut: int
    server_ruined_at_release: int
    progress_late: list[str]  # the attacker's lines written after the cut, for diagnosis
    saves: list[list[str]]  # the colleague's saves, from the attack's start to the release
    saves_after_stop: int
    hook_out: str
    release: subprocess.CompletedProcess[str]
    client_unblocked: bool
    worker_gone: bool
    master_after_release: bool
    saves_after_release: list[list[str]]

    @property
    def seconds_to_critical(self) -> float:
        return float(self.alert["received_at"]) - self.ruined[0]

    def figures(self) -> dict[str, Any]:
        return {
            "style": self.style,
            "files_ruined_before_stop": len(self.ruined),
            "seconds_first_ruined_to_critical_webhook": round(self.seconds_to_critical, 3),
            "colleague_saves_ok": sum(1 for x in self.saves if x[1] == "ok"),
            "colleague_saves_failed": sum(1 for x in self.saves if x[1] != "ok"),
            "colleague_saves_ok_after_release": sum(
                1 for x in self.saves_after_release if x[1] == "ok"
            ),
        }


def smb_attack(town: Town, style: str, watch_s: float = 3.0) -> SmbAttack:
    """The colleague saves every 0.5 s; the attacker encrypts in ``style``; observe the
    response, watch ``watch_s`` more, then ``tocsin release --kill`` (see SmbAttack)."""
    saves_log = town.tmp / f"colleague-{style}.saves"
    town.workstation(town.colleague, COLLEAGUE, ["save", "--log", str(saves_log)], "colleague.log")
    try:
        wait_for("the colleague's first saves", lambda: len(lines(saves_log)) >= 3, timeout_s=30)
    except AssertionError:
        raise AssertionError("the colleague cannot save\n" + town.logs()) from None
    progress = town.tmp / f"attack-{style}.progress"
    args = ["attack", style, "--progress", str(progress)]
    attacker = town.workstation(town.attacker, ATTACKER, args, "attacker.log")
    try:
        alert = wait_for("a critical webhook", town.critical, timeout_s=60)
    except AssertionError:
        raise AssertionError("no critical alert\n" + town.logs()) from None
    proc = alert["body"].get("process") or {}
    worker = psutil.Process(int(proc.get("pid", 0)) or town.server.master_pid)
    worker_ppid = worker.ppid()
    master = psutil.Process(town.server.master_pid)

    def stopped() -> bool:
        with contextlib.suppress(psutil.Error):
            return worker.status() == psutil.STATUS_STOPPED
        return False

    worker_stopped = bool(_try(lambda: wait_for("the worker to stop", stopped, 15)))
    stopped_at = time.time()
    blocked = bool(
        _try(lambda: wait_for("a block", lambda: not town.smb_reachable(town.attacker), 15))
    )
    time.sleep(0.5)
    ruined = [float(x[0]) for x in lines(progress)]
    at_cut = town.ruined_on_server()
    time.sleep(watch_s)
    master_running = master.is_running() and master.status() != psutil.STATUS_STOPPED
    colleague_reachable = town.smb_reachable(town.colleague)
    hosts = json.loads(town.tocsin("hosts", "--json").stdout or "[]")
    isolated = any(h["host_id"] == HOST_ID and h["isolated"] for h in hosts)
    start = ruined[0] if ruined else stopped_at
    saves = [x for x in lines(saves_log) if float(x[0]) >= start]
    hook_file = town.tmp / "hook.out"
    hook_out = _try(
        lambda: wait_for("the hook", lambda: hook_file.exists() and hook_file.read_text(), 15)
    )
    at_release = town.ruined_on_server()
    release = town.tocsin("release", HOST_ID, "--kill")
    released_at = time.time()
    unblocked = bool(
        _try(lambda: wait_for("the unblock", lambda: town.smb_reachable(town.attacker), 15))
    )
    gone = bool(_try(lambda: wait_for("the worker's end", lambda: not worker.is_running(), 15)))
    master_after = master.is_running() and master.status() != psutil.STATUS_STOPPED
    _try(lambda: wait_for("saves", lambda: len(lines(saves_log)) >= len(saves) + 3, 10))
    time.sleep(1.5)
    after = [x for x in lines(saves_log) if float(x[0]) >= released_at]
    attacker.kill()
    return SmbAttack(
        style=style,
        alert=alert,
        worker_pid=worker.pid,
        worker_ppid=worker_ppid,
        worker_stopped=worker_stopped,
        client_blocked=blocked,
        master_running=master_running,
        colleague_reachable=colleague_reachable,
        host_isolated=isolated,
        ruined=ruined,
        server_ruined_at_cut=at_cut,
        server_ruined_at_release=at_release,
        progress_late=[
            f"{float(x[0]) - stopped_at:+.3f} s after the stop, "
            f"{float(x[0]) - released_at:+.3f} s after the release: {x[-1]}"
            for x in lines(progress)[len(ruined) :]
        ],
        saves=[x for x in lines(saves_log) if start <= float(x[0]) < released_at],
        saves_after_stop=sum(1 for x in saves if float(x[0]) >= stopped_at and x[1] == "ok"),
        hook_out=str(hook_out or ""),
        release=release,
        client_unblocked=unblocked,
        worker_gone=gone,
        master_after_release=master_after,
        saves_after_release=after,
    )


def _try(wait: Any) -> Any:
    """The value a wait_for returned, or None when it timed out."""
    try:
        return wait()
    except AssertionError:
        return None
