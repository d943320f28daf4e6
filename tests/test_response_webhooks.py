"""Webhooks against real HTTP receivers: Standard Webhooks signatures checked by an
independent verifier, every format, a receiver outage across a collector crash."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from receiver import WebhookReceiver
from tocsin.collector.backends import open_database, open_storage
from tocsin.collector.outbox import Destination, Outbox, destination
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import Recorder

BIN = Path(sys.executable).parent
SECRET = "whsec_" + base64.b64encode(b"tocsin-test-key-0123456789abcdef").decode()
T0 = 1_700_000_000


def verify(secret: str, headers: dict[str, str], raw: str, tolerance_s: float = 300) -> bool:
    """Standard Webhooks verification, written from the scheme, not from tocsin's code."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, sigs = h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]
    if abs(time.time() - int(stamp)) > tolerance_s:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, f"{msg_id}.{stamp}.{raw}".encode(), hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for part in sigs.split(" "):
        version, _, value = part.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def alert_event(alert_id: str = "a1") -> dict[str, Any]:
    return {
        "event": "alert",
        "alert_id": alert_id,
        "incident_id": "i1",
        "host_id": "mairie-fs1",
        "severity": "critical",
        "score": 0.71,
        "detected_at": "2025-01-01T10:00:00.000Z",
        "window_start": "2025-01-01T09:59:59.000Z",
        "window_end": "2025-01-01T10:00:00.000Z",
        "reasons": ["type_destroyed:55", "encrypted_twins:50"],
        "process": {"pid": 4242, "name": "cryptor", "exe": "/tmp/cryptor"},
        "actions": [{"action": "suspend", "status": "sent"}],
        "summary": "Critical on mairie-fs1: 55 files lost their file type",
    }


def test_verifier_rejects_a_tampered_body() -> None:
    from tocsin.collector.webhook import parse_secret, signed_headers

    body = b'{"a": 1}'
    headers = signed_headers(parse_secret(SECRET), "msg_1", int(time.time()), body)
    assert verify(SECRET, headers, body.decode())
    assert not verify(SECRET, headers, '{"a": 2}')
    other = "whsec_" + base64.b64encode(b"another-key-0123456789abcdef!!").decode()
    assert not verify(other, headers, body.decode())


def test_every_format_delivered_signed(db_location: str) -> None:
    fmts = ("generic", "slack", "mattermost", "teams", "alertmanager")
    receivers = [WebhookReceiver() for _ in fmts]
    for r in receivers:
        r.__enter__()
    try:
        dests = [
            destination({"url": r.url, "format": f, "secret": SECRET, "name": f})
            for r, f in zip(receivers, fmts, strict=True)
        ]
        outbox = Outbox(open_database(db_location), dests, retry_initial_s=0.05)

        async def go() -> None:
            msg_id = outbox.enqueue(alert_event())
            assert msg_id
            outbox.start()
            end = time.monotonic() + 10
            while outbox.depth() and time.monotonic() < end:
                await asyncio.sleep(0.02)
            await outbox.stop()

        asyncio.run(go())
        got = {f: r.records for f, r in zip(fmts, receivers, strict=True)}
    finally:
        for r in receivers:
            r.__exit__()
    ids = set()
    for fmt, records in got.items():
        assert len(records) == 1, fmt
        rec = records[0]
        assert verify(SECRET, rec["headers"], rec["raw"]), fmt
        ids.add(rec["headers"]["Webhook-Id"])
    assert len(ids) == 1  # one message, one id, every destination
    assert got["generic"][0]["body"]["alert_id"] == "a1"
    slack = got["slack"][0]["body"]
    assert "55 files" in slack["text"] and slack["blocks"][0]["type"] == "section"
    mm = got["mattermost"][0]["body"]
    assert mm["attachments"][0]["color"] == "#d40000" and mm["text"]
    teams = got["teams"][0]["body"]
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard"
    facts = {f["title"]: f["value"] for f in card["content"]["body"][2]["facts"]}
    assert facts["Host"] == "mairie-fs1" and "cryptor" in facts["Process"]
    (am,) = got["alertmanager"][0]["body"]
    assert am["labels"]["alertname"] == "TocsinRansomware"
    assert am["labels"]["severity"] == "critical" and am["labels"]["host_id"] == "mairie-fs1"
    assert am["annotations"]["summary"].startswith("Critical on mairie-fs1")
    assert am["startsAt"] == "2025-01-01T10:00:00.000Z"


