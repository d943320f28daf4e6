"""The window spool on a real SQLite file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tocsin.agent.spool import WindowSpool


def test_put_ack_restart_and_bounded_drop(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    s = WindowSpool(path, max_windows=5)
    for seq in range(1, 4):
        s.put("boot-a", seq, b"a%d" % seq)
    assert s.ack("boot-a", 2) == 2
    assert s.ack("boot-a", 2) == 0  # idempotent
    s.put("boot-a", 4, b"a4")
    s.close()

    s = WindowSpool(path, max_windows=5)  # a restart: a new boot resends the old one's
    assert [(w.boot_id, w.seq) for _, w in s.pending()] == [("boot-a", 3), ("boot-a", 4)]
    for seq in range(1, 6):
        s.put("boot-b", seq, b"b")
    # 7 windows into a spool of 5: the two oldest (boot-a) went first
    assert s.dropped == 2
    assert [(w.boot_id, w.seq) for _, w in s.pending()] == [("boot-b", i) for i in range(1, 6)]
    s.ack("boot-a", 99)
    assert s.depth == 5
    s.close()
    assert WindowSpool(path).dropped == 2


def test_byte_bound(tmp_path: Path) -> None:
    s = WindowSpool(tmp_path / "s.sqlite", max_bytes=1000)
    for seq in range(1, 11):
        s.put("b", seq, b"x" * 300)
    assert s.depth == 3
    assert s.dropped == 7
    assert [w.seq for _, w in s.pending()] == [8, 9, 10]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (Debian package strace)")
def test_put_never_waits_for_the_disk_the_spool_syncs_in_its_own_thread(tmp_path: Path) -> None:
    """The window thread puts; an fsync on a busy server can take half a second, and the
    window thread must go on probing an attack meanwhile. Which thread syncs is what
    strace sees: never the one that puts, yet the log does reach the disk."""
    path = tmp_path / "spool.sqlite"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from tocsin.agent.spool import WindowSpool\n"
        "s = WindowSpool(Path(sys.argv[1]))\n"
        "os.write(2, b'PUTS')\n"
        "for seq in range(1, 21):\n"
        "    s.put('boot', seq, b'w' * 500)\n"
        "os.write(2, b'DONE')\n"
        "s.close()\n"
    )
    trace = tmp_path / "strace.out"
    strace = ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,write", "-o", str(trace)]
    subprocess.run(
        [*strace, sys.executable, "-c", script, str(path)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if '"PUTS"' in line)
    end = next(i for i, line in enumerate(lines) if '"DONE"' in line)
    putter = lines[start].split()[0]
    syncs = [line.split()[0] for line in lines[start:end] if "sync(" in line]
    assert putter not in syncs, "the thread that puts waited for the disk"
    assert [line for line in lines if "sync(" in line and line.split()[0] != putter], (
        "nothing was synced by the spool's own thread"
    )
    assert [w.seq for _, w in WindowSpool(path).pending()] == list(range(1, 21))
