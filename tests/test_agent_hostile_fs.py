"""Hostile file-system and wire input against the real agent process.

A share user names files, makes FIFOs, sockets and symlinks, and runs programs
with any bytes in their command line; a collector (or whoever speaks for it)
sends any Ack. The real ``tocsin-agent`` streams to a gRPC sink on 127.0.0.1
(tools/grpc_sink.py) and must keep producing windows, and acting, after each.
The watchdog tests speak sd_notify to it like systemd (a datagram socket in
the test, as in tests/test_ops_systemd.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from grpc_sink import GrpcSink
from test_ops_systemd import NotifyHarness

from tocsin.agent import simulate
from tocsin.v1 import telemetry_pb2 as pb

AGENT = Path(sys.executable).with_name("tocsin-agent")
# tocsin.agent.runtime.WINDOW_STALL_S: a window thread stuck this long past its window is hung.
WINDOW_STALL_S = 10.0
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mknod, fanotify and SIGSTOP need root")

# The agent with one probe that never returns: ``probe_file`` of a name holding
# HANG_MARK blocks forever (the injected hang point: the real agent otherwise).
HANG_MARK = "hang-here"
HANGING_AGENT = f"""
import sys, threading
from tocsin.agent import window
real = window.probe_file
def probe_file(path):
    if {HANG_MARK!r} in path:
        threading.Event().wait()
    return real(path)
window.probe_file = probe_file
from tocsin.agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Agent:
    """A real ``tocsin-agent`` process, its log in a file."""

    def __init__(
        self,
        share: Path,
        collector: str,
        tripwire: str = "off",
        env: dict[str, str] | None = None,
        hang_point: bool = False,
    ) -> None:
        tmp = share.parent
        self.log = tmp / f"agent-{uuid.uuid4().hex[:6]}.log"
        head = [sys.executable, "-c", HANGING_AGENT] if hang_point else [str(AGENT)]
        args = [
            *head,
            "--collector",
            collector,
            "--watch",
            str(share),
            "--host-id",
            "hostile",
            "--state-dir",
            str(tmp / "state"),
            "--insecure",
            "--tripwire",
            tripwire,
        ]
        self.proc = subprocess.Popen(
            args,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        end = time.monotonic() + 60
        while "watching" not in self.text():
            assert self.proc.poll() is None and time.monotonic() < end, self.text()
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_bytes().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    (tmp_path / "share").mkdir()
    return tmp_path / "share"


@pytest.fixture
def sink() -> Iterator[GrpcSink]:
    s = GrpcSink()
    yield s
    s.stop()


@pytest.fixture
def agents() -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def start(*args: object, **kw: object) -> Agent:
        a = Agent(*args, **kw)  # type: ignore[arg-type]
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def wait_window(
    sink: GrpcSink, agent: Agent, pred: Callable[[pb.Window], bool], timeout_s: float = 15
) -> pb.Window:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for w in sink.windows():
            if pred(w):
                return w
        time.sleep(0.1)
    raise AssertionError(f"no such window in {timeout_s} s; agent log:\n{agent.text()[-3000:]}")


def names(w: pb.Window) -> list[str]:
    return [os.path.basename(p) for p in w.example_paths]


def still_seen(sink: GrpcSink, agent: Agent, share: Path, name: str, timeout_s: float = 20) -> None:
    """Plain files written now show up in a window: the agent is not blind.

    One file every 1.5 s until one is among a window's example paths (capped at 5:
    a backlog of the hostile input's own events may fill a window first).
    """
    end = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < end:
        (share / f"{i}-{name}").write_text("an ordinary note\n")
        wanted = {f"{j}-{name}" for j in range(i + 1)}
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            if any(wanted & set(names(w)) for w in sink.windows()):
                return
            time.sleep(0.1)
        i += 1
    raise AssertionError(f"no window with {name} in {timeout_s} s:\n{agent.text()[-3000:]}")


def test_non_utf8_file_name_does_not_blind_the_agent(
    share: Path, sink: GrpcSink, agents: Callable[..., Agent]
) -> None:
    agent = agents(share, sink.target)
    with open(os.fsencode(share) + b"/notes-\xff.txt", "wb") as fh:
        fh.write(b"minutes of the council\n")
    # The name arrives escaped (valid UTF-8), and the windows after it keep coming.
    w = wait_window(sink, agent, lambda w: "notes-\\xff.txt" in names(w))
    assert w.files_created >= 1
    still_seen(sink, agent, share, "after-the-bad-name.txt")
    still_seen(sink, agent, share, "and-again.txt")


def test_non_utf8_command_line_does_not_drop_the_window(
    share: Path, sink: GrpcSink, agents: Callable[..., Agent]
) -> None:
    agent = agents(share, sink.target)
    writer = (
        "import sys, time\n"
        "for i in range(30):\n"
        "    open(f'w-{i}.txt', 'w').write('x' * 100)\n"
        "    time.sleep(0.1)\n"
    )
    # psutil attribution (not root) finds a writer by its cwd: it runs in the share.
    child = subprocess.Popen([sys.executable, "-c", writer, b"--label=\xff\xfe"], cwd=share)
    try:
        w = wait_window(
            sink, agent, lambda w: any("\\xff\\xfe" in s.cmdline for s in w.top_writers)
        )
    finally:
        child.wait(timeout=30)
    assert w.files_created >= 1
    still_seen(sink, agent, share, "after-the-bad-writer.txt")


def test_fifo_renamed_into_place_does_not_hang_the_agent(
    share: Path, sink: GrpcSink, agents: Callable[..., Agent]
) -> None:
    agent = agents(share, sink.target)
    os.mkfifo(share / ".~budget.tmp")
    os.rename(share / ".~budget.tmp", share / "budget.docx")
    wait_window(sink, agent, lambda w: "budget.docx" in names(w))
    still_seen(sink, agent, share, "after-the-fifo.txt")
    still_seen(sink, agent, share, "and-again.txt")


def _deep(base: Path, levels: int, name: str) -> None:
    """``levels`` nested directories called ``name`` under ``base``, a file at the bottom.

    Built through directory descriptors: the whole path may exceed PATH_MAX.
    """
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"the bottom of the tree\n")
        os.close(leaf)
    finally:
        os.close(fd)


