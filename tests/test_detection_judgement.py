"""Judgement is never lost, through the real ``tocsin-collector`` process.

- A slow attack (one file a second, below the per-window bar) that straddles a
  collector restart still adds up: the judge's horizons are rebuilt from the
  stored windows.
- A window committed and acked, whose judgement then fails because the disk is
  full (a real tmpfs of the test's own, filled to the brim), is judged once
  space is back, without the agent sending anything more.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from tests.transport_procs import CollectorProc, free_port, wait_for
from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc

T0 = int(time.time()) - 600  # recent: older windows are past the retention period
HOST = "srv-fichiers"


def ruining_one_file(seq: int, paths: Sequence[str] = ()) -> pb.Window:
    """One second in which pid 7777 destroyed the type of one file: scored below threshold."""
    w = pb.Window(
        seq=seq,
        events_modified=2,
        files_modified=1,
        files_probed=1,
        files_type_destroyed=1,
        dirs_touched=1,
        extensions_touched=1,
        bytes_written=40_000,
        example_paths=list(paths),
    )
    w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
    w.top_writers.add(
        pid=7777, name="svc", exe="/tmp/.x/svc", tree_root_pid=7777, files_touched=1,
        files_type_destroyed=1,
    )  # fmt: skip
    return w


def encrypting(seq: int, paths: Sequence[str]) -> pb.Window:
    """One second of pid 6666 destroying the type of 12 files."""
    w = ruining_one_file(seq, paths)
    w.files_modified = w.files_probed = w.files_type_destroyed = 12
    w.files_high_entropy, w.mean_entropy = 12, 7.99
    w.top_writers[0].pid = w.top_writers[0].tree_root_pid = 6666
    w.top_writers[0].files_type_destroyed = 12
    return w


def saving(seq: int, paths: Sequence[str]) -> pb.Window:
    w = pb.Window(seq=seq, events_modified=1, files_modified=1, example_paths=list(paths))
    w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
    return w


async def _send(listen: str, boot: str, windows: Sequence[pb.Window]) -> tuple[int, str]:
    """Hello then ``windows`` on one stream; (highest seq acked, how the stream ended)."""
    out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
    await out.put(pb.AgentMessage(hello=pb.Hello(host_id=HOST, boot_id=boot)))
    for w in windows:
        await out.put(pb.AgentMessage(window=w))
    last = max(int(w.seq) for w in windows)

    async def requests() -> Iterator[pb.AgentMessage]:  # type: ignore[misc]
        while (m := await out.get()) is not None:
            yield m

    acked, ended = 0, "open"
    async with grpc.aio.insecure_channel(listen, options=CHANNEL_OPTIONS) as ch:
        call = pb_grpc.TelemetryStub(ch).Stream(requests())
        try:
            async for resp in call:
                if resp.HasField("ack"):
                    acked = max(acked, int(resp.ack.seq))
                    if acked >= last:
                        await out.put(pb.AgentMessage(goodbye=pb.Goodbye(reason="done")))
                        await out.put(None)
            ended = "goodbye"
        except grpc.aio.AioRpcError as exc:
            ended = exc.code().name
    return acked, ended


def send(listen: str, boot: str, windows: Sequence[pb.Window]) -> tuple[int, str]:
    return asyncio.run(asyncio.wait_for(_send(listen, boot, windows), 60))


def alerts(db: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(
            "SELECT severity, reasons FROM alerts WHERE host_id=? ORDER BY detected_at", (HOST,)
        ).fetchall()
    finally:
        con.close()


def test_a_slow_attack_straddling_a_restart_is_still_caught(tmp_path: Path) -> None:
    db = tmp_path / "collector.db"
    proc = CollectorProc(db, tmp_path / "collector.log", f"127.0.0.1:{free_port()}", ["--insecure"])
    listen = proc.start()
    try:
        assert send(listen, "b1", [ruining_one_file(s) for s in range(1, 13)]) == (12, "goodbye")
        proc.kill()  # a crash, in the middle of the attack
        proc.start()
        assert send(listen, "b1", [ruining_one_file(s) for s in range(13, 25)]) == (24, "goodbye")
        # 24 files in 24 s by one process tree: past the 20 a minute of strong evidence.
        wait_for("a critical alert", lambda: any(s == "critical" for s, _ in alerts(db)), 15)
    finally:
        proc.stop()
    severities = [s for s, _ in alerts(db)]
    assert severities[0] == "warning"  # the confirmer before the restart
    assert "critical" in severities  # the escalation after it


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of the test's own (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tocsin-test", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_window_acked_before_the_disk_filled_is_judged_once_space_is_back(
    tmp_path: Path, small_disk: Path
) -> None:
    db = small_disk / "collector.db"
    proc = CollectorProc(db, tmp_path / "collector.log", f"127.0.0.1:{free_port()}", ["--insecure"])
    # Long example paths make a window's commit and its alert weigh several pages.
    paths = [f"/srv/partage/{'Dossier-tres-long/' * 160}f{i}.docx" for i in range(5)]
    filler = small_disk / "filler"
    listen = proc.start()
    try:
        assert send(listen, "b1", [saving(s, paths) for s in range(1, 11)])[0] == 10
        before = free_bytes(small_disk)
        assert send(listen, "b1", [saving(11, paths)])[0] == 11
        per_window = before - free_bytes(small_disk)
        assert per_window > 0
        # Fill the disk, leaving room for one window's commit and a page more:
        # not for the incident and the alert its judgement writes.
        with filler.open("wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, free_bytes(small_disk) - per_window - 4096)
        acked, _ = send(listen, "b1", [encrypting(12, paths)])
        assert acked == 12  # committed, then acked; then its judgement hit the full disk
        wait_for("the failed judgement", lambda: "stored and acked but not judged" in proc.text())
        assert alerts(db) == []  # and it was lost before its alert was stored
        filler.unlink()  # the operator makes room; the agent sends nothing more
        wait_for("the window to be judged", lambda: alerts(db), 30)
    finally:
        proc.stop()
        filler.unlink(missing_ok=True)
    ((severity, reasons),) = alerts(db)
    assert severity == "critical" and "type_destroyed:12" in reasons