def test_retries_with_backoff_then_rejects_a_4xx(db_location: str) -> None:
    calls: list[float] = []

    def poster(
        url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, str, float | None]:
        calls.append(time.monotonic())
        if url.endswith("/gone"):
            return 404, "HTTP 404", None
        return (503, "HTTP 503", None) if len(calls) <= 3 else (200, "", None)

    dests = [Destination("http://x/ok", name="ok"), Destination("http://x/gone", name="gone")]
    outbox = Outbox(open_database(db_location), dests, poster=poster, retry_initial_s=0.1)

    async def go() -> None:
        outbox.enqueue(alert_event())
        outbox.start()
        end = time.monotonic() + 10
        while outbox.depth() and time.monotonic() < end:
            await asyncio.sleep(0.02)
        await outbox.stop()

    asyncio.run(go())
    status = {r["dest"]: r["status"] for r in outbox.rows()}
    assert status == {"ok": "delivered", "gone": "rejected"}
    assert outbox.stats.failed_attempts["ok"] >= 2
    ok_calls = calls[:1] + calls[2:]  # the 404 is one of the first round's calls
    gaps = [b - a for a, b in itertools.pairwise(ok_calls)]
    assert gaps[-1] > gaps[0] * 1.3  # exponential, not constant


def test_outbox_refuses_beyond_its_bound(db_location: str) -> None:
    outbox = Outbox(open_database(db_location), [Destination("http://x/")], max_pending=3)
    ids = [outbox.enqueue(alert_event(str(i))) for i in range(5)]
    assert sum(1 for i in ids if i) == 3 and outbox.dropped == 2 and outbox.depth() == 3


def _recording(path: Path, hosts: list[str]) -> None:
    for host in hosts:
        rec = Recorder(path.with_name(f"{host}.jsonl"))
        rec.write(pb.AgentMessage(hello=pb.Hello(host_id=host, boot_id="b1")))
        for seq in range(1, 5):
            w = pb.Window(
                seq=seq,
                files_modified=40,
                files_probed=40,
                files_type_destroyed=30,
                encrypted_twins=30,
                files_high_entropy=40,
                mean_entropy=7.9,
            )
            w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
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