def test_trees_thousands_of_levels_deep_neither_stop_nor_blind_the_agent(
    tmp_path: Path, share: Path, sink: GrpcSink, agents: Callable[..., Agent]
) -> None:
    """Python 3.11's os.walk recurses per level: ~1,000 levels raised RecursionError."""
    outside = tmp_path / "outside"
    try:
        _deep(share, 3000, "d")  # there when the agent starts (after a reboot, an upgrade)
        agent = agents(share, sink.target)
        still_seen(sink, agent, share, "after-start.txt")
        outside.mkdir()
        _deep(outside, 3000, "e")
        os.rename(outside / "e", share / "e")  # moved in while it runs: watchdog walks it
        still_seen(sink, agent, share, "after-move.txt", timeout_s=40)
        assert "Traceback" not in agent.text()
    finally:
        # pytest's own clean-up of old temporary directories recurses per level too:
        # leave nothing that deep behind (GNU rm walks with descriptors, at any depth).
        subprocess.run(["rm", "-rf", str(share / "d"), str(share / "e"), str(outside)], check=False)


def _place(zoo: Path, make: Callable[[Path], object], name: str) -> None:
    """Make something at a temporary name, then rename it into place as ``name``."""
    tmp = zoo / f".tmp-{name}"
    make(tmp)
    os.rename(tmp, zoo / name)


# What the test process writes itself stays plain text: it must never look like damage
# (the tripwire would suspend the test).
def _grow(path: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        with path.open("a") as fh:
            fh.write("one more line of the minutes\n" * 100)


def _vanish(zoo: Path, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        p = zoo / f"brief-{i % 50}.txt"
        p.write_text("a brief that will not stay\n")
        p.unlink()
        i += 1


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


@ROOT_ONLY
def test_hostile_file_system_zoo_then_attack_is_stopped(
    tmp_path: Path, share: Path, sink: GrpcSink, agents: Callable[..., Agent]
) -> None:
    docs = share / "docs"
    zoo = share / "zoo"
    simulate.make_share(docs, 300)
    zoo.mkdir()
    agent = agents(share, sink.target, tripwire="enforce")

    with open(os.fsencode(zoo) + b"/notes-\xff.txt", "wb") as fh:
        fh.write(b"minutes\n")
    _place(zoo, os.mkfifo, "budget.docx")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # a socket path has 108 bytes
    server.bind(str(short / "s"))
    os.rename(short / "s", zoo / "plan.pdf")
    short.rmdir()
    _place(zoo, lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5)), "zero.docx")
    _place(zoo, lambda p: os.mknod(p, stat.S_IFBLK | 0o600, os.makedev(7, 0)), "disk.xlsx")
    _place(zoo, lambda p: p.symlink_to("/etc/shadow"), "passwords.txt")
    _place(zoo, lambda p: p.symlink_to("/dev/zero"), "endless.docx")
    (zoo / "growing.txt").write_text("")
    long_name = "n" * 200
    _deep(zoo, 50, long_name)  # a 10,000-character path
    _deep(zoo, 200, "d")  # 200 levels deep
    stop = threading.Event()
    busy = [
        threading.Thread(target=_grow, args=(zoo / "growing.txt", stop)),
        threading.Thread(target=_vanish, args=(zoo, stop)),
    ]
    for t in busy:
        t.start()
    try:
        time.sleep(2)
    finally:
        stop.set()
        for t in busy:
            t.join()
        server.close()
    # The storm of the two threads is drained first (2-4 s alone; once over 20 s in a
    # full run on 2 busy cores): blind would be never.
    still_seen(sink, agent, share, "after-the-zoo.txt", timeout_s=45)
    assert agent.proc.poll() is None

    # Acting, too: an in-place attack on the documents beside the zoo is suspended. It
    # runs under sh: its tree must not climb into this test, which wrote in the share.
    progress = tmp_path / "progress.txt"
    attack_argv = [sys.executable, "-m", "tocsin.agent.simulate", "run", "encrypt-inplace"]
    attack_argv += [str(docs), "--rate", "200", "--progress", str(progress)]
    shell = subprocess.Popen(["sh", "-c", '"$@" & wait', "sh", *attack_argv])
    attack = None
    try:
        end = time.monotonic() + 10
        while attack is None and time.monotonic() < end:
            kids = psutil.Process(shell.pid).children()
            attack = kids[0] if kids else None
        assert attack is not None
        while shell.poll() is None and not _stopped(attack.pid):
            time.sleep(0.01)
        stopped = _stopped(attack.pid)
        ruined = len(progress.read_text().splitlines()) if progress.exists() else 0
    finally:
        if attack is not None:
            with contextlib.suppress(psutil.Error):
                attack.kill()
        shell.wait(timeout=10)
    assert stopped, agent.text()[-3000:]
    assert ruined <= 100
    still_seen(sink, agent, share, "after-the-attack.txt")


