"""tocsin-collector and tocsin as processes: one-line errors, replay, hosts, alerts."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import Recorder

BIN = Path(sys.executable).parent
T0 = 1_700_000_000


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--bogus"], "unrecognized arguments"),
        (["--listen", "nonsense"], "--listen wants HOST:PORT"),
        (["--respond", "maybe"], "--respond must be one of"),
        (["--webhook", "ftp://x"], "--webhook wants"),
        (["--allow", "10.0.0.300/8"], "--allow wants a CIDR"),
        (["--log-level", "loud"], "--log-level"),
        (["--db", "/nonexistent-dir/c.db"], "does not exist"),
        (["--model", "/nonexistent/model.json"], "--model"),
        (["--tls-ca", "/nonexistent/ca.pem"], "--insecure and TLS"),
        (["--config", "/nonexistent.toml"], "--config"),
    ],
)
def test_collector_bad_flags_give_one_line_and_exit_2(
    tmp_path: Path, extra: list[str], needle: str
) -> None:
    base = ["--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.db"), "--insecure"]
    res = run(str(BIN / "tocsin-collector"), *base, *extra)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tocsin-collector: error: "), res.stderr
    assert needle in lines[0]


def test_collector_refuses_without_tls_or_insecure(tmp_path: Path) -> None:
    res = run(
        str(BIN / "tocsin-collector"), "--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.db")
    )
    assert res.returncode == 2 and "--insecure" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_config_file_unknown_key_and_flags_override(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('listen = "127.0.0.1:0"\ncolour = "blue"\n')
    res = run(str(BIN / "tocsin-collector"), "--config", str(conf), "--db", str(tmp_path / "d"))
    assert res.returncode == 2 and "unknown key 'colour'" in res.stderr


def test_tocsin_bad_flags_one_line_exit_2() -> None:
    for args in (["hosts"], ["frobnicate", "--collector", "x:1"], ["hosts", "--collector", "nope"]):
        res = run(str(BIN / "tocsin"), *args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tocsin: error: "), res.stderr


def start_collector(log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """A ``tocsin-collector`` on a free loopback port (dry-run, insecure): (process, address)."""
    fixed = ["--listen", "127.0.0.1:0", "--respond", "dry-run", "--insecure"]
    proc = subprocess.Popen(
        [str(BIN / "tocsin-collector"), *fixed, *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    end = time.monotonic() + 20
    addr = None
    while addr is None and time.monotonic() < end and proc.poll() is None:
        m = re.search(r"listening on (\S+:\d+)", log.read_text())
        addr = m.group(1) if m else None
        time.sleep(0.05)
    if addr is None:
        proc.kill()
        raise AssertionError(log.read_text())
    return proc, addr


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[str]:
    log = tmp_path / "collector.log"
    proc, addr = start_collector(log, "--db", str(tmp_path / "c.db"))
    try:
        yield addr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "stopping" in log.read_text()


def make_recording(path: Path, n: int, t0: int = T0) -> None:
    rec = Recorder(path)
    rec.write(pb.AgentMessage(hello=pb.Hello(host_id="rec-host", boot_id="b1")))
    for seq in range(1, n + 1):
        w = pb.Window(
            seq=seq,
            files_modified=40,
            files_probed=40,
            files_type_destroyed=30,
            encrypted_twins=30,
            files_high_entropy=40,
            mean_entropy=7.9,
        )
        w.start.seconds, w.end.seconds = t0 + seq, t0 + seq + 1
        w.top_writers.add(
            pid=99,
            name="cryptor",
            exe="/tmp/cryptor",
            tree_root_pid=99,
            files_touched=40,
            files_type_destroyed=30,
        )
        rec.write(pb.AgentMessage(window=w))
    rec.close()


def test_replay_then_hosts_and_alerts(tmp_path: Path, collector: str) -> None:
    recording = tmp_path / "r.jsonl"
    make_recording(recording, 5)
    t0 = time.monotonic()
    res = run(
        str(BIN / "tocsin"),
        "replay",
        str(recording),
        "--collector",
        collector,
        "--insecure",
        "--speed",
        "10",
        "--host-id",
        "replayed",
    )
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 >= 0.4  # 4 s of windows at speed 10
    assert "windows sent 5, acked 5" in res.stdout

    res = run(str(BIN / "tocsin"), "hosts", "--collector", collector, "--insecure", "--json")
    (host,) = json.loads(res.stdout)
    assert host["host_id"] == "replayed" and host["windows"] == "5"  # uint64 is a JSON string
    assert host["connected"] is False

    res = run(str(BIN / "tocsin"), "alerts", "--collector", collector, "--insecure", "--json")
    alerts = json.loads(res.stdout)
    assert alerts and alerts[0]["severity"] == "critical" and alerts[0]["host_id"] == "replayed"
    assert alerts[0]["mode"] == "dry-run"
    table = run(str(BIN / "tocsin"), "alerts", "--collector", collector, "--insecure").stdout
    assert "replayed" in table and "critical" in table and "cryptor (pid 99)" in table

    res = run(
        str(BIN / "tocsin"),
        "release",
        "replayed",
        "--collector",
        collector,
        "--insecure",
        "--timeout",
        "0.5",
    )
    assert "release replayed: queued" in res.stdout and res.returncode == 1


def test_replay_keeps_a_later_nights_dates_only_when_asked(tmp_path: Path) -> None:
    """A recording shifted a day ahead (a job's next night) is judged a day ahead with
    ``--keep-dates`` when the collector allows that skew; without it, it is dated now."""
    tomorrow = int(time.time()) + 86_400
    recording = tmp_path / "night2.jsonl"
    make_recording(recording, 3, t0=tomorrow)
    db = str(tmp_path / "c.db")
    proc, addr = start_collector(tmp_path / "c.log", "--db", db, "--max-clock-skew-s", "172800")
    try:
        ops = ["--collector", addr, "--insecure"]
        for host, keep in (("kept", ["--keep-dates"]), ("redated", [])):
            res = run(str(BIN / "tocsin"), "replay", str(recording), *ops, "--speed", "0",
                      "--host-id", host, *keep)  # fmt: skip
            assert "windows sent 3, acked 3" in res.stdout, res.stdout + res.stderr
        alerts = json.loads(run(str(BIN / "tocsin"), "alerts", *ops, "--json").stdout)
        start = {a["host_id"]: a["window_start"] for a in alerts}
        assert set(start) == {"kept", "redated"}, alerts
        kept, redated = (_epoch(start[h]) for h in ("kept", "redated"))
        assert abs(kept - (tomorrow + 1)) < 2, start
        assert abs(redated - time.time()) < 60, start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_collector_on_postgresql_end_to_end(tmp_path: Path, pg_url: str, pg_dsn: str) -> None:
    """``--store postgresql://...``: windows, alert, incident and webhook all through PostgreSQL."""
    import psycopg

    from receiver import WebhookReceiver

    log = tmp_path / "collector.log"
    recording = tmp_path / "r.jsonl"
    make_recording(recording, 5)
    with WebhookReceiver() as receiver:
        proc, addr = start_collector(log, "--store", pg_url, "--webhook", receiver.url)
        try:
            end = time.monotonic() + 20
            res = run(
                str(BIN / "tocsin"), "replay", str(recording), "--collector", addr, "--insecure"
            )
            assert "windows sent 5, acked 5" in res.stdout, res.stdout + res.stderr
            ops = ["--collector", addr, "--insecure", "--json"]
            res = run(str(BIN / "tocsin"), "alerts", *ops)
            (alert,) = json.loads(res.stdout)
            assert alert["severity"] == "critical" and alert["host_id"] == "rec-host"
            while not receiver.of("alert") and time.monotonic() < end + 20:
                time.sleep(0.05)
            time.sleep(0.5)  # a duplicate would arrive now
            (record,) = [r for r in receiver.records if r["body"].get("event") == "alert"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, log.read_text()
    assert record["headers"]["Webhook-Id"] == f"msg_{alert['alert_id']}"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM windows").fetchone() == (5,)
        assert conn.execute("SELECT alert_id FROM alerts").fetchall() == [(alert["alert_id"],)]
        assert conn.execute("SELECT COUNT(*) FROM incidents").fetchone() == (1,)
        outbox = conn.execute("SELECT msg_id, status FROM outbox WHERE kind='alert'").fetchall()
        assert outbox == [(record["headers"]["Webhook-Id"], "delivered")]
    assert not (tmp_path / "c.db").exists()


@pytest.mark.parametrize(
    ("store", "needle"),
    [
        # Nothing listens on port 1 of loopback: refused at once.
        ("postgresql://tocsin:s3cret@127.0.0.1:1/tocsin", "cannot open database"),
        ("postgres://tocsin:s3cret@127.0.0.1:1/tocsin?sslmode=bogus", "cannot open database"),
    ],
)
def test_collector_unreachable_postgresql_one_line_password_hidden(
    tmp_path: Path, store: str, needle: str
) -> None:
    res = run(
        str(BIN / "tocsin-collector"), "--listen", "127.0.0.1:0", "--insecure", "--store", store
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tocsin-collector: error: "), res.stderr
    assert needle in lines[0] and "s3cret" not in res.stderr and "tocsin:***@" in lines[0]


def test_collector_missing_postgresql_database_and_two_stores_one_line(
    tmp_path: Path, pg_url: str
) -> None:
    missing = re.sub(r"@/\w+\?", "@/nowhere?", pg_url)
    base = [str(BIN / "tocsin-collector"), "--listen", "127.0.0.1:0", "--insecure"]
    res = run(*base, "--store", missing)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "cannot open database" in line and '"nowhere" does not exist' in line, line
    res = run(*base, "--store", pg_url, "--db", str(tmp_path / "c.db"))
    assert res.returncode == 2 and "give --store or --db, not both" in res.stderr


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("pushback_s = 0", "pushback_s must be between 0.5 and 60"),
        ("behind_windows = 2", "behind_windows must be between 10 and 1e+06"),
        ("behind_lag_ms = nan", "finite number"),
        ('behind_windows = "many"', "behind_windows"),
    ],
)
def test_overload_keys_are_checked(tmp_path: Path, line: str, needle: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'listen = "127.0.0.1:0"\ninsecure = true\n{line}\n')
    res = run(str(BIN / "tocsin-collector"), "--config", str(conf), "--db", str(tmp_path / "d"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_overload_keys_reach_the_admission(tmp_path: Path) -> None:
    from tocsin.collector.app import build
    from tocsin.collector.cli import settings

    conf = tmp_path / "c.toml"
    conf.write_text(
        'listen = "127.0.0.1:0"\ninsecure = true\n'
        "behind_windows = 500\nbehind_lag_ms = 250\npushback_s = 12.5\n"
    )
    app = build(settings(["--config", str(conf), "--db", str(tmp_path / "c.db")]))
    try:
        cfg = app.collector.admission.config
        assert (cfg.max_in_flight, cfg.max_lag_s, cfg.pushback_ms) == (500, 0.25, 12_500)
    finally:
        app.db.close()
