"""The drill: recognised only by the running agent's key, and confined to its own directory.

A process that writes ``tocsin-drill`` in its command line is an attacker like
any other (the real agent marks its windows as no drill and its tripwire
suspends it). The real ``tocsin-agent drill``, run as root in a share users
can write to, refuses a directory they prepared (planted symlinks, their
ownership) and keeps working in its own directory when they swap it for a
symlink mid-run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from grpc_sink import GrpcSink
from transport_procs import BIN, wait_for

from tocsin.agent import simulate
from tocsin.agent.drill import KEY_ENV, DrillKey

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the drill and fanotify need root")
NOBODY = 65534


def _drill(*args: str) -> list[str]:
    return [str(BIN / "tocsin-agent"), "drill", "--files", "80", *args]


def _agent_state_and_share(tmp: Path) -> tuple[Path, Path]:
    """A state dir holding a drill key (as a running agent's), and a share anyone can write."""
    state = tmp / "state"
    state.mkdir()
    DrillKey.issue(state)
    shared = tmp / "partage"
    shared.mkdir()
    shared.chmod(0o1777)
    return state, shared


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_only_the_agents_key_makes_a_drill(tmp_path: Path) -> None:
    key = DrillKey.issue(tmp_path)
    assert (tmp_path / "drill.key").stat().st_mode & 0o777 == 0o600
    sleep = [sys.executable, "-c", "import time; time.sleep(30)", "--tag", "tocsin-drill"]
    forged = subprocess.Popen(sleep, env={**os.environ, KEY_ENV: "0" * 48})
    real = subprocess.Popen(sleep, env=DrillKey.read(tmp_path).environment())
    try:
        time.sleep(0.2)
        assert not key.carried_by(forged.pid)
        assert key.carried_by(real.pid)
        assert not DrillKey.issue(tmp_path).carried_by(real.pid)  # a new agent start, a new key
    finally:
        for p in (forged, real):
            p.kill()
            p.wait()


@ROOT_ONLY
def test_an_encryptor_naming_the_drill_marker_is_no_drill_and_is_suspended(
    tmp_path: Path,
) -> None:
    share = tmp_path / "share"
    simulate.make_share(share, 600)
    sink = GrpcSink()
    agent = subprocess.Popen(
        [
            str(BIN / "tocsin-agent"),
            *("--collector", sink.target, "--watch", str(share), "--host-id", "forger"),
            *("--state-dir", str(tmp_path / "state"), "--insecure", "--tripwire", "enforce"),
        ],
        stderr=subprocess.DEVNULL,
    )
    attack = None
    try:
        wait_for("hello", lambda: any(m.HasField("hello") for m in sink.messages), 20)
        time.sleep(1.5)
        attack = subprocess.Popen(
            [
                *(sys.executable, "-m", "tocsin.agent.simulate", "run", "encrypt-inplace"),
                *(str(share), "--rate", "200", "--tag", "tocsin-drill"),
            ]
        )

        def stopped() -> bool:
            return psutil.Process(attack.pid).status() == psutil.STATUS_STOPPED

        wait_for("the tripwire to suspend the forger", stopped, 30, 0.02)
        time.sleep(1.0)
    finally:
        if attack is not None:
            attack.kill()
            os.kill(attack.pid, signal.SIGCONT) if attack.poll() is None else None
            attack.wait()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        sink.stop()
    damage = [w for w in sink.windows() if w.files_type_destroyed]
    assert damage and not any(w.drill for w in damage)
    assert any(r.kind == "suspend" and r.status == "done" for r in sink.results())


@ROOT_ONLY
def test_the_drill_refuses_a_directory_a_user_prepared(tmp_path: Path) -> None:
    """Planted symlinks inside a user's directory, or the directory itself a symlink."""
    state, shared = _agent_state_and_share(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$secret\n")
    secrets = tmp_path / "etc"
    secrets.mkdir()
    (secrets / "passwd").write_text("root:x:0:0\n")
    before = {secret: secret.read_text(), secrets: _digests(secrets)}

    planted = shared / ".tocsin-drill"
    planted.mkdir()
    (planted / ".tocsin-drill").symlink_to(secret)
    (planted / "progress.log").symlink_to(secret)
    os.chown(planted, NOBODY, NOBODY)
    linked = shared / "drill-link"
    linked.symlink_to(secrets)
    for target in (planted, linked, linked / "sub"):
        cp = subprocess.run(
            _drill("--dir", str(target), "--state-dir", str(state), "--timeout", "1"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cp.returncode == 2, (target, cp.stdout, cp.stderr)
        assert cp.stderr.startswith("tocsin-agent: error: --dir") and "Traceback" not in cp.stderr
    assert secret.read_text() == before[secret]
    assert _digests(secrets) == before[secrets] and sorted(os.listdir(secrets)) == ["passwd"]


@ROOT_ONLY
def test_a_symlink_swapped_in_mid_drill_leads_nowhere(tmp_path: Path) -> None:
    """The attacker renames the drill directory away and puts a symlink to a
    root-owned copy of it in its place: nothing there is encrypted or removed."""
    state, shared = _agent_state_and_share(tmp_path)
    drill_dir = shared / ".tocsin-drill"
    victim = tmp_path / "archives"
    drill = subprocess.Popen(
        _drill(
            "--dir", str(drill_dir), "--state-dir", str(state), "--rate", "20", "--timeout", "5"
        ),
        stdout=subprocess.DEVNULL,
    )
    try:

        def started() -> bool:
            progress = drill_dir / "progress.log"
            return progress.exists() and len(progress.read_text().splitlines()) >= 2

        wait_for("the drill to encrypt", started, 60, 0.02)
        shutil.copytree(drill_dir, victim, symlinks=True)
        (victim / "progress.log").unlink()
        before = _digests(victim)
        os.rename(drill_dir, shared / "moved")
        drill_dir.symlink_to(victim)
        assert drill.wait(timeout=60) == 1  # nobody stopped it: the chain is "broken"
    finally:
        drill.kill()
        drill.wait()
    assert _digests(victim) == before, "the drill wrote through the swapped-in symlink"
    assert not (shared / "moved" / "share").exists()  # its own scratch copy, cleaned up
