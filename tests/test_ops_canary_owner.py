"""Canaries a share user's encryptor can touch, planted by the real agent with the unit's
capabilities and umask.

The agent runs as root with exactly the unit's CapabilityBoundingSet (setpriv) and
UMask=0077, on a share whose folder and files belong to uid 1000 (folder 2770, files
0660, as Samba leaves them). A process running as uid 1000 then reads and rewrites
a canary, and the agent notices: its windows to the collector (a scripted one on loopback)
count the canary touched and mark the tripwire fired.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_sink import GrpcSink

from tocsin.agent.canary import DEFAULT_NAMES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER = 1000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
    ),
]


def unit_setting(key: str) -> str:
    for line in (ROOT / "deploy" / "tocsin-agent.service").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.partition("=")[2].strip()
    raise KeyError(key)


@pytest.fixture
def share() -> Iterator[Path]:
    # Under /tmp, not pytest's root-only tmp_path: uid 1000 must be able to reach it.
    top = Path(tempfile.mkdtemp(prefix="tocsin-canary-"))
    try:
        top.chmod(0o755)
        share = top / "partage"
        for folder in (share, share / "Compta"):
            folder.mkdir()
            for i in range(3):
                f = folder / f"facture-{i}.docx"
                f.write_bytes(b"PK\x03\x04 a document")
                os.chown(f, USER, USER)
                f.chmod(0o660)
            os.chown(folder, USER, USER)
            folder.chmod(0o2770)
        yield share
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_canary_owned_like_its_neighbours_and_touched_by_a_share_user(
    share: Path, tmp_path: Path
) -> None:
    caps = unit_setting("CapabilityBoundingSet").split()
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in caps)])
    umask = int(unit_setting("UMask"), 8)
    log = tmp_path / "agent.log"
    sink = GrpcSink()
    agent = subprocess.Popen(
        [
            "setpriv",
            f"--bounding-set={bounding}",
            "--inh-caps=-all",
            str(BIN / "tocsin-agent"),
            "--collector",
            sink.target,
            "--insecure",
            "--watch",
            str(share),
            "--host-id",
            "fs-canary",
            "--state-dir",
            str(tmp_path / "state"),
            "--canaries",
            "--tripwire",
            "dry-run",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        umask=umask,
    )
    try:
        end = time.monotonic() + 60
        while "watching" not in log.read_text() and time.monotonic() < end:
            assert agent.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "watching" in log.read_text(), log.read_text()
        status = Path(f"/proc/{agent.pid}/status").read_text()
        assert f"CapEff:\t{_capmask(caps):016x}" in status  # the unit's set, nothing more

        canaries = [folder / name for folder in (share, share / "Compta") for name in DEFAULT_NAMES]
        for c in canaries:
            st = c.lstat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, 0o660), c

        # A share user's encryptor opens a canary, reads it and writes it over.
        target = share / "Compta" / DEFAULT_NAMES[1]
        res = subprocess.run(
            # It stays a moment, as an encryptor does, so the agent can name it.
            [
                "/bin/sh",
                "-c",
                'cat "$1" >/dev/null && printf "encrypted" >"$1"; sleep 1',
                "sh",
                str(target),
            ],
            user=USER,
            group=USER,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert res.returncode == 0, res.stderr
        assert target.read_bytes() == b"encrypted"
        end = time.monotonic() + 15
        while not [w for w in sink.windows() if w.canary_touches] and time.monotonic() < end:
            time.sleep(0.1)
        touched = [w for w in sink.windows() if w.canary_touches]
        assert touched, log.read_text()[-3000:]
        assert touched[0].tripwire_fired and "canary" in touched[0].tripwire_reason
    finally:
        sink.stop()
        agent.terminate()
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def _capmask(caps: list[str]) -> int:
    numbers = {
        "CAP_CHOWN": 0,
        "CAP_DAC_OVERRIDE": 1,
        "CAP_DAC_READ_SEARCH": 2,
        "CAP_FOWNER": 3,
        "CAP_KILL": 5,
        "CAP_NET_ADMIN": 12,
        "CAP_SYS_PTRACE": 19,
        "CAP_SYS_ADMIN": 21,
    }
    return sum(1 << numbers[c] for c in caps)
