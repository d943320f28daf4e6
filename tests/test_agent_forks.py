"""One short process per file: the launcher is what tocsin stops.

``find -exec`` or a shell loop runs one encryptor per file; each has exited by the
time its fanotify event is read. The kernel's process events (``ForkWatch``) still
name the process that started it. Real processes, real fanotify, the real agent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_agent_guards import reuse_pid
from transport_procs import wait_for

from netns import netns_unavailable_reason
from tocsin.agent import simulate
from tocsin.agent.attribute import Attributor
from tocsin.agent.drill import DrillKey
from tocsin.agent.forks import ForkWatch

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="process events, fanotify need root")

# A launcher (named by argv[1]) that runs one short writer per file, like find -exec.
LAUNCHER = """
import subprocess, sys, time
from tocsin.agent import _linux
_linux.set_process_name(sys.argv[1])
for n in range(int(sys.argv[3])):
    subprocess.run(["sh", "-c", f"head -c 4096 /dev/urandom > {sys.argv[2]}/f{n}.docx"])
    time.sleep(0.02)
time.sleep(60)
"""

# The one-liners: in place through a pipe (the writer is dd, its parent a dead sh),
# and to an encrypted copy with the original deleted by find itself.
FIND_EXEC = {
    "inplace": "find {share} -type f -exec sh -c 'openssl enc -aes-256-ctr -pbkdf2 -iter 1 "
    '-pass pass:x -in "$1" | dd of="$1" conv=notrunc status=none\' _ {{}} \\;',
    # Each file's shell lingers: alive when its writer's event is read, one new tree per
    # file, one file in each short window: its launcher is known by the writers it ran.
    "linger": "find {share} -type f -exec sh -c 'openssl enc -aes-256-ctr -pbkdf2 -iter 1 "
    '-pass pass:x -in "$1" | dd of="$1" conv=notrunc status=none; sleep 0.2\' _ {{}} \\;',
    "copy": "find {share} -type f ! -name '*.enc' -exec openssl enc -aes-256-cbc -pbkdf2 "
    "-iter 1 -pass pass:x -in {{}} -out {{}}.enc \\; -delete",
}


@ROOT_ONLY
def test_the_parent_of_a_process_is_known_after_it_exited() -> None:
    forks = ForkWatch.open()
    assert forks is not None, "process events must be offered to root on the host"
    try:
        sh = subprocess.Popen(["sh", "-c", "/bin/true; /bin/true; sleep 0.2"])
        sh.wait()
        kids = lambda: [c for c, (p, _) in list(forks._parents.items()) if p == sh.pid]  # noqa: E731
        wait_for("the shell's forks", lambda: len(kids()) >= 3, timeout_s=5)
        for kid in kids():
            assert not psutil.pid_exists(kid) or psutil.Process(kid).ppid() != sh.pid
            assert (forks.parent_of(kid) or (0, 0.0))[0] == sh.pid
        assert (forks.parent_of(sh.pid) or (0, 0.0))[0] == os.getpid()
    finally:
        forks.stop()


@ROOT_ONLY
def test_a_small_map_keeps_the_newest_forks() -> None:
    forks = ForkWatch.open(max_kept=8)
    assert forks is not None
    try:
        for _ in range(20):
            subprocess.run(["true"], check=True)
        last = subprocess.Popen(["true"])
        last.wait()
        wait_for(
            "the last fork",
            lambda: (forks.parent_of(last.pid) or (0,))[0] == os.getpid(),
            timeout_s=5,
        )
        assert len(forks._parents) <= 8
    finally:
        forks.stop()


@ROOT_ONLY
def test_the_kernel_hands_over_forks_only() -> None:
    """A socket filter drops execs and exits in the kernel: a busy host's exec and exit
    events cost the agent nothing (each process makes three events, one is a fork)."""
    forks = ForkWatch.open()
    assert forks is not None
    try:
        for _ in range(50):
            subprocess.run(["true"], check=True)
        time.sleep(0.5)
        assert len(forks._parents) >= 50
        assert forks.received <= 1.5 * len(forks._parents) + 5, (
            f"{forks.received} messages for {len(forks._parents)} forks"
        )
    finally:
        forks.stop()


_IN_A_NETNS = """
import logging, subprocess, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from tocsin.agent.forks import ForkWatch
forks = ForkWatch.open()
if forks is not None:
    child = subprocess.Popen(["true"])
    child.wait()
    deadline = time.monotonic() + 5
    while forks.parent_of(child.pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    print("parent", (forks.parent_of(child.pid) or (0,))[0] == __import__("os").getpid())
print("watch", forks is not None)
"""


def _forks_in_netns(ns: str, *prefix: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, *prefix, sys.executable, "-c", _IN_A_NETNS],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.netns
@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))
def test_an_agent_in_another_network_namespace_reads_the_hosts_process_events() -> None:
    """The kernel offers process events in the host's network namespace only. An agent
    started in another one (PrivateNetwork, a test bed) opens its socket in the host's
    when it may enter it, and sees forks; when it may not (no CAP_SYS_ADMIN), it works
    without them, with one line saying so."""
    ns = f"tfk{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = _forks_in_netns(ns)
        assert "process events read from the host's network namespace" in out, out
        assert "watch True" in out and "parent True" in out, out
        without = ("setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--")
        out = _forks_in_netns(ns, *without)
        assert "watch False" in out, out
        assert out.count("process events unavailable") == 1, out
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@ROOT_ONLY
def test_a_launcher_whose_pid_was_reused_is_not_made_the_writer(tmp_path: Path) -> None:
    """The writer's launcher exited and its pid went to another process: that process
    started after the fork, and is not the launcher."""
    forks = ForkWatch.open()
    assert forks is not None
    attributor = Attributor([str(tmp_path)], use_fanotify=False, forks=forks)
    try:
        launcher = subprocess.Popen(["sh", "-c", "/bin/true; exec sleep 60"])
        wait_for("the writer's fork", lambda: _kids_of(forks, launcher.pid), timeout_s=5)
        (writer,) = _kids_of(forks, launcher.pid)[:1]
        wait_for("the writer's end", lambda: not psutil.pid_exists(writer), timeout_s=5)
        stand_in = attributor._stand_in(writer)
        assert stand_in is not None and stand_in.pid == launcher.pid, stand_in
        launcher.kill()
        launcher.wait()
        innocent = reuse_pid(launcher.pid, ["sleep", "60"])
        try:
            assert attributor._stand_in(writer) is None, "a reused pid was made the writer"
        finally:
            innocent.kill()
            innocent.wait()
    finally:
        forks.stop()


@ROOT_ONLY
def test_a_drill_remembered_is_not_its_reused_pid(tmp_path: Path) -> None:
    """Whether a process carried the drill key is remembered once it is gone (its
    environment with it), but a process that got its pid since is not a drill: a forged
    drill is never isolated."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = DrillKey.issue(state)
    attributor = Attributor([str(tmp_path)], use_fanotify=False, is_drill=key.carried_by)
    drill = subprocess.Popen(["sleep", "60"], env=key.environment())
    try:
        # A process writes once it runs its program: before its exec, a child still
        # holds its parent's environment.
        wait_for(
            "the exec", lambda: os.path.basename(os.readlink(f"/proc/{drill.pid}/exe")) == "sleep"
        )
        attributor._on_write(drill.pid, str(tmp_path / "f"))  # seen writing while it lives
        assert attributor.is_drill(drill.pid)
        time.sleep(0.05)  # the impostor starts in a later clock tick (start ticks: 10 ms)
    finally:
        drill.kill()
        drill.wait()
    assert attributor.is_drill(drill.pid), "a gone drill is still a drill"
    impostor = reuse_pid(drill.pid, ["sleep", "60"])
    try:
        assert not attributor.is_drill(impostor.pid), "a reused pid inherited the drill"
    finally:
        impostor.kill()
        impostor.wait()


def _kids_of(forks: ForkWatch, pid: int) -> list[int]:
    return [c for c, (p, _) in list(forks._parents.items()) if p == pid]


def _writers_of(tmp: Path, name: str) -> tuple[int, set[int]]:
    """Launch LAUNCHER as ``name``; the pids the attributor saw writing."""
    share = tmp / name
    share.mkdir()
    forks = ForkWatch.open()
    assert forks is not None
    attributor = Attributor([str(share)], use_fanotify=True, forks=forks)
    attributor.start()
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, name, str(share), "12"])
    try:
        wait_for("twelve files", lambda: len(list(share.iterdir())) >= 12, timeout_s=30)
        time.sleep(0.5)  # the last events read
        pids = {s.pid for s in attributor.collect()}
    finally:
        launcher.kill()
        launcher.wait()
        attributor.stop()
        forks.stop()
    return launcher.pid, pids


