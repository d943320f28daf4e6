"""The example configs in deploy/ load with the real CLIs' loaders and cover every key."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from tocsin.agent.cli import KEYS as AGENT_KEYS
from tocsin.agent.cli import _load_config as load_agent_config
from tocsin.collector.cli import _KEYS as COLLECTOR_KEYS
from tocsin.collector.cli import SCALE_KEYS, settings
from tocsin.collector.cli import load_config as load_collector_config
from tocsin.collector.hooks import _HOOK_KEYS, hook
from tocsin.collector.outbox import _DEST_KEYS, destination
from tocsin.v1.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _full(name: str, tmp_path: Path) -> Path:
    """The example with its optional ('#~ ') lines switched on."""
    text = re.sub(r"^#~ ", "", (DEPLOY / name).read_text(), flags=re.M)
    out = tmp_path / name
    out.write_text(text)
    return out


def test_agent_example_loads_and_covers_every_key(tmp_path: Path) -> None:
    plain = load_agent_config(DEPLOY / "agent.toml")
    full = load_agent_config(_full("agent.toml", tmp_path))
    assert set(full) == set(AGENT_KEYS), set(AGENT_KEYS) ^ set(full)
    assert plain["tripwire"] == "follow" and "record" not in plain


def test_collector_example_loads_and_covers_every_key(tmp_path: Path) -> None:
    plain = load_collector_config(str(DEPLOY / "collector.toml"))
    full = load_collector_config(str(_full("collector.toml", tmp_path)))
    assert set(full) == set(COLLECTOR_KEYS) - set(SCALE_KEYS), set(COLLECTOR_KEYS) ^ set(full)
    assert plain["respond"] == "dry-run" and "hooks" not in plain
    assert plain["webhook_secret"] == "CHANGE-ME"  # a placeholder, never a working secret
    for d in full["webhooks"]:
        if "secret" in d:
            assert d["secret"] == "CHANGE-ME"
            with pytest.raises(ConfigError, match="placeholder"):
                destination(d)
    secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    dests = [destination({**d, "secret": secret}) for d in full["webhooks"]]
    assert {d.format for d in dests} == {"mattermost", "alertmanager"}
    assert set().union(*full["webhooks"]) == _DEST_KEYS
    (spec,) = full["hooks"]
    assert set(spec) == _HOOK_KEYS
    script = tmp_path / "hook"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert hook({**spec, "path": str(script)}).on == frozenset({"critical"})


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_scale_out_examples_load_with_their_role(role: str, tmp_path: Path) -> None:
    """gateway.toml and worker.toml pass the role's own checks, but for the placeholder."""
    full = _full(f"{role}.toml", tmp_path)
    conf = load_collector_config(str(full))
    assert set(SCALE_KEYS) <= set(conf)
    assert conf["store"].startswith("postgresql://") and conf["bus"].startswith("nats://")
    text = full.read_text().replace("CHANGE-ME", "whsec_" + base64.b64encode(bytes(32)).decode())
    text = re.sub(r"^(tls_\w+) = .*$", "", text, flags=re.M).replace("insecure = false", "")
    full.write_text(text)
    merged = settings([role, "--config", str(full), "--insecure"])
    assert merged["role"] == role and merged["bus_replicas"] == 3
