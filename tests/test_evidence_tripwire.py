"""The local tripwire with the collector cut off, the protection list, and one actor per tree."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from evidence_harness import run_workload
from grpc_sink import GrpcSink

from tocsin.agent import simulate
from tocsin.agent.tripwire import Tripwire
from tocsin.agent.window import Ruined
from tocsin.v1 import telemetry_pb2 as pb

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify and SIGSTOP of others need root")


def _agent(
    share: Path, state: Path, *extra: str, collector: str = "127.0.0.1:9"
) -> subprocess.Popen[str]:
    """A real agent, tripwire enforcing; by default its collector does not exist."""
    exe = Path(sys.executable).with_name("tocsin-agent")
    p = subprocess.Popen(
        [
            str(exe),
            "--collector",
            collector,
            "--watch",
            str(share),
            "--host-id",
            "cut-off",
            "--state-dir",
            str(state),
            "--insecure",
            "--tripwire",
            "enforce",
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    for line in p.stderr:  # wait until it watches
        if "watching" in line:
            # then keep reading: an agent whose stderr pipe is full blocks on its next log line
            threading.Thread(target=p.stderr.read, daemon=True).start()
            return p
    raise AssertionError("agent did not start")


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def _attack_until_stopped(share: Path, tmp: Path, style: str, rate: int) -> tuple[bool, int, float]:
    progress = tmp / "progress.txt"
    attack = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tocsin.agent.simulate",
            "run",
            style,
            str(share),
            "--rate",
            str(rate),
            "--progress",
            str(progress),
        ]
    )
    t0 = time.monotonic()
    try:
        while attack.poll() is None and not _stopped(attack.pid):
            time.sleep(0.01)
        stopped = _stopped(attack.pid)
        elapsed = time.monotonic() - t0
        ruined = len(progress.read_text().splitlines()) if progress.exists() else 0
    finally:
        attack.send_signal(signal.SIGKILL)
        os.kill(attack.pid, signal.SIGCONT) if attack.poll() is None else None
        attack.wait(timeout=10)
    return stopped, ruined, elapsed


@ROOT_ONLY
@pytest.mark.parametrize(
    "style", ["encrypt-inplace", "encrypt-medusa", "encrypt-copy-stem", "encrypt-copy-b64"]
)
def test_tripwire_suspends_encryptor_with_collector_unreachable(tmp_path: Path, style: str) -> None:
    """The tripwire alone, per file as the evidence arrives: in place and encrypt-to-copy."""
    share = tmp_path / "share"
    simulate.make_share(share, 600)
    agent = _agent(share, tmp_path / "state")
    time.sleep(1.5)  # the agent has been running a while: the attack is not its first window
    try:
        stopped, ruined, elapsed = _attack_until_stopped(share, tmp_path, style, 200)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
    print(
        f"\ntripwire: {style} at 200 files/s suspended={stopped} after {ruined} files "
        f"({elapsed:.2f} s), collector unreachable"
    )
    assert stopped, "the encryptor ran to the end"
    # It fires at the 5th file ruined by one tree: 6-8 files on a quiet machine, up to ~36
    # when the suite shares two cores with other work. The figure the issue asks for is
    # make eval's (docs/evaluation.md); this bound only says the tripwire acted per file
    # (before, the encrypt-to-copy styles ran to the end: 600 files).
    assert ruined <= 60


def test_windows_shorten_while_files_are_destroyed(tmp_path: Path) -> None:
    """Damage seen in a window makes the next ones short until a window shows none."""
    share = tmp_path / "share"
    simulate.make_share(share, 150)
    sink = GrpcSink()
    agent = _agent(share, tmp_path / "state", "--tripwire", "off", collector=sink.target)
    try:
        time.sleep(1.5)
        attack = [sys.executable, "-m", "tocsin.agent.simulate", "run", "encrypt-inplace"]
        subprocess.run([*attack, str(share), "--rate", "100"], check=True)
        time.sleep(3)  # a quiet spell after the attack
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        sink.stop()
    windows = [w for w in sink.windows() if w.files_type_destroyed or w.events_modified]
    damaged = [w for w in windows if w.files_type_destroyed]
    assert len(damaged) >= 5, [(w.events_modified, w.files_type_destroyed) for w in windows]

    def length(w: pb.Window) -> float:
        return (w.end.ToNanoseconds() - w.start.ToNanoseconds()) / 1e9

    # Every window after a damaged one (but the one that saw the damage stop) is short.
    follow = [b for a, b in itertools.pairwise(windows) if a.files_type_destroyed]
    assert follow and all(length(w) <= 0.2 for w in follow[:-1]), [length(w) for w in follow]
    assert sum(w.files_type_destroyed for w in damaged) >= 100


ONSET_THEN_DAMAGE = """
import os, pathlib, sys, time
share = pathlib.Path(sys.argv[1])
files = sorted(p for p in share.rglob("*") if p.is_file())
typed = [p for p in files if p.suffix in (".pdf", ".jpg", ".png", ".docx", ".odt")]
texts = [p for p in files if p.suffix in (".txt", ".csv")]
ruin = lambda p: p.write_bytes(os.urandom(8192))
ruin(typed[0])
for t in texts[:6]:  # enough events to end an onset window on their own
    with t.open("ab") as fh:
        fh.write(b"ligne ajoutee\\n")