@ROOT_ONLY
@pytest.mark.parametrize("name", ["launcher", "sshd", "cron"])
def test_a_launcher_writes_for_its_short_writers_whatever_it_calls_itself(
    tmp_path: Path, name: str
) -> None:
    """A name never protects (prctl sets any): only a daemon's executable does, which
    ``tests/test_agent_guards.py`` checks with a real smbd master."""
    launcher, pids = _writers_of(tmp_path, name)
    assert launcher in pids, f"the launcher {launcher} is not among the writers {pids}"


def _agent(share: Path, state: Path) -> subprocess.Popen[bytes]:
    """A real agent, tripwire enforcing, its collector unreachable."""
    exe = Path(sys.executable).with_name("tocsin-agent")
    log = (state.parent / "agent.log").open("wb")
    p = subprocess.Popen(
        [
            str(exe),
            "--collector",
            "127.0.0.1:9",
            "--watch",
            str(share),
            "--host-id",
            "one-per-file",
            "--state-dir",
            str(state),
            "--insecure",
            "--tripwire",
            "enforce",
        ],
        stderr=log,
    )
    wait_for(
        "the agent to watch",
        lambda: b"watching" in (state.parent / "agent.log").read_bytes(),
        timeout_s=30,
    )
    return p


def _stopped_in(tree: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [
            p for p in [tree, *tree.children(recursive=True)] if p.status() == psutil.STATUS_STOPPED
        ]
    return []


@ROOT_ONLY
@pytest.mark.parametrize("style", sorted(FIND_EXEC))
def test_find_exec_one_encryptor_per_file_is_stopped_at_its_launcher(
    tmp_path: Path, style: str
) -> None:
    share = tmp_path / "share"
    simulate.make_share(share, 600)
    before = {p: p.read_bytes() for p in share.rglob("*") if p.is_file()}
    agent = _agent(share, tmp_path / "state")
    time.sleep(1.5)  # the attack is not the agent's first window
    attack = subprocess.Popen(["sh", "-c", FIND_EXEC[style].format(share=share)])
    try:
        sh = psutil.Process(attack.pid)
        stopped: list[psutil.Process] = []
        end = time.monotonic() + 30
        while attack.poll() is None and not stopped and time.monotonic() < end:
            stopped = _stopped_in(sh)
            time.sleep(0.01)
        assert stopped, "the one-process-per-file attack ran to the end\n" + (
            (tmp_path / "agent.log").read_text()
        )
        # The tree is stopped parent first, but a busy machine may show a child stopped
        # before its parent: look again once every signal has landed.
        time.sleep(0.5)
        names = {p.name() for p in _stopped_in(sh)}
        ruined = sum(1 for p, data in before.items() if not p.exists() or p.read_bytes() != data)
    finally:
        for p in [*psutil.Process(attack.pid).children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        attack.kill()
        attack.wait()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
    print(f"\nfind -exec {style}: stopped {sorted(names)} after {ruined} files")
    assert "find" in names, names
    # 5 to 7 files on a quiet machine; the suite shares two cores with other work.
    assert ruined <= 60, ruined


def test_a_drill_read_before_its_exec_is_read_again(tmp_path: Path) -> None:
    """A "not a drill" read while the process still held its parent's environment
    (between fork and exec) is not kept for good: it is read again once 0.2 s old."""
    answers = iter([False, True])
    attributor = Attributor(
        [str(tmp_path)], use_fanotify=False, is_drill=lambda pid: next(answers, True)
    )
    live = subprocess.Popen(["sleep", "60"])
    try:
        attributor._on_write(live.pid, str(tmp_path / "f"))  # the first read: "no"
        assert not attributor.is_drill(live.pid)
        time.sleep(0.25)
        assert attributor.is_drill(live.pid), "the first answer was kept for good"
    finally:
        live.kill()
        live.wait()
    assert attributor.is_drill(live.pid), "the live answer was not remembered"
