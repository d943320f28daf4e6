"""Commands cannot be turned against the agent's host: identity, deadline, protection, drills.

Real processes throughout: the targets are live processes (renamed with prctl,
copied binaries, a real dbus-daemon, pids reused through ns_last_pid); the
agent is the real ``tocsin-agent`` behind a scripted collector (``GrpcSink``,
which sends the commands) or the real ``tocsin-collector`` with the operator
CLI; the drill is the real ``tocsin-agent drill``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from grpc_sink import GrpcSink
from transport_procs import BIN, CollectorProc, wait_for

from tocsin.agent import _linux, simulate
from tocsin.agent.act import EXPIRED, Actions
from tocsin.agent.attribute import Attributor
from tocsin.agent.forks import ForkWatch
from tocsin.agent.protect import protection
from tocsin.v1 import telemetry_pb2 as pb

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="signals to others, fanotify need root")

SLEEP = "import time; time.sleep(120)"
NAMED = "import sys,time; from tocsin.agent import _linux; _linux.set_process_name(sys.argv[1]); time.sleep(120)"  # noqa: E501
THREADED = "import threading,time; threading.Thread(target=time.sleep, args=(120,)).start(); time.sleep(120)"  # noqa: E501


def ref(pid: int) -> pb.ProcessRef:
    """The identity a collector sends for ``pid`` (as the agent's samples carry it)."""
    ticks = _linux.start_ticks(pid) or 0
    return pb.ProcessRef(pid=pid, start_ticks=ticks, kernel_boot_id=_linux.kernel_boot_id())


def command(kind: str, pid: int, cid: str = "", **kw: object) -> pb.Command:
    return pb.Command(id=cid or kind, kind=kind, pids=[pid], processes=[ref(pid)], **kw)


def status(pid: int) -> str:
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return "gone"


def stopped_soon(pid: int, timeout_s: float = 2.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if status(pid) == psutil.STATUS_STOPPED:
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def process(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(list(argv))
    try:
        time.sleep(0.3)  # exec'd and renamed
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait()


def reuse_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` as pid ``pid`` (ns_last_pid; retried while other processes race us)."""
    for _ in range(200):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        p = subprocess.Popen(argv)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    pytest.skip(f"could not get pid {pid} back (a busy machine)")


# ---------------------------------------------------------------- protection


@ROOT_ONLY
@pytest.mark.parametrize("name", ["sshd", "smbd", "systemd", "tocsin-agent"])
def test_an_encryptor_calling_itself_a_daemon_is_suspended(tmp_path: Path, name: str) -> None:
    with process(sys.executable, "-c", NAMED, name) as p:
        wait_for(f"the process to call itself {name}", lambda: psutil.Process(p.pid).name() == name)
        r = Actions(tmp_path).run(command("suspend", p.pid))
        assert r.status == "done", r.detail
        assert stopped_soon(p.pid)


@ROOT_ONLY
def test_a_copied_binary_named_sshd_is_suspended(tmp_path: Path) -> None:
    fake = tmp_path / "home" / "sshd"
    fake.parent.mkdir()
    shutil.copy("/bin/sleep", fake)
    with process(str(fake), "120") as p:
        assert psutil.Process(p.pid).name() == "sshd"
        r = Actions(tmp_path).run(command("suspend", p.pid))
        assert r.status == "done", r.detail
        assert stopped_soon(p.pid)


@ROOT_ONLY
@pytest.mark.skipif(not os.path.exists("/usr/bin/dbus-daemon"), reason="needs dbus-daemon")
def test_a_daemon_is_protected_by_its_executable_not_its_name(tmp_path: Path) -> None:
    """The real /usr/bin/dbus-daemon (root's) is refused; the same bytes copied are not."""
    copy = tmp_path / "dbus-daemon"
    shutil.copy("/usr/bin/dbus-daemon", copy)
    args = ["--session", "--nofork", "--nopidfile"]
    with (
        process("/usr/bin/dbus-daemon", *args, f"--address=unix:path={tmp_path}/a") as real,
        process(str(copy), *args, f"--address=unix:path={tmp_path}/b") as fake,
    ):
        acts = Actions(tmp_path)
        for kind in ("suspend", "resume", "kill"):
            r = acts.run(command(kind, real.pid))
            assert r.status == "refused" and "protected daemon" in r.detail, r.detail
        assert real.poll() is None and status(real.pid) != psutil.STATUS_STOPPED
        assert protection(fake.pid) == ""
        assert acts.run(command("suspend", fake.pid)).status == "done"
        assert stopped_soon(fake.pid)


SMB_CONF = """[global]
  smb ports = {port}
  interfaces = lo
  bind interfaces only = yes
  server role = standalone server
  map to guest = Bad User
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
{dirs}
[share]
  path = {root}/share
  guest ok = yes
  read only = no
"""
SMB_DIRS = {
    "private": "private dir",
    "lock": "lock directory",
    "state": "state directory",
    "cache": "cache directory",
    "pid": "pid directory",
    "ncalrpc": "ncalrpc dir",
}


@ROOT_ONLY
@pytest.mark.skipif(
    not (shutil.which("smbd") and shutil.which("smbclient")), reason="needs samba and smbclient"
)
def test_the_smbd_master_is_protected_and_its_client_worker_is_not(tmp_path: Path) -> None:
    """A real smbd on a loopback port, a real client session: its worker may be stopped."""
    from transport_procs import free_port

    from tocsin.agent.protect import smbd_client_worker

    for d in (*SMB_DIRS, "share"):
        (tmp_path / d).mkdir()
    dirs = "\n".join(f"  {option} = {tmp_path / d}" for d, option in SMB_DIRS.items())
    conf = tmp_path / "smb.conf"
    conf.write_text(SMB_CONF.format(port=free_port(), dirs=dirs, root=tmp_path))
    port = conf.read_text().split("smb ports = ")[1].split()[0]
    forks = ForkWatch.open()
    assert forks is not None
    with process("smbd", "--foreground", "--no-process-group", "-s", str(conf)) as master:

        def listening() -> bool:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", int(port)), 1),
            ):
                return True
            return False

        # smbd takes a while to listen on a fresh machine (its databases are created first): a
        # client started before that fails at once and no worker ever comes.
        wait_for("smbd listening", listening, 60)
        client = subprocess.Popen(
            ["smbclient", "-p", port, "//127.0.0.1/share", "-N"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def worker() -> int:
                """The child serving smbclient's session (not one still closing the probe's)."""
                for k in psutil.Process(master.pid).children():
                    with contextlib.suppress(psutil.Error):
                        live = [c for c in k.net_connections() if c.status == "ESTABLISHED"]
                        if k.name() == "smbd" and live:
                            return int(k.pid)
                return 0

            pid = wait_for("an smbd client worker", worker, 60)
            acts = Actions(tmp_path)
            r = acts.run(command("suspend", master.pid))
            assert r.status == "refused" and "protected daemon" in r.detail, r.detail
            assert smbd_client_worker(pid) and not smbd_client_worker(master.pid)
            r = acts.run(command("suspend", pid))
            assert r.status == "done" and r.pids == [pid], r.detail
            assert stopped_soon(pid) and status(master.pid) != psutil.STATUS_STOPPED
            acts.run(pb.Command(id="k", kind="kill", pids=[pid]))
            # Gone, its writes are never put on the master (protected by its executable).
            wait_for("the worker's end", lambda: not psutil.pid_exists(pid), 10)
            assert (forks.parent_of(pid) or (0, 0.0))[0] == master.pid
            attributor = Attributor([str(tmp_path / "share")], use_fanotify=False, forks=forks)
            assert attributor._stand_in(pid) is None
        finally:
            client.kill()
            client.wait()
            forks.stop()


@ROOT_ONLY
def test_thread_ids_are_refused_for_every_command(tmp_path: Path) -> None:
    with process(sys.executable, "-c", THREADED) as p:
        wait_for("the thread", lambda: len(os.listdir(f"/proc/{p.pid}/task")) > 1, 5)
        tid = max(int(t) for t in os.listdir(f"/proc/{p.pid}/task"))
        acts = Actions(tmp_path)
        for kind in ("suspend", "resume", "kill"):
            r = acts.run(command(kind, tid))
            assert r.status == "refused" and "thread" in r.detail, (kind, r.detail)
        time.sleep(0.3)
        assert p.poll() is None and status(p.pid) != psutil.STATUS_STOPPED


# ---------------------------------------------------------------- identity and deadline


@ROOT_ONLY
def test_a_pid_named_without_identity_or_with_a_stale_one_is_refused(tmp_path: Path) -> None:
    with process(sys.executable, "-c", SLEEP) as p:
        acts = Actions(tmp_path)
        bare = acts.run(pb.Command(id="a", kind="suspend", pids=[p.pid]))
        assert bare.status == "refused" and "without its start time" in bare.detail
        stale = ref(p.pid)
        stale.start_ticks -= 1
        r = acts.run(pb.Command(id="b", kind="kill", pids=[p.pid], processes=[stale]))
        assert "another process" in r.detail and r.pids == [p.pid]
        other_boot = ref(p.pid)
        other_boot.kernel_boot_id = "0" * 32
        r = acts.run(pb.Command(id="c", kind="suspend", pids=[p.pid], processes=[other_boot]))
        assert r.status == "refused" and "another boot" in r.detail
        time.sleep(0.3)
        assert p.poll() is None and status(p.pid) != psutil.STATUS_STOPPED


@ROOT_ONLY
def test_after_pid_reuse_or_a_reboot_nothing_unrelated_is_resumed_or_killed(
    tmp_path: Path,
) -> None:
    victim = subprocess.Popen([sys.executable, "-c", SLEEP])
    # Start times are in clock ticks (10 ms): a pid reused within the tick it was first used
    # in would look the same. Real pid reuse takes a wrap of the pid space, not milliseconds.
    time.sleep(0.05)
    acts = Actions(tmp_path)
    assert acts.run(command("suspend", victim.pid)).status == "done"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    unrelated = reuse_pid(victim.pid, ["sleep", "120"])
    try:
        again = Actions(tmp_path)  # the agent restarted: the list comes from the state dir
        assert again.suspended == {victim.pid}
        r = again.run(pb.Command(id="k", kind="kill", pids=[victim.pid]))
        assert r.status == "done" and "left alone" in r.detail, r.detail
        assert again.run(pb.Command(id="k2", kind="kill")).pids == []
        time.sleep(0.3)
        assert unrelated.poll() is None, "an unrelated process was killed"
        # A state dir from an earlier boot: its pids are forgotten, never signalled.
        acts.run(command("suspend", unrelated.pid))
        state = tmp_path / "actions.json"
        state.write_text(state.read_text().replace(_linux.kernel_boot_id(), "f" * 36))
        os.kill(unrelated.pid, signal.SIGCONT)
        assert Actions(tmp_path).suspended == set()
        assert Actions(tmp_path).run(pb.Command(id="k3", kind="kill")).pids == []
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


@ROOT_ONLY
def test_a_killed_process_never_runs_again_after_its_suspend(tmp_path: Path) -> None:
    """A kill ends a stopped process where it stands: resumed first, it would run on until
    the kill lands (a stopped smbd worker would finish the request it held and answer the
    attacker). A tree of eight shells writing in a loop shows it: nothing is written
    between the suspend and the end of the tree."""
    out = tmp_path / "writes"
    writers = "for i in 1 2 3 4 5 6 7 8; do (while :; do echo x >> {}; done) & done; wait"
    woke = 0
    # A SIGCONT before each SIGKILL lets one of the eight write in most runs.
    for n in range(20):
        acts = Actions(tmp_path / f"state-{n}")
        p = subprocess.Popen(["sh", "-c", writers.format(out)])
        try:
            wait_for("eight writers", lambda pid=p.pid: len(psutil.Process(pid).children()) == 8)
            assert acts.run(command("suspend", p.pid)).status == "done"
            assert stopped_soon(p.pid)
            time.sleep(0.05)
            before = out.stat().st_size
            r = acts.run(pb.Command(id="k", kind="kill", pids=[p.pid]))
            assert r.status == "done", r.detail
            assert p.wait(timeout=5) == -signal.SIGKILL
            woke += out.stat().st_size != before
        finally:
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            p.wait()
            out.unlink(missing_ok=True)
    assert woke == 0, f"the killed tree ran again in {woke} of 20 kills"


def test_an_expired_command_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with process(sys.executable, "-c", SLEEP) as p:
        acts = Actions(tmp_path, clock=lambda: 1_000_000.0)
        cmd = command("suspend", p.pid)
        cmd.deadline.FromSeconds(999_999)
        r = acts.run(cmd)
        assert r.status == EXPIRED == "refused: expired"
        assert not stopped_soon(p.pid, 0.5) and acts.suspended == set()


# ---------------------------------------------------------------- through the real agent


def _agent(
    share: Path, state: Path, collector: str, tripwire: str = "off", *extra: str
) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [
            str(BIN / "tocsin-agent"),
            *("--collector", collector, "--watch", str(share), "--host-id", "guarded"),
            *("--state-dir", str(state), "--insecure", "--tripwire", tripwire, *extra),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    for line in p.stderr:
        if "watching" in line:
            threading.Thread(target=p.stderr.read, daemon=True).start()
            return p
    raise AssertionError("agent did not start")


def _result(sink: GrpcSink, cid: str) -> pb.ActionResult:
    return wait_for(
        f"result {cid}", lambda: next((r for r in sink.results() if r.command_id == cid), None), 15
    )


@pytest.fixture
def agent_and_sink(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], GrpcSink]]:
    share = tmp_path / "share"
    share.mkdir()
    sink = GrpcSink()
    agent = _agent(share, tmp_path / "state", sink.target)
    try:
        wait_for("hello", lambda: any(m.HasField("hello") for m in sink.messages), 15)
        yield agent, sink
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.pid, signal.SIGCONT)
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        sink.stop()


@ROOT_ONLY
def test_the_real_agent_refuses_commands_naming_its_own_threads(
    agent_and_sink: tuple[subprocess.Popen[str], GrpcSink],
) -> None:
    agent, sink = agent_and_sink
    tids = [int(t) for t in os.listdir(f"/proc/{agent.pid}/task") if int(t) != agent.pid]
    assert tids
    details = []
    for kind in ("suspend", "resume", "kill"):
        for tid in tids[:3]:
            cid = f"{kind}-{tid}"
            sink.send(command(kind, tid, cid))
            r = _result(sink, cid)
            assert r.status == "refused", (kind, r.detail)
            details.append(r.detail)
    assert agent.poll() is None, "the agent was killed through one of its threads"
    assert all("is a thread of process" in d for d in details), details
    assert status(agent.pid) != psutil.STATUS_STOPPED


@ROOT_ONLY
def test_the_real_agent_suspends_what_the_collector_names_whatever_it_calls_itself(
    agent_and_sink: tuple[subprocess.Popen[str], GrpcSink],
) -> None:
    """The collector's suspend of a process calling itself sshd or smbd is carried out."""
    _, sink = agent_and_sink
    for name in ("sshd", "smbd"):
        with process(sys.executable, "-c", NAMED, name) as p:
            assert psutil.Process(p.pid).name() == name
            sink.send(command("suspend", p.pid, f"suspend-{name}"))
            r = _result(sink, f"suspend-{name}")
            assert r.status == "done" and list(r.pids) == [p.pid], r.detail
            assert stopped_soon(p.pid)


@ROOT_ONLY
def test_the_real_agent_refuses_an_expired_command(
    agent_and_sink: tuple[subprocess.Popen[str], GrpcSink],
) -> None:
    _, sink = agent_and_sink
    with process(sys.executable, "-c", SLEEP) as p:
        cmd = command("suspend", p.pid, "late")
        cmd.deadline.FromSeconds(int(time.time()) - 5)
        sink.send(cmd)
        assert _result(sink, "late").status == "refused: expired"
        assert not stopped_soon(p.pid, 0.5)
        sink.send(command("suspend", p.pid, "in-time"))
        assert _result(sink, "in-time").status == "done"
        assert stopped_soon(p.pid)


@ROOT_ONLY
def test_the_real_agent_suspends_an_encryptor_calling_itself_a_protected_name(
    tmp_path: Path,
) -> None:
    """The operator protects ``sshd`` (and root's python, whose copy is not root's) from
    the tripwire; an in-place encryptor calling itself sshd is suspended all the same."""
    share = tmp_path / "share"
    simulate.make_share(share, 600)
    sink = GrpcSink()
    protect = ("--protect", "sshd", "--protect", "smbd")
    agent = _agent(share, tmp_path / "state", sink.target, "enforce", *protect)
    attack = None
    try:
        wait_for("hello", lambda: any(m.HasField("hello") for m in sink.messages), 15)
        argv = [sys.executable, "-m", "tocsin.agent.simulate", "run", "encrypt-as-sshd"]
        attack = subprocess.Popen([*argv, str(share), "--rate", "200"])
        assert stopped_soon(attack.pid, 30), "the tripwire spared an encryptor named sshd"
        assert psutil.Process(attack.pid).name() == "sshd"
        done = wait_for(
            "the tripwire's report",
            lambda: [r for r in sink.results() if r.local and r.kind == "suspend"],
        )
        assert done[0].status == "done" and list(done[0].pids) == [attack.pid]
    finally:
        if attack is not None:
            attack.kill()
            attack.wait()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        sink.stop()


def _tocsin(addr: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tocsin"), *args, "--collector", addr, "--insecure"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _suspended_on_collector(addr: str) -> list[int]:
    import json

    res = _tocsin(addr, "hosts", "--json")
    hosts = json.loads(res.stdout) if res.returncode == 0 else []
    return next((list(h["suspended_pids"]) for h in hosts if h["host_id"] == "guarded"), [])


@ROOT_ONLY
def test_release_kill_after_pid_reuse_does_not_kill_an_unrelated_process(tmp_path: Path) -> None:
    """The tripwire suspends an encryptor; it dies; its pid goes to an innocent process;
    ``tocsin release HOST --kill`` must leave the innocent one running."""
    share = tmp_path / "share"
    simulate.make_share(share, 600)
    collector = CollectorProc(tmp_path / "c.db", tmp_path / "c.log", "127.0.0.1:0", ["--insecure"])
    addr = collector.start()
    agent = _agent(share, tmp_path / "state", addr, tripwire="enforce")
    innocent: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(1.5)
        attack = subprocess.Popen(
            [sys.executable, "-m", "tocsin.agent.simulate", "run", "encrypt-inplace", str(share)]
        )
        assert stopped_soon(attack.pid, 30), "the tripwire did not suspend the encryptor"
        pid = attack.pid
        wait_for("the suspension on the collector", lambda: pid in _suspended_on_collector(addr))
        attack.kill()
        attack.wait()
        innocent = reuse_pid(pid, ["sleep", "120"])
        res = _tocsin(addr, "release", "guarded", "--kill")
        time.sleep(0.5)
        assert innocent.poll() is None, f"release --kill killed an unrelated process: {res.stdout}"
        assert status(pid) != psutil.STATUS_STOPPED
        assert "another process" in res.stdout, res.stdout + res.stderr
        assert pid not in _suspended_on_collector(addr)
    finally:
        if innocent is not None:
            innocent.kill()
            innocent.wait()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        collector.stop()
