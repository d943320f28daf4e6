"""The services as systemd runs them: units verified, the sd_notify protocol spoken by a
harness (readiness and watchdog pings from the real processes), metrics scraped and parsed,
JSON logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UNITS = (
    "tocsin-agent.service",
    "tocsin-collector.service",
    "tocsin-gateway.service",
    "tocsin-worker@.service",
)


def _unit(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened_notify_services(name: str) -> None:
    u = _unit(name)
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert int(u["WatchdogSec"][0]) > 0
    assert u["Restart"][0] in ("always", "on-failure")
    assert u["StateDirectory"] and u["ProtectSystem"] in (["strict"], ["full"])
    assert u["NoNewPrivileges"] == ["yes"] and u["PrivateTmp"] == ["yes"]
    assert "CapabilityBoundingSet" in u and "RestrictAddressFamilies" in u
    if name != "tocsin-agent.service":
        assert u["CapabilityBoundingSet"] == [""] and u["User"] == ["tocsin"]
        assert u["PrivateUsers"] == ["yes"]
        assert u["ProtectSystem"] == ["strict"]
    else:
        caps = set(u["CapabilityBoundingSet"][0].split())
        assert caps == {
            "CAP_SYS_ADMIN",
            "CAP_DAC_OVERRIDE",
            "CAP_CHOWN",
            "CAP_KILL",
            "CAP_SYS_PTRACE",
            "CAP_NET_ADMIN",
        }
        assert u["AmbientCapabilities"] == [""]
        text = (ROOT / "deploy" / name).read_text()
        for cap in caps:  # each one says what it is for
            assert re.search(rf"^#\s+{cap}\s+\S", text, re.M), cap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    paths = []
    for name in UNITS:
        text = (ROOT / "deploy" / name).read_text()
        (program,) = re.findall(r"^ExecStart=/usr/local/bin/(\S+) ", text, re.M)
        assert (BIN / program).exists(), program
        text = text.replace(f"/usr/local/bin/{program}", str(BIN / program))
        unit = name.replace("@.", "@1.")  # a template is verified as an instance
        (tmp_path / name).write_text(text)
        if unit != name:
            (tmp_path / unit).symlink_to(tmp_path / name)
        paths.append(str(tmp_path / unit))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert res.returncode == 0, res.stderr
    assert "tocsin" not in res.stderr, res.stderr  # no warning about our units


class NotifyHarness:
    """What systemd does for Type=notify: an AF_UNIX datagram socket, messages logged."""

    def __init__(self, path: Path | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"tocsin-test-{uuid.uuid4().hex[:12]}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def poll(self, until_s: float) -> None:
        end = time.monotonic() + until_s
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for item in data.decode().split("\n"):
                self.messages.append((time.monotonic(), item))

    def wait_for(self, what: str, timeout_s: float) -> float:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for t, m in self.messages:
                if m == what:
                    return t
            self.poll(0.1)
        raise AssertionError(f"no {what} within {timeout_s} s: {self.messages}")

    def count(self, what: str) -> int:
        return sum(1 for _, m in self.messages if m == what)


def _spawn(args: list[str], log: Path, notify: NotifyHarness) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "600000"}
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _grep(log: Path, pattern: str) -> str:
    m = re.search(pattern, log.read_text())
    return m.group(1) if m else ""


def _scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    for s in families[name].samples:
        if s.name.endswith(("_created", "_bucket")):
            continue
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError((name, labels))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: Path, notify: NotifyHarness) -> subprocess.Popen[bytes]:
        p = _spawn(args, log, notify)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_readiness_watchdog_metrics_and_json_logs(
    tmp_path: Path, stack: Callable[..., subprocess.Popen[bytes]]
) -> None:
    c_notify = NotifyHarness(tmp_path / "collector.notify")
    a_notify = NotifyHarness(None)  # abstract namespace, as systemd may use
    c_log, a_log = tmp_path / "collector.log", tmp_path / "agent.log"
    collector = stack(
        [
            str(BIN / "tocsin-collector"),
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "c.db"),
            "--insecure",
            "--metrics",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        c_log,
        c_notify,
    )
    c_notify.wait_for("READY=1", 30)
    # Ready means bound: the port answers at once.
    addr = _grep(c_log, r"listening on (\S+:\d+)")
    host, port = addr.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=2).close()
    c_metrics = _grep(c_log, r"metrics on (http://\S+/metrics)")
    assert c_metrics

    share = tmp_path / "share"
    share.mkdir()
    agent = stack(
        [
            str(BIN / "tocsin-agent"),
            "--collector",
            addr,
            "--watch",
            str(share),
            "--host-id",
            "fs-notify",
            "--state-dir",
            str(tmp_path / "state"),
            "--insecure",
            "--tripwire",
            "off",
            "--metrics",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        a_log,
        a_notify,
    )
    a_notify.wait_for("READY=1", 60)
    # Ready means watching and serving: a file written now is seen, metrics answer now.
    (share / "right-after-ready.txt").write_text("x")
    a_metrics = _grep(a_log, r"metrics on (http://\S+/metrics)")
    assert a_metrics and _scrape(a_metrics)
    end = time.monotonic() + 10
    while _value(_scrape(a_metrics), "tocsin_agent_events", kind="created") < 1:
        assert time.monotonic() < end, a_log.read_text()
        time.sleep(0.2)

    # Watchdog pings keep coming from both (every WATCHDOG_USEC / 2 = 0.3 s).
    a_before, c_before = a_notify.count("WATCHDOG=1"), c_notify.count("WATCHDOG=1")
    for _ in range(15):
        a_notify.poll(0.1)
        c_notify.poll(0.1)
    assert a_notify.count("WATCHDOG=1") - a_before >= 3
    assert c_notify.count("WATCHDOG=1") - c_before >= 3

    # Both endpoints parse with prometheus-client's own parser, with the promised families.
    end = time.monotonic() + 15
    while True:
        c = _scrape(c_metrics)
        if _value(c, "tocsin_collector_windows") >= 1 or time.monotonic() > end:
            break
        time.sleep(0.3)
    a = _scrape(a_metrics)
    for name in (
        "tocsin_agent_events",
        "tocsin_agent_windows",
        "tocsin_agent_events_dropped",
        "tocsin_agent_spool_depth",
        "tocsin_agent_spool_dropped",
        "tocsin_agent_connected",
        "tocsin_agent_isolated",
    ):
        assert name in a, (name, sorted(a))
    assert _value(a, "tocsin_agent_windows") >= 1 and _value(a, "tocsin_agent_connected") == 1
    for name in (
        "tocsin_collector_windows",
        "tocsin_collector_events",
        "tocsin_collector_agent_events_dropped",
        "tocsin_collector_score",
        "tocsin_collector_alerts",
        "tocsin_collector_actions",
        "tocsin_collector_webhook_deliveries",
        "tocsin_collector_webhook_outbox_depth",
        "tocsin_collector_hosts",
        "tocsin_collector_windows_in_flight",
        "tocsin_collector_loop_lag_seconds",
        "tocsin_collector_pushed_back",
    ):
        assert name in c, (name, sorted(c))
    assert _value(c, "tocsin_collector_windows") >= 1
    assert 0 <= _value(c, "tocsin_collector_loop_lag_seconds") < 5
    assert _value(c, "tocsin_collector_pushed_back") == 0  # one quiet agent: never behind
    assert _value(c, "tocsin_collector_events", kind="created") >= 1
    assert _value(c, "tocsin_collector_hosts", state="connected") == 1
    assert c["tocsin_collector_score"].type == "histogram"

    for proc, notify in ((agent, a_notify), (collector, c_notify)):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        notify.poll(0.2)
        assert notify.count("STOPPING=1") == 1
    for log in (a_log, c_log):
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        assert lines
        for ln in lines:
            item = json.loads(ln)
            assert {"ts", "level", "logger", "msg"} <= set(item)