time.sleep(0.03)
for p in typed[1:5]:
    ruin(p)
"""


def test_first_damage_window_closes_when_it_holds_what_the_collector_confirms(
    tmp_path: Path,
) -> None:
    """An onset that saw one ruined file waits for three, then closes at once.

    Closed at its sixth event (the text edits), the first window would hold one
    ruined file, which the collector does not confirm alone (three in one window
    do); holding it longer would let the attack go on for the rest of it. The
    tripwire does not wait for a window: it acts per file.
    """
    share = tmp_path / "share"
    simulate.make_share(share, 60)
    sink = GrpcSink()
    agent = _agent(share, tmp_path / "state", "--tripwire", "off", collector=sink.target)
    try:
        time.sleep(1.5)  # a quiet full window: the next one is an onset
        subprocess.run([sys.executable, "-c", ONSET_THEN_DAMAGE, str(share)], check=True)
        time.sleep(1.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        sink.stop()
    windows = [w for w in sink.windows() if w.events_modified]
    first = next(w for w in windows if w.files_type_destroyed)
    assert 3 <= first.files_type_destroyed <= 5, [
        (w.events_modified, w.files_type_destroyed) for w in windows
    ]


def _posix_locks(pid: int, path: Path) -> int:
    """How many POSIX locks ``pid`` holds on ``path`` (from /proc/locks)."""
    ino = path.stat().st_ino
    n = 0
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if "POSIX" in f and str(pid) in f and any(x.endswith(f":{ino}") for x in f):
            n += 1
    return n


@ROOT_ONLY
def test_a_reader_of_the_spool_leaves_the_agent_its_sqlite_locks(tmp_path: Path) -> None:
    """fanotify events about the agent's own spool would cost it its SQLite locks.

    A reader opens the -shm for writing; the close-write event's descriptor, once
    the agent closed it, took every POSIX lock the agent held on the file, and the
    next reader, seeing none, truncated the -shm the agent had mapped (SIGBUS: the
    agent died in the partition test).
    """
    share = tmp_path / "share"
    share.mkdir()
    state = tmp_path / "state"
    agent = _agent(share, state, "--tripwire", "off")
    try:
        shm = state / "spool.sqlite-shm"
        held = _posix_locks(agent.pid, shm)
        assert held >= 1
        for _ in range(3):
            con = sqlite3.connect(f"file:{state / 'spool.sqlite'}?mode=ro", uri=True)
            con.execute("SELECT COUNT(*) FROM spool").fetchone()
            con.close()
            time.sleep(0.3)  # the agent reads its fanotify events meanwhile
            assert _posix_locks(agent.pid, shm) == held
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)


@ROOT_ONLY
def test_canary_touch_fires_the_tripwire(tmp_path: Path) -> None:
    share = tmp_path / "share"
    simulate.make_share(share, 24)
    agent = _agent(share, tmp_path / "state", "--canaries")
    try:
        # Slow enough that type-destroyed alone stays under the threshold per window.
        stopped, ruined, _ = _attack_until_stopped(share, tmp_path, "encrypt-inplace", 4)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
    assert stopped and ruined < 24


class _Actions:
    def __init__(self) -> None:
        self.commands: list[pb.Command] = []

    def run(self, cmd: pb.Command, local: bool = False) -> pb.ActionResult:
        self.commands.append(cmd)
        return pb.ActionResult(command_id=cmd.id, kind=cmd.kind, status="done", local=local)


def _window(writers: list[pb.ProcessSample], canaries: int = 0) -> pb.Window:
    w = pb.Window(canary_touches=canaries)
    w.top_writers.extend(writers)
    return w


def _sample(
    pid: int, root: int, destroyed: int, name: str = "crypt", exe: str = ""
) -> pb.ProcessSample:
    return pb.ProcessSample(
        pid=pid,
        tree_root_pid=root,
        files_type_destroyed=destroyed,
        files_touched=destroyed,
        name=name,
        exe=exe,
    )


def _ruin(
    tw: Tripwire, writer: pb.ProcessSample, files: int, at_s: float = 0.0
) -> pb.ActionResult | None:
    """``files`` files ruined by ``writer``, one by one: the last result, if any."""
    result = None
    for i in range(files):
        got = tw.ruined(writer, Ruined(f"/share/{writer.pid}-{at_s}-{i}", "type-destroyed"), at_s)
        result = got or result
    return result


NAMED = "import sys, time; from tocsin.agent import _linux; _linux.set_process_name(sys.argv[1]); time.sleep(60)"  # noqa: E501


def test_the_protection_list_matches_executables_never_names(tmp_path: Path) -> None:
    """Listed by name or path, root's /usr/bin/sleep is protected; a process that
    merely calls itself ``borg`` (prctl), or a copy of sleep that is not root's, is not."""
    copy = tmp_path / "sleep"
    copy.write_bytes(Path("/usr/bin/sleep").read_bytes())
    copy.chmod(0o777)  # writable by anyone: whoever runs it, it proves nothing
    argvs = {
        "sleep": ["/usr/bin/sleep", "60"],
        "named": [sys.executable, "-c", NAMED, "borg"],
        "copy": [str(copy), "60"],
    }
    procs = {k: subprocess.Popen(argv) for k, argv in argvs.items()}
    try:
        time.sleep(0.3)  # exec'd and renamed
        assert psutil.Process(procs["named"].pid).name() == "borg"
        for listed in (["sleep", "borg"], ["/bin/sleep", "borg"]):  # /bin: usrmerge's link
            acts = _Actions()
            tw = Tripwire(acts, "enforce", protect=listed)
            for k, p in procs.items():
                name = "borg" if k == "named" else "sleep"
                _ruin(tw, _sample(p.pid, p.pid, 0, name=name, exe=str(Path(argvs[k][0]))), 10)
            suspended = {c.pids[0] for c in acts.commands}
            assert suspended == {procs["named"].pid, procs["copy"].pid}, listed
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_tripwire_sums_a_tree_and_never_touches_init_itself_or_protected() -> None:
    acts = _Actions()
    tw = Tripwire(acts, "enforce", destroyed_threshold=10, protect=["300"], self_pid=4242)
    # Four workers of one tree, 3 files each: 12 >= 10 only as a tree, acted on at the 10th.
    results = [_ruin(tw, _sample(100 + i, 100, 0), 3) for i in range(4)]
    assert results[:3] == [None, None, None] and results[3] is not None
    assert [list(c.pids) for c in acts.commands] == [[100]]
    w = _window([])
    assert tw.check(w, []) is None and w.tripwire_fired and "by tree 100" in w.tripwire_reason
    for root in (1, 4242, 300):
        assert _ruin(tw, _sample(root, root, 0), 50) is None
        w = _window([])
        assert tw.check(w, []) is None
        assert w.tripwire_fired and "not suspended" in w.tripwire_reason
    assert len(acts.commands) == 1
    # A canary with no known writer marks the window, suspends nothing.
    w = _window([], canaries=1)
    assert tw.check(w, []) is None and w.tripwire_fired
    # A canary written by a known tree: that tree, even if it is not the biggest writer.
    big, small = _sample(500, 500, 0), _sample(600, 600, 0)
    big.files_touched = 90
    assert tw.check(_window([big, small], 1), [big, small], canary_trees={600}) is not None
    assert list(acts.commands[-1].pids) == [600]
    # dry-run asks for a dry run; off does nothing at all.
    dry = Tripwire(acts, "dry-run")
    _ruin(dry, _sample(700, 700, 0), 20)
    assert acts.commands[-1].dry_run
    off = Tripwire(acts, "off")
    w = _window([])
    assert _ruin(off, _sample(800, 800, 0), 20) is None
    assert off.check(w, []) is None and not w.tripwire_fired


