"""Probes on real typed files and their ruined versions."""

from __future__ import annotations

import base64
import os
import random
import socket
import time
from pathlib import Path

import pytest

from tocsin.agent import simulate
from tocsin.agent.probe import BLOCK_BYTES, probe_file
from tocsin.agent.watch import FsEvent
from tocsin.agent.window import WindowAccumulator


@pytest.mark.parametrize("kind", simulate.KINDS)
def test_intact_files_keep_their_type(tmp_path: Path, kind: str) -> None:
    p = tmp_path / f"doc.{kind}"
    p.write_bytes(simulate.file_content(kind, random.Random(1), 12_000))
    r = probe_file(str(p))
    assert r is not None
    assert not r.type_destroyed
    assert not r.encoded_random


@pytest.mark.parametrize("kind", simulate.KINDS)
def test_encrypted_files_lose_their_type(tmp_path: Path, kind: str) -> None:
    data = simulate.file_content(kind, random.Random(1), 12_000)
    full = tmp_path / f"full.{kind}"
    full.write_bytes(simulate._xor(data, 3))
    b64 = tmp_path / f"b64.{kind}"
    b64.write_bytes(base64.b64encode(simulate._xor(data, 3)))
    r_full, r_b64 = probe_file(str(full)), probe_file(str(b64))
    assert r_full is not None and r_full.type_destroyed and r_full.high_entropy
    assert r_b64 is not None and r_b64.type_destroyed and r_b64.encoded_random
    assert not r_b64.high_entropy  # base64 defeats byte entropy; the decoder does not


def test_intermittent_head_encryption_destroys_type(tmp_path: Path) -> None:
    p = tmp_path / "a.pdf"
    p.write_bytes(simulate.file_content("pdf", random.Random(2), 20_000))
    simulate.encrypt_head(tmp_path, rate_per_s=0)
    r = probe_file(str(p))
    assert r is not None and r.type_destroyed


def test_high_entropy_formats_are_not_destroyed(tmp_path: Path) -> None:
    p = tmp_path / "photo.jpg"
    p.write_bytes(simulate.file_content("jpg", random.Random(3), 50_000))
    r = probe_file(str(p))
    assert r is not None and r.high_entropy and r.incompressible and not r.type_destroyed


def test_vanished_files_are_skipped_and_budget_holds(tmp_path: Path) -> None:
    paths = []
    for i in range(10):
        p = tmp_path / f"f{i}.txt"
        p.write_text("conseil municipal " * 500)
        paths.append(str(p))
    # Through the window's own budget (newest first: the vanished file goes first).
    acc = WindowAccumulator(known_extensions={"txt"})
    for path in [*paths, str(tmp_path / "gone.txt")]:
        acc.add(FsEvent("closed", path, "", False, 0.0))
    s, _ = acc.close(0.0, 1.0, max_probe_files=4)
    assert s.files_probed + s.files_unprobed == 10  # the vanished file: skipped, neither
    assert s.files_probed == 4
    assert s.bytes_probed <= 4 * 64 * 1024
    assert s.files_type_destroyed == 0


def test_only_regular_files_are_read_and_never_blocking(tmp_path: Path) -> None:
    """A FIFO, a socket, symlinks to /dev/zero and /etc/passwd, a directory: no probe, at once."""
    os.mkfifo(tmp_path / "budget.docx")  # a blocking open would wait for a writer forever
    (tmp_path / "zero.docx").symlink_to("/dev/zero")
    (tmp_path / "passwd.txt").symlink_to("/etc/passwd")
    (tmp_path / "folder.pdf").mkdir()
    short = Path(f"/tmp/s{os.getpid()}")  # a socket path has at most 108 bytes
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(short))
        os.rename(short, tmp_path / "plan.pdf")
        start = time.monotonic()
        for name in ("budget.docx", "zero.docx", "passwd.txt", "folder.pdf", "plan.pdf", "gone"):
            assert probe_file(str(tmp_path / name)) is None, name
        assert probe_file(str(tmp_path / ("n" * 300))) is None  # ENAMETOOLONG
        assert probe_file(str(tmp_path) + "/nul\0.txt") is None
    assert time.monotonic() - start < 1.0


def test_a_huge_file_is_read_in_three_blocks(tmp_path: Path) -> None:
    p = tmp_path / "huge.txt"
    with p.open("wb") as fh:
        fh.truncate(1 << 40)  # a sparse terabyte
    r = probe_file(str(p))
    assert r is not None and r.bytes_probed == 3 * BLOCK_BYTES
