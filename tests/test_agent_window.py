"""Real inotify + fanotify on a tmp share while simulated workloads run in a subprocess."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tocsin.agent import simulate
from tocsin.agent.attribute import Attributor
from tocsin.agent.drill import DrillKey
from tocsin.agent.forks import ForkWatch
from tocsin.agent.watch import FileWatcher, FsEvent
from tocsin.agent.window import Ruined, WindowAccumulator, WindowLoop
from tocsin.v1 import telemetry_pb2 as pb


def _run(
    tmp_path: Path,
    style: str,
    files: int = 80,
    extra: tuple[str, ...] = (),
    drill: DrillKey | None = None,
    on_ruined: Callable[[pb.ProcessSample, Ruined, float], bool] | None = None,
    calls_itself: str = "",
    shell: bool = False,
) -> tuple[list[pb.Window], int]:
    """``style`` run against a watched share (as a drill of ``drill``'s agent if given;
    by a process that renamed itself ``calls_itself`` with prctl, if given; from a real
    bash running two of them side by side, child of the returned pid, with ``shell``)."""
    share = tmp_path / "share"
    simulate.make_share(share, files)
    watcher = FileWatcher([str(share)])
    attributor = Attributor([str(share)], is_drill=drill.carried_by if drill else lambda pid: False)
    got: list[pb.Window] = []
    loop = WindowLoop(
        watcher, attributor, got.append, window_s=0.5, idle_every_s=0.5, on_ruined=on_ruined
    )
    watcher.start()
    attributor.start()
    loop.start()
    time.sleep(0.3)
    try:
        argv = ["run", style, str(share), "--rate", "400", *extra]
        if shell:
            argv = ["-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"]
            sim = f'{sys.executable} -m tocsin.agent.simulate "$@"'
            argv += ["bash", "-c", f"{sim} & {sim} & wait"]
            argv += ["bash", "run", style, str(share), "--rate", "400", *extra]
        elif calls_itself:
            code = (
                "import sys; from tocsin.agent import _linux, simulate; "
                "_linux.set_process_name(sys.argv[1]); sys.exit(simulate.main(sys.argv[2:]))"
            )
            argv = ["-c", code, calls_itself, *argv]
        else:
            argv = ["-m", "tocsin.agent.simulate", *argv]
        child = subprocess.Popen(
            [sys.executable, *argv], env=drill.environment() if drill else None
        )
        assert child.wait(timeout=60) == 0
        time.sleep(1.2)
    finally:
        loop.stop()
        watcher.stop()
        attributor.stop()
    return got, child.pid


def _total(ws: list[pb.Window], name: str) -> int:
    return sum(getattr(w, name) for w in ws)


def test_encrypt_inplace_destroys_types_and_names_the_writer(tmp_path: Path) -> None:
    ws, pid = _run(tmp_path, "encrypt-inplace")
    assert _total(ws, "files_type_destroyed") >= 40
    assert _total(ws, "files_modified") >= 70
    writers = [s for w in ws for s in w.top_writers]
    if os.geteuid() == 0:
        assert writers and writers[0].pid == pid
        assert writers[0].attribution == pb.ATTRIBUTION_FANOTIFY
        assert sum(s.files_type_destroyed for s in writers if s.pid == pid) >= 40
        assert any(w.bytes_written > 0 for w in ws)


def test_encrypt_copy_twins_notes_and_new_extension(tmp_path: Path) -> None:
    ws, _ = _run(tmp_path, "encrypt-copy")
    assert _total(ws, "encrypted_twins") >= 60
    assert max(w.repeated_name_dirs for w in ws) >= 10
    assert any(w.repeated_name == simulate.NOTE_NAME for w in ws)
    assert any(w.top_new_extension == "locked" and w.top_new_extension_dirs >= 10 for w in ws)
    assert _total(ws, "files_deleted") >= 60


def test_office_saves_destroy_nothing(tmp_path: Path) -> None:
    ws, _ = _run(tmp_path, "office-saves")
    assert _total(ws, "files_modified") >= 10
    assert _total(ws, "files_type_destroyed") == 0
    assert _total(ws, "encrypted_twins") == 0
    assert _total(ws, "new_extensions") == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
def test_forked_workers_share_one_tree_root(tmp_path: Path) -> None:
    ws, pid = _run(tmp_path, "encrypt-workers", extra=("--workers", "4"))
    writers = [s for w in ws for s in w.top_writers]
    worker_pids = {s.pid for s in writers}
    assert len(worker_pids) >= 4
    assert {s.tree_root_pid for s in writers} == {pid}
    assert all(s.ppid == pid for s in writers)


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
@pytest.mark.parametrize("name", ["sshd", "bash"])
def test_workers_of_a_parent_calling_itself_a_daemon_or_shell_share_its_tree(
    tmp_path: Path, name: str
) -> None:
    """A name alone never stops the climb (prctl sets any): the parent runs python."""
    ws, pid = _run(tmp_path, "encrypt-workers", extra=("--workers", "4"), calls_itself=name)
    writers = [s for w in ws for s in w.top_writers]
    assert len({s.pid for s in writers}) >= 4
    assert {s.tree_root_pid for s in writers} == {pid}


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
def test_a_real_shell_is_never_climbed_into(tmp_path: Path) -> None:
    """Two encryptors a user's bash started side by side are each their own tree (a
    launcher of two workers of one job would be climbed into): the shell, bash by name
    and by executable, runs the user's other work too."""
    ws, _ = _run(tmp_path, "encrypt-inplace", shell=True)
    writers = [s for w in ws for s in w.top_writers]
    assert writers
    assert all(s.tree_root_pid == s.pid for s in writers), writers
    (bash,) = {s.ppid for s in writers}
    assert bash != os.getpid()


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
def test_the_drill_launcher_is_never_the_tree_of_its_builder_and_encryptor(
    tmp_path: Path,
) -> None:
    """``tocsin-agent drill`` runs two children with the key, one after the other: the
    share's builder, then the encryptor. Alone in their trees and siblings, they are
    still never merged into the launcher (which carries no key): suspending it would
    stop the drill that watches for the suspend."""
    share, state = tmp_path / "share", tmp_path / "state"
    share.mkdir()
    state.mkdir(mode=0o700)
    key = DrillKey.issue(state)
    forks = ForkWatch.open()
    watcher = FileWatcher([str(share)])
    attributor = Attributor([str(share)], is_drill=key.carried_by, forks=forks)
    got: list[pb.Window] = []
    loop = WindowLoop(watcher, attributor, got.append, window_s=1.0, idle_every_s=1.0)
    watcher.start()
    attributor.start()
    loop.start()
    time.sleep(0.3)
    try:
        drill = [str(Path(sys.executable).with_name("tocsin-agent")), "drill"]
        drill += ["--dir", str(share / "drill"), "--state-dir", str(state), "--timeout", "3"]
        launcher = subprocess.Popen(drill, stdout=subprocess.DEVNULL)
        launcher.wait(timeout=60)
        time.sleep(1.2)
    finally:
        loop.stop()
        watcher.stop()
        attributor.stop()
        if forks is not None:
            forks.stop()
    kids = [s for w in got for s in w.top_writers if s.ppid == launcher.pid]
    assert {s.cmdline.split()[3] for s in kids} >= {"share", "run"}, kids
    assert all(s.tree_root_pid == s.pid for s in kids), [
        (s.pid, s.tree_root_pid, s.cmdline[:60]) for s in kids
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
def test_a_drills_workers_are_one_tree_from_their_first_file(tmp_path: Path) -> None:
    """The workers of a drill carry its key and so does their launcher: one tree from the
    first ruined file on (the tripwire counts per tree), not one per worker until the
    window closes and finds them siblings."""
    key = DrillKey("k" * 48)
    roots: list[int] = []

    def ruined(writer: pb.ProcessSample, _r: Ruined, _at: float) -> bool:
        roots.append(writer.tree_root_pid)
        return False

    ws, pid = _run(
        tmp_path, "encrypt-workers", extra=("--workers", "4"), drill=key, on_ruined=ruined
    )
    assert len(roots) >= 40
    assert set(roots) == {pid}, f"first roots {roots[:8]}, launcher {pid}"
    assert {s.tree_root_pid for w in ws for s in w.top_writers} == {pid}


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
def test_a_file_shown_ruined_after_its_writes_were_read_names_its_running_writer(
    tmp_path: Path,
) -> None:
    """The tripwire closes a window at once on a ruined file whose write fanotify
    reported in the window before: the window it marks must still name that writer
    (its tree is what the collector suspends; without a writer it had no process)."""
    doc = tmp_path / "budget.docx"
    attributor = Attributor([str(tmp_path)])
    attributor.start()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os, time; open({str(doc)!r}, 'wb').write(os.urandom(8192)); time.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while attributor.writer_of(str(doc)) is None:
            assert time.monotonic() < deadline, "fanotify never named the writer"
            time.sleep(0.02)
        writer = attributor.writer_of(str(doc))
        assert writer is not None and writer.pid == child.pid
        assert [s.pid for s in attributor.collect()] == [child.pid]  # its window
        # The next window: the probe shows the file destroyed; the writer still runs.
        late = attributor.collect([str(doc)], ruined_by={child.pid: {str(doc)}})
        assert [(s.pid, s.files_type_destroyed) for s in late] == [(child.pid, 1)]
    finally:
        child.kill()
        child.wait()
        attributor.stop()


def test_full_queue_counts_drops(tmp_path: Path) -> None:
    watcher = FileWatcher([str(tmp_path)], queue_size=5)
    watcher.start()
    try:
        time.sleep(0.2)
        for i in range(30):
            (tmp_path / f"f{i}").write_text("x")
        time.sleep(0.5)
    finally:
        watcher.stop()
    assert len(watcher.queue) == 5
    assert watcher.events_dropped > 20


def test_a_file_still_being_written_is_probed_only_once_closed(tmp_path: Path) -> None:
    """Probed mid-write, an honest document can look destroyed: wait for its close."""
    doc = tmp_path / "deliberation.docx"
    doc.write_bytes(b"\0" * 4096)  # what a reader may see before the bytes land
    acc = WindowAccumulator(known_extensions={"docx"})
    for kind in ("created", "modified"):
        acc.add(FsEvent(kind, str(doc), "", False, time.monotonic()))
    w, destroyed = acc.close(0.0, 1.0)
    assert (w.files_probed, w.files_type_destroyed, destroyed) == (0, 0, [])
    acc.add(FsEvent("closed", str(doc), "", False, time.monotonic()))
    w, destroyed = acc.close(1.0, 2.0)  # closed and still not a docx: that is destruction
    assert (w.files_probed, w.files_type_destroyed, destroyed) == (1, 1, [str(doc)])
    moved = tmp_path / "budget.xlsx"
    moved.write_bytes(os.urandom(4096))
    acc.add(FsEvent("moved", str(tmp_path / "budget.tmp"), str(moved), False, time.monotonic()))
    w, _ = acc.close(2.0, 3.0)  # renamed into place: finished, probed
    assert (w.files_probed, w.files_type_destroyed) == (1, 1)


def test_a_random_copy_that_replaced_its_original_is_ruin_a_renamed_document_is_not(
    tmp_path: Path,
) -> None:
    """Real files, events as inotify reports them: in either order (copy then delete,
    delete then copy, rename then encrypt), a random same-stem copy of a deleted
    original is ruin; a renamed document, a random file beside a kept original and a
    temporary file are not."""
    rng = random.Random(3)
    acc = WindowAccumulator(known_extensions={"docx"})
    for name in "abcdf":
        (tmp_path / f"{name}.docx").write_bytes(simulate.file_content("docx", rng, 8000))

    def ev(kind: str, path: Path, dest: Path | None = None) -> None:
        acc.add(FsEvent(kind, str(path), str(dest or ""), False, time.monotonic()))
        acc.probe_more(64, 1 << 24)

    def write(path: Path) -> None:
        existed = path.exists()
        path.write_bytes(rng.randbytes(8000))
        ev("modified" if existed else "created", path)
        ev("closed", path)

    def delete(path: Path) -> None:
        path.unlink()
        ev("deleted", path)

    def rename(src: Path, dst: Path) -> None:
        src.rename(dst)
        ev("moved", src, dst)

    write(tmp_path / "a.docx.MEDUSA")
    delete(tmp_path / "a.docx")
    delete(tmp_path / "b.docx")
    write(tmp_path / "b.MEDUSA")
    rename(tmp_path / "c.docx", tmp_path / "c.docx.bak")  # the same document
    write(tmp_path / "d.docx.gpg")  # an encrypted copy; d.docx is kept
    write(tmp_path / "e.tmp")  # a temporary file, gone at once
    delete(tmp_path / "e.tmp")
    write(tmp_path / "e.MEDUSA")
    rename(tmp_path / "f.docx", tmp_path / "f.docx.MEDUSA")
    write(tmp_path / "f.docx.MEDUSA")  # renamed, then encrypted in place
    ruined = acc.take_ruined()
    assert sorted(r.path for r in ruined) == [
        str(tmp_path / n) for n in ("a.docx.MEDUSA", "b.MEDUSA", "f.docx.MEDUSA")
    ]
    assert {r.kind for r in ruined} == {"encrypted-copy"}
    w, _ = acc.close(0.0, 1.0)
    assert w.encrypted_twins >= 3
    assert acc.ruined_last == 3


def test_notes_in_every_directory_leave_the_probes_that_show_the_copies(tmp_path: Path) -> None:
    """Medusa writes a ransom note into every directory before its first copy: those 64
    new files spend the window's probe budget, and the copies that follow (each beside
    an original it then deletes) are still probed and shown ruined in the same window."""
    rng = random.Random(5)
    acc = WindowAccumulator(known_extensions={"docx"})

    def ev(kind: str, path: Path) -> None:
        acc.add(FsEvent(kind, str(path), "", False, time.monotonic()))
        acc.probe_more(64, 1 << 24)

    for i in range(10):
        (tmp_path / f"doc{i}.docx").write_bytes(simulate.file_content("docx", rng, 8000))
    for i in range(64):
        note = tmp_path / f"dir{i}" / "LISEZ-MOI.txt"
        note.parent.mkdir()
        note.write_text("Vos fichiers sont chiffrés.\n" * 20)
        ev("created", note)
        ev("closed", note)
    for i in range(10):
        copy = tmp_path / f"doc{i}.docx.MEDUSA"
        copy.write_bytes(rng.randbytes(8000))
        ev("created", copy)
        ev("closed", copy)
        (tmp_path / f"doc{i}.docx").unlink()
        ev("deleted", tmp_path / f"doc{i}.docx")
    ruined = acc.take_ruined()
    assert len(ruined) == 10 and {r.kind for r in ruined} == {"encrypted-copy"}