def _start_collector(tmp_path: Path, conf: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [str(BIN / "tocsin-collector"), "--config", str(conf)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    end = time.monotonic() + 20
    size = log.stat().st_size if log.exists() else 0
    while time.monotonic() < end and proc.poll() is None:
        found = re.findall(
            r"listening on (\S+:\d+)", log.read_text()[size:] if size else log.read_text()
        )
        if found:
            return proc, found[-1]
        time.sleep(0.05)
    raise AssertionError("collector did not start\n" + log.read_text())


def _alert_records(r: WebhookReceiver) -> list[dict[str, Any]]:
    return [x for x in r.records if x["body"].get("event") == "alert"]


@pytest.mark.slow
def test_outage_and_collector_crash_every_alert_exactly_once(tmp_path: Path) -> None:
    hosts = ["fs1", "fs2", "fs3"]
    _recording(tmp_path / "r", hosts)
    log = tmp_path / "collector.log"
    with WebhookReceiver(fail_first=5) as receiver:
        conf = tmp_path / "collector.toml"
        conf.write_text(
            f'listen = "127.0.0.1:0"\ndb = "{tmp_path / "c.db"}"\ninsecure = true\n'
            f'respond = "dry-run"\nwebhook = ["{receiver.url}"]\nwebhook_secret = "{SECRET}"\n'
            "webhook_retry_initial_s = 1.5\nwebhook_retry_max_s = 3\n"
        )
        proc, addr = _start_collector(tmp_path, conf, log)
        try:
            for host in hosts:
                res = subprocess.run(
                    [
                        str(BIN / "tocsin"),
                        "replay",
                        str(tmp_path / f"{host}.jsonl"),
                        "--collector",
                        addr,
                        "--insecure",
                        "--speed",
                        "0",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert res.returncode == 0, res.stderr
            res = subprocess.run(
                [str(BIN / "tocsin"), "alerts", "--collector", addr, "--insecure", "--json"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            stored = {a["alert_id"] for a in json.loads(res.stdout)}
            assert len(stored) == 3, res.stdout
            # Crash while the receiver is still refusing: nothing delivered yet.
            assert _alert_records(receiver) == []
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc, addr = _start_collector(tmp_path, conf, log)
        try:
            end = time.monotonic() + 40
            while time.monotonic() < end:
                got = {r["body"]["alert_id"] for r in _alert_records(receiver)}
                if got >= stored:
                    break
                time.sleep(0.1)
            time.sleep(1.0)  # any duplicate would arrive now
            records = _alert_records(receiver)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    per_id = Counter(r["headers"]["Webhook-Id"] for r in records)
    assert {r["body"]["alert_id"] for r in records} == stored, log.read_text()
    assert all(n == 1 for n in per_id.values()) and len(per_id) == 3, per_id
    assert all(verify(SECRET, r["headers"], r["raw"]) for r in records)
    assert "attempt" in log.read_text()  # the outage was seen and retried


def test_alert_stored_but_never_queued_is_delivered_after_restart(tmp_path: Path) -> None:
    """A collector that crashed between storing an alert and queueing it loses no webhook."""
    from tocsin.collector.store import AlertRecord, SqliteStore

    db = tmp_path / "c.db"
    store = SqliteStore.open(db)
    for alert_id, age_s in (("fresh", 60.0), ("ancient", 3 * 86400.0)):
        event = alert_event(alert_id)
        record = AlertRecord(
            alert_id=alert_id,
            host_id="mairie-fs1",
            incident_id="i-" + alert_id,
            severity="critical",
            score=0.7,
            detected_at_s=time.time() - age_s,
            window_start_s=0.0,
            window_end_s=0.0,
            reasons=[],
            process=None,
            payload=event,
        )
        store.save_alert(record)
    store.close()
    log = tmp_path / "collector.log"
    with WebhookReceiver() as receiver:
        conf = tmp_path / "collector.toml"
        conf.write_text(
            f'listen = "127.0.0.1:0"\ndb = "{db}"\ninsecure = true\n'
            f'webhook = ["{receiver.url}"]\nwebhook_secret = "{SECRET}"\n'
        )
        for _ in range(2):  # the second start must not send it again
            proc, _addr = _start_collector(tmp_path, conf, log)
            try:
                end = time.monotonic() + 20
                while time.monotonic() < end and not _alert_records(receiver):
                    time.sleep(0.05)
                time.sleep(1.0)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=15) == 0
        records = _alert_records(receiver)
    assert [r["body"]["alert_id"] for r in records] == ["fresh"], log.read_text()
    assert records[0]["headers"]["Webhook-Id"] == "msg_fresh"
    assert verify(SECRET, records[0]["headers"], records[0]["raw"])
    assert "1 stored alerts had not reached the webhook outbox" in log.read_text()


def test_webhook_test_command(tmp_path: Path) -> None:
    with WebhookReceiver() as ok:
        res = subprocess.run(
            [
                str(BIN / "tocsin"),
                "webhook",
                "test",
                "--webhook",
                ok.url,
                "--format",
                "slack",
                "--secret",
                SECRET,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        assert "delivered (HTTP 200" in res.stdout
        (rec,) = ok.records
        assert verify(SECRET, rec["headers"], rec["raw"])
        assert "webhook works" in rec["body"]["text"]
        conf = tmp_path / "c.toml"
        conf.write_text(
            f'[[webhooks]]\nurl = "{ok.url}"\nformat = "teams"\n'
            '[[webhooks]]\nurl = "http://127.0.0.1:9/nothing"\nname = "dead"\n'
        )
        res = subprocess.run(
            [str(BIN / "tocsin"), "webhook", "test", "--config", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 1
        assert "(teams, unsigned): delivered" in res.stdout and "dead (generic" in res.stdout
        assert "FAILED" in res.stdout
    res = subprocess.run(
        [str(BIN / "tocsin"), "webhook", "test", "--webhook", "http://x/", "--secret", "plain"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and res.stderr.startswith("tocsin: error: ")


# A trigger that refuses every outbox row, in each dialect.
_REFUSE = {
    "sqlite": "CREATE TRIGGER outbox_refuses BEFORE INSERT ON outbox"
    " BEGIN SELECT RAISE(ABORT, 'the outbox cannot take a row'); END",
    "postgresql": "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION 'the outbox cannot take a row'; END $$;"
    " CREATE TRIGGER outbox_refuses BEFORE INSERT ON outbox"
    " FOR EACH ROW EXECUTE FUNCTION refuse()",
}


def test_an_alert_and_its_webhook_rows_commit_together_or_not_at_all(db_location: str) -> None:
    """A failure writing the outbox row leaves no alert either; the window is judged again."""
    from fakeagent import encrypting
    from tocsin.collector.app import assemble
    from tocsin.collector.features import window_features
    from tocsin.collector.protocols import ThresholdScorer
    from tocsin.collector.store import StoredWindow

    storage = open_storage(db_location, [Destination("http://127.0.0.1:9/")])
    db, store, outbox = storage.db, storage.store, storage.outbox
    c = assemble(store, ThresholdScorer(), outbox, mode="dry-run")
    db.execute(_REFUSE[db.dialect])
    w = encrypting(1).window
    store.upsert_host("srv", hostname="srv", agent_version="", tripwire_mode="")
    store.add_windows("srv", "b1", [StoredWindow(1, 1.0, 2.0, w.SerializeToString())])

    async def go() -> None:
        with pytest.raises(Exception, match="the outbox cannot take a row"):
            await c.stage.judge_window("srv", "b1", w, window_features(w))
        # Neither the alert nor its row: the database holds no alert nobody is told of.
        assert store.list_alerts() == [] and outbox.depth() == 0
        assert [s.seq for _, s in store.unjudged("srv")] == [1]
        db.execute("DROP TRIGGER outbox_refuses" + (" ON outbox" if db.dialect != "sqlite" else ""))
        assert await c.stage.settle("srv") == 1  # judged again once the database takes it
        (alert,) = store.list_alerts()
        (row,) = outbox.rows()
        assert row["msg_id"] == f"msg_{alert.alert_id}" and row["status"] == "pending"
        assert store.unjudged("srv") == []

    asyncio.run(go())
    storage.close()