@ROOT_ONLY
def test_eight_workers_of_one_parent_are_one_actor(tmp_path: Path) -> None:
    """8 forked workers at 25 files/s each: all damage lands on one tree."""
    ws, parent = run_workload(
        tmp_path / "share", "encrypt-workers", rate=200, files=400, extra=("--workers", "8")
    )
    per_tree: Counter[int] = Counter()
    workers: set[int] = set()
    for w in ws:
        for s in w.top_writers:
            per_tree[s.tree_root_pid] += s.files_type_destroyed
            workers.add(s.pid)
    destroyed = sum(w.files_type_destroyed for w in ws)
    print(
        f"\n8 workers: {len(workers)} writer pids, per tree {dict(per_tree)}, "
        f"window total {destroyed}"
    )
    assert len(workers) >= 8
    assert [t for t, n in per_tree.items() if n] == [parent]
    assert per_tree[parent] >= 0.8 * destroyed
    assert destroyed >= 200  # the probe budget (64 files per window) samples the rest


LAUNCHER = """
import subprocess, sys
share, dirs = sys.argv[1], sys.argv[2:]
kids = [subprocess.Popen([sys.executable, "-m", "tocsin.agent.simulate", "run",
                          "encrypt-inplace", f"{share}/{d}", "--rate", "60"]) for d in dirs]
sys.exit(max(k.wait() for k in kids))
"""