def watchdog_env(notify: NotifyHarness) -> dict[str, str]:
    """systemd's environment for a Type=notify unit with WatchdogSec=1 (pings every 0.5 s)."""
    return {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": ""}


def pings(notify: NotifyHarness) -> list[float]:
    return [t for t, m in notify.messages if m == "WATCHDOG=1"]


def test_a_hung_probe_stops_the_watchdog_pings(
    share: Path, sink: GrpcSink, agents: Callable[..., Agent]
) -> None:
    notify = NotifyHarness(None)
    agent = agents(share, sink.target, env=watchdog_env(notify), hang_point=True)
    notify.poll(2.0)
    assert len(pings(notify)) >= 2  # every WATCHDOG_USEC / 2 while healthy
    # A file whose probe never returns; its name is attacker text for the log line.
    evil = share / f"{HANG_MARK}\n\u202eFAKE line.docx"
    evil.write_bytes(b"PK\x03\x04 whatever")
    hung_at = time.monotonic()
    notify.poll(WINDOW_STALL_S + 6)
    assert pings(notify), "no ping at all"
    last = pings(notify)[-1]
    # The pings stopped once the window thread had been stuck WINDOW_STALL_S past its
    # window (1 s): systemd restarts the agent WatchdogSec after the last one.
    assert last - hung_at <= WINDOW_STALL_S + 2.5, (last - hung_at, agent.text()[-2000:])
    assert time.monotonic() - last >= 3
    assert agent.proc.poll() is None  # alive but blind: exactly what the watchdog is for
    log = agent.text()
    lines = [ln for ln in log.splitlines() if "no more pings" in ln]
    assert len(lines) == 1, log[-2000:]
    assert "no progress" in lines[0] and "hang-here\\n\\u202eFAKE line.docx" in lines[0]
    assert "\u202e" not in log and "FAKE line" not in log.replace(lines[0], "")


def test_the_watchdog_keeps_pinging_past_a_fifo(
    share: Path, sink: GrpcSink, agents: Callable[..., Agent]
) -> None:
    notify = NotifyHarness(None)
    agent = agents(share, sink.target, env=watchdog_env(notify))
    os.mkfifo(share / ".~budget.tmp")
    os.rename(share / ".~budget.tmp", share / "budget.docx")
    start = time.monotonic()
    notify.poll(WINDOW_STALL_S + 4)
    assert [t for t in pings(notify) if t > start + WINDOW_STALL_S + 2], agent.text()[-2000:]
    still_seen(sink, agent, share, "after-the-fifo.txt")


def test_an_ack_past_any_seq_is_refused_and_the_stream_goes_on(
    share: Path, agents: Callable[..., Agent]
) -> None:
    first: list[int] = []

    def huge_first(w: pb.Window) -> int:
        """The first window is acked with seq 2**64 - 1, the others honestly."""
        first.append(w.seq)
        return 2**64 - 1 if len(first) == 1 else w.seq

    sink = GrpcSink(ack_seq=huge_first)
    try:
        agent = agents(share, sink.target)
        still_seen(sink, agent, share, "before-the-lie.txt")
        still_seen(sink, agent, share, "after-the-lie.txt")
        still_seen(sink, agent, share, "and-after.txt")
        assert "beyond any window sent; ignored" in agent.text()
        assert "Traceback" not in agent.text()
    finally:
        sink.stop()
