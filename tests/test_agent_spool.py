"""The window spool on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

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
