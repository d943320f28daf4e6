"""Each evidence kind fires on its attack and stays quiet on the legitimate job it resembles.

Real files, real inotify (fanotify too as root), workloads as their own processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from evidence_harness import run_workload, total

from tocsin.agent import canary, simulate
from tocsin.agent.window import Ruined
from tocsin.v1 import telemetry_pb2 as pb

FILES = 60
# Below what the judge confirms on (3 in one window): a benign job must stay under it.
QUIET = 3


@pytest.mark.parametrize(
    "style", ["encrypt-inplace", "encrypt-head", "encrypt-stripes", "encrypt-pattern"]
)
def test_type_destroyed_even_when_intermittent(tmp_path: Path, style: str) -> None:
    ws, _ = run_workload(tmp_path / "share", style, files=FILES)
    assert total(ws, "files_type_destroyed") >= FILES * 0.9, style
    assert total(ws, "files_unprobed") == 0


@pytest.mark.parametrize("style", ["encrypt-base64", "encrypt-hex"])
def test_encoded_ciphertext_is_seen_through(tmp_path: Path, style: str) -> None:
    ws, _ = run_workload(tmp_path / "share", style, files=FILES)
    assert total(ws, "files_encoded_random") >= FILES * 0.9, style
    assert total(ws, "files_type_destroyed") >= FILES * 0.9, style
    assert max(w.mean_entropy for w in ws if w.files_probed) < 6.5  # entropy alone is blind


@pytest.mark.parametrize("style", ["encrypt-medusa", "encrypt-copy-stem", "encrypt-copy-b64"])
def test_encrypt_to_copy_is_ruin_like_a_destroyed_type(tmp_path: Path, style: str) -> None:
    """``a.docx`` -> ``a.docx.X``, ``a.X`` or ``a.docx.X.b64``, the original deleted: every
    file counts as replaced by an encrypted twin and, as root, reaches the tripwire as a
    file ruined by the encryptor (it shortens windows and counts like a destroyed type)."""
    ruined: list[tuple[pb.ProcessSample, Ruined]] = []
    ws, pid = run_workload(tmp_path / "share", style, rate=200, files=FILES, ruined=ruined)
    assert total(ws, "encrypted_twins") >= FILES * 0.9, style
    if os.geteuid() == 0:
        by_writer = [r for writer, r in ruined if writer.pid == pid]
        # Most, not all: under load (the suite on two busy cores) a file's fanotify event
        # can come after its probe stopped waiting for it (41 of 60 seen once).
        assert len(by_writer) >= FILES * 0.6, (style, len(ruined))
        if style != "encrypt-copy-b64":  # base64 of random bytes is also encoded-random
            assert {r.kind for r in by_writer} == {"encrypted-copy"}


def test_twins_spreading_extension_and_note(tmp_path: Path) -> None:
    ws, _ = run_workload(tmp_path / "share", "encrypt-copy", files=FILES)
    assert total(ws, "encrypted_twins") >= FILES * 0.9
    assert any(w.top_new_extension == "locked" and w.top_new_extension_dirs >= 10 for w in ws)
    assert any(w.repeated_name == simulate.NOTE_NAME and w.repeated_name_dirs >= 10 for w in ws)


@pytest.mark.parametrize(
    "style",
    [
        "gzip-logs",
        "zip-folders",
        "convert-images",
        "office-saves",
        "backup-gpg-files",
        "mass-delete",
        "sed-inplace",
        "source-checkout",
    ],
)
def test_legitimate_jobs_stay_quiet(tmp_path: Path, style: str) -> None:
    ruined: list[tuple[pb.ProcessSample, Ruined]] = []
    share = tmp_path / "share"
    simulate.make_share(share, FILES)
    planted = canary.plant([str(share)])
    # office-saves re-saves every office file and mass-delete purges whole folders,
    # decoys included (docs/canaries.md): they run without canaries.
    watched = frozenset(planted) if style not in ("office-saves", "mass-delete") else frozenset()
    ws, _ = run_workload(share, style, files=FILES, make=False, canaries=watched, ruined=ruined)
    busy = total(ws, "files_created") + total(ws, "files_modified") + total(ws, "files_deleted")
    assert busy >= 10, f"{style} did nothing"
    assert total(ws, "files_type_destroyed") == 0, style
    assert total(ws, "files_encoded_random") == 0, style
    assert total(ws, "encrypted_twins") == 0, style
    assert max(w.top_new_extension_dirs for w in ws) < QUIET, style
    assert max(w.repeated_name_dirs for w in ws) < QUIET, style
    assert total(ws, "canary_touches") == 0, style  # a backup reads canaries: not a touch
    assert ruined == [], style


def test_canary_modified_is_touched(tmp_path: Path) -> None:
    share = tmp_path / "share"
    simulate.make_share(share, 16)
    planted = canary.plant([str(share)])
    assert len(planted) >= 3 * 2
    ws, _ = run_workload(
        share, "encrypt-inplace", files=16, make=False, canaries=frozenset(planted)
    )
    assert total(ws, "canary_touches") >= len(planted)


def test_exfiltration_staging(tmp_path: Path) -> None:
    ws, _ = run_workload(tmp_path / "share", "exfil-stage", rate=0, files=FILES)
    assert total(ws, "files_read") >= FILES * 0.9
    assert max(w.read_dirs for w in ws) >= 10
    assert total(ws, "archives_created") >= 1
    assert total(ws, "net_bytes_out") > 50_000  # the archive went through the network stack
    assert total(ws, "files_type_destroyed") == 0


def test_sed_and_office_read_no_share_sweep(tmp_path: Path) -> None:
    ws, _ = run_workload(tmp_path / "share", "office-saves", files=FILES)
    assert total(ws, "archives_created") == 0
    assert max((w.read_dirs for w in ws), default=0) < 10