@ROOT_ONLY
def test_launcher_of_short_lived_encryptors_is_the_tree(tmp_path: Path) -> None:
    """Children with another cmdline than their (non-writing) launcher share its tree."""
    share = tmp_path / "share"
    simulate.make_share(share, 160)
    launcher = ("-c", LAUNCHER)
    ws, _ = run_workload(
        share,
        "encrypt-inplace",
        files=0,
        make=False,
        extra=(),
        argv=[sys.executable, *launcher, str(share), *simulate.DEPARTMENTS[:3]],
    )
    roots = {s.tree_root_pid for w in ws for s in w.top_writers if s.files_type_destroyed}
    pids = {s.pid for w in ws for s in w.top_writers if s.files_type_destroyed}
    assert len(pids) >= 3 and len(roots) == 1


def test_tripwire_adds_a_tree_up_over_time_but_forgets_old_damage() -> None:
    acts = _Actions()
    tw = Tripwire(acts, "enforce", destroyed_threshold=5, self_pid=4242, horizon_s=10.0)
    crypt = _sample(800, 800, 0)
    assert _ruin(tw, crypt, 3, at_s=100.0) is None  # 3 < 5
    assert _ruin(tw, crypt, 2, at_s=130.0) is None  # the first 3 are 30 s old
    assert _ruin(tw, crypt, 3, at_s=131.0) is not None  # 2 + 3 within 10 s
    assert [list(c.pids) for c in acts.commands] == [[800]]


@ROOT_ONLY
def test_damage_inside_a_busy_window_closes_it_and_is_the_encryptors(tmp_path: Path) -> None:
    """A drill: its launcher writes 400 new files, then its child encrypts them at once.

    The encryption starts inside the launcher's busy one-second window; probing as
    files finish closes that window at the first damage instead of holding it for
    the rest of the second (34-37 files at 200 files/s were inside it before: the
    drill runs at 50 files/s, so ~10 here), and the damage is
    the encryptor's: the launcher created those files, it did not destroy them.
    """
    share = tmp_path / "share"
    share.mkdir()
    sink = GrpcSink()
    agent = _agent(share, tmp_path / "state", "--tripwire", "off", collector=sink.target)
    try:
        time.sleep(1.5)
        exe = Path(sys.executable).with_name("tocsin-agent")
        drill = [str(exe), "drill", "--dir", str(share / ".tocsin-drill"), "--timeout", "3"]
        drill += ["--state-dir", str(tmp_path / "state")]
        subprocess.run(drill, stdout=subprocess.DEVNULL, check=False)
        time.sleep(1.0)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        sink.stop()
    windows = sink.windows()
    first = next(w for w in windows if w.files_type_destroyed)
    assert first.drill  # the agent's drill key in the encryptor's environment
    encryptor = [s for s in first.top_writers if "--tag tocsin-drill" in s.cmdline]
    assert encryptor and encryptor[0].files_touched <= 15, first
    launcher = [s for w in windows for s in w.top_writers if "simulate share" in s.cmdline]
    assert launcher and all(s.files_type_destroyed == 0 for s in launcher), launcher
