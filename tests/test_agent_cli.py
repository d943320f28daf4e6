"""Every user mistake: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tocsin.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "case",
    [
        "bad-flag",
        "no-tls",
        "missing-dir",
        "bad-config",
        "bad-tripwire",
        "bad-collector",
        "bad-second-collector",
        "bad-resolver",
        "drill-not-empty",
        "spool-inf-config",
        "spool-nan-flag",
        "window-inf-flag",
    ],
)
def test_user_mistakes(tmp_path: Path, case: str) -> None:
    base = [
        "--collector",
        "127.0.0.1:7443",
        "--host-id",
        "h",
        "--state-dir",
        str(tmp_path / "st"),
        "--watch",
        str(tmp_path),
    ]
    cfg = tmp_path / "agent.toml"
    cfg.write_text("collector = [1, 2\n")
    (tmp_path / "junk").write_text("x")
    inf_cfg = tmp_path / "inf.toml"
    inf_cfg.write_text(
        f'collector = "127.0.0.1:7443"\nhost_id = "h"\nstate_dir = "{tmp_path / "st"}"\n'
        f'watch = ["{tmp_path}"]\ninsecure = true\nspool_max_mb = inf\n'
    )
    argv = {
        "bad-flag": [*base, "--insecure", "--bogus"],
        "no-tls": base,
        "missing-dir": [*base[:-1], str(tmp_path / "nope"), "--insecure"],
        "bad-config": ["--config", str(cfg)],
        "bad-tripwire": [*base, "--insecure", "--tripwire", "maybe"],
        "bad-collector": [*base[2:], "--collector", "nowhere", "--insecure"],
        "bad-second-collector": [*base[2:], "--collector", "a:1,nowhere", "--insecure"],
        "bad-resolver": [*base, "--insecure", "--resolver", "dns.example"],
        "drill-not-empty": ["drill", "--dir", str(tmp_path)],
        "spool-inf-config": ["--config", str(inf_cfg)],
        "spool-nan-flag": [*base, "--insecure", "--spool-max-mb", "nan"],
        "window-inf-flag": [*base, "--insecure", "--window-s", "inf"],
    }[case]
    cp = _agent(*argv)
    assert cp.returncode == 2, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("tocsin-agent: error: ")
    assert "Traceback" not in cp.stderr


def test_config_file_keys_and_flag_override(tmp_path: Path) -> None:
    from tocsin.agent.cli import build_config

    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'collector = "10.0.0.1:7443"\nwatch = ["{tmp_path}"]\nhost_id = "mairie-1"\n'
        f'state_dir = "{tmp_path / "st"}"\ninsecure = true\ntripwire = "off"\n'
        'resolvers = ["10.0.0.53", "fd00::53"]\n'
    )
    conf, _ = build_config(["--config", str(cfg), "--tripwire", "enforce"])
    assert conf.resolvers == ["10.0.0.53", "fd00::53"]
    assert conf.collector_host_ports == [("10.0.0.1", 7443)]
    assert conf.host_id == "mairie-1"
    assert conf.tripwire == "enforce"


def test_several_collectors_from_flags_and_config(tmp_path: Path) -> None:
    from tocsin.agent.cli import build_config

    base = ["--watch", str(tmp_path), "--host-id", "h", "--state-dir", str(tmp_path / "st")]
    conf, _ = build_config(
        [*base, "--insecure", "--collector", "a:1,b:2", "--collector", "[fd00::1]:3"]
    )
    assert conf.collectors == ["a:1", "b:2", "[fd00::1]:3"]
    assert conf.collector_host_ports == [("a", 1), ("b", 2), ("fd00::1", 3)]
    cfg = tmp_path / "agent.toml"
    cfg.write_text('collector = ["10.0.0.1:7443", "10.0.0.2:7443"]\ninsecure = true\n')
    conf, _ = build_config([*base, "--config", str(cfg)])
    assert conf.collectors == ["10.0.0.1:7443", "10.0.0.2:7443"]
