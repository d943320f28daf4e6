"""The committed generated wire code is exactly what the .proto files produce."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tocsin.v1 import MAX_MESSAGE_BYTES, telemetry_pb2

ROOT = Path(__file__).resolve().parents[1]
GENERATED = [
    f"{stem}{suffix}"
    for stem in ("telemetry", "operator")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    subprocess.run(
        ["sh", str(ROOT / "tools" / "genproto.sh"), str(tmp_path)],
        check=True,
        env={"PATH": env_path},
    )
    for name in GENERATED:
        fresh = (tmp_path / "tocsin" / "v1" / name).read_text()
        committed = (ROOT / "protos" / "tocsin" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit"


def test_window_with_full_writer_list_fits_message_limit() -> None:
    """A window filled to the agent's caps stays far below the wire limit."""
    w = telemetry_pb2.Window(seq=1, example_paths=["/srv/" + "x" * 500] * 5)
    for pid in range(8):
        w.top_writers.add(pid=pid, name="n" * 64, exe="/" + "e" * 255, cmdline="c" * 1024)
    assert w.ByteSize() < MAX_MESSAGE_BYTES // 8
