"""`pip install tocsin[agent]` stays small: no scikit-learn, no numpy on a file server."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_agent_extra_does_not_install_scikit_learn(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # Like `make test`: a configured mirror when the primary index does not answer.
    env["PIP_DEFAULT_TIMEOUT"] = "20"
    if "PIP_INDEX_URL" not in env:
        exports = subprocess.run(
            ["sh", str(ROOT / "tools" / "pip-index-env.sh"), str(py)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        for line in exports.splitlines():
            if line.startswith("export PIP_INDEX_URL="):
                env["PIP_INDEX_URL"] = shlex.split(line.split("=", 1)[1])[0]
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{ROOT}[agent]",
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    installed = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    assert {"tocsin", "watchdog", "psutil", "grpcio", "protobuf"} <= installed
    assert not installed & {"scikit-learn", "numpy", "scipy"}, installed
    # The installed agent imports and answers, without the collector's stack.
    probe = subprocess.run(
        [str(env_dir / "bin" / "tocsin-agent"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert "--collector" in probe.stdout
