"""Every recorded fixture, replayed into a real collector, gets the severity it must.

The recordings in tests/fixtures/ were made by tools/record_fixtures.py: the real
agent watching a scratch share while one simulated workload ran. Attacks must
reach ``critical``; heavy benign jobs must never be ``critical``; exfiltration
staging (reading the whole share into an archive) must raise a ``warning`` and
never a ``critical``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transport_procs import replay

from receiver import WebhookReceiver
from tocsin.agent.simulate import ATTACKS, BENIGN, STAGING

FIXTURES = Path(__file__).with_name("fixtures")
BIN = Path(sys.executable).parent
RECORDED = sorted(p.stem for p in FIXTURES.glob("*.jsonl"))
REQUIRED_ATTACKS = {"encrypt-inplace", "encrypt-copy", "encrypt-head"}
REQUIRED_BENIGN = {"backup-targz", "photo-import", "office-saves", "mass-delete"}


def test_required_fixtures_are_recorded() -> None:
    assert set(RECORDED) >= REQUIRED_ATTACKS | REQUIRED_BENIGN
    assert set(RECORDED) <= set(ATTACKS) | set(BENIGN) | set(STAGING)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, WebhookReceiver]]:
    tmp = tmp_path_factory.mktemp("replay")
    log = tmp / "collector.log"
    with WebhookReceiver() as hooks:
        proc = subprocess.Popen(
            [
                str(BIN / "tocsin-collector"),
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(tmp / "c.db"),
                "--webhook",
                hooks.url,
                "--respond",
                "dry-run",
                "--insecure",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            end = time.monotonic() + 20
            addr = None
            while addr is None and time.monotonic() < end and proc.poll() is None:
                m = re.search(r"listening on (\S+:\d+)", log.read_text(errors="replace"))
                addr = m.group(1) if m else None
                time.sleep(0.1)
            assert addr, log.read_text(errors="replace")
            yield addr, hooks
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def alerts_for(hooks: WebhookReceiver, host_id: str) -> list[dict[str, Any]]:
    return [b for b in hooks.bodies if b.get("event") == "alert" and b.get("host_id") == host_id]


@pytest.mark.parametrize("name", RECORDED)
def test_fixture_replays_to_expected_severity(
    name: str, collector: tuple[str, WebhookReceiver]
) -> None:
    addr, hooks = collector
    host_id = f"replay-{name}"
    replay(FIXTURES / f"{name}.jsonl", addr, host_id, timeout_s=120)
    if name in ATTACKS or name in STAGING:
        want = "critical" if name in ATTACKS else "warning"
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if any(a["severity"] == want for a in alerts_for(hooks, host_id)):
                break
            time.sleep(0.1)
        severities = [a["severity"] for a in alerts_for(hooks, host_id)]
        assert want in severities, f"{name}: {severities}"
        if name in STAGING:
            assert "critical" not in severities, f"{name}: {severities}"
    else:
        time.sleep(2.0)  # deliveries are asynchronous: give a wrong alert time to show
        alerts = alerts_for(hooks, host_id)
        assert all(a["severity"] != "critical" for a in alerts), f"{name}: {alerts}"
