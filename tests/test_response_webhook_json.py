"""The webhook JSON is a contract: recorded fixtures through a real collector, pinned.

A real ``tocsin-collector`` (``--respond enforce``, fleet guard at 1 host a
minute, an operator hook on critical alerts, ``--silent-after``) judges three
recorded fixtures replayed over gRPC (an attack, exfiltration staging, a benign
backup), recordings written here that raise every other kind of reason and
action (horizons, the tripwire with the agent's own text, canary, lost events,
blindness, staging with traffic, a drill, an SMB client blocked) and a fake
agent that answers every command; a real HTTP receiver records every body. The
fake agent's windows keep their times (``--max-clock-skew-s`` far off). What it received, with
only the values that change from run to run replaced (ids, wall-clock times,
how long a host was silent), must equal ``tests/fixtures/webhook-json/expected.json``
byte for byte, keys in order: receivers parse these bodies, so a refactor must
not change them. ``TOCSIN_RECORD_WEBHOOK_JSON=1`` writes the file afresh (review
the diff before committing it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from transport_procs import CollectorProc, free_port, replay, wait_for

from fakeagent import FakeAgent
from receiver import WebhookReceiver
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import message_to_line

FIXTURES = Path(__file__).with_name("fixtures")
EXPECTED = FIXTURES / "webhook-json" / "expected.json"
T0 = 1_700_000_000
_IDS = ("alert_id", "incident_id", "command_id")
_WALL = ("detected_at", "at", "last_seen")
# Replayed windows are re-dated to the time of the replay; the fake agent's are not.
_REDATED = ("window_start", "window_end")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def normalised(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its run-to-run values replaced by placeholders, keys kept in order."""
    out: dict[str, Any] = {}
    silence = body.get("event") in ("host_silent", "host_back")
    for key, value in body.items():
        if key in _IDS and value:
            value = "<id>"
        elif key in _WALL or (key in _REDATED and (silence or body["host_id"] != "pin-fake-agent")):
            assert _RFC3339.fullmatch(value), (key, value)
            value = "<time>"
        elif silence and key == "silent_for_s":
            value = "<s>"
        elif silence and key == "reasons":
            value = [re.sub(r":[0-9.]+s$", ":<s>s", r) for r in value]
        elif silence and key == "summary":
            value = re.sub(r"[0-9.]+ s\b", "<s> s", value)
        elif key == "score" and isinstance(value, float):
            value = round(value, 6)  # the last bits of a float sum are not the contract
        elif key == "detail" and body.get("action") == "hook":
            value = re.sub(r"\(\d+\.\d+ s\)", "(<s> s)", value)
        out[key] = value
    return out


def test_webhook_bodies_of_recorded_fixtures_are_unchanged(tmp_path: Path) -> None:
    hook_script = tmp_path / "hook.sh"
    hook_script.write_text("#!/bin/sh\ncat > /dev/null\n")
    hook_script.chmod(0o755)
    written = {
        name: _recording(tmp_path / f"{name}.jsonl", messages)
        for name, messages in (("evidence", _evidence()), ("drill", _drill()), ("smb", _smb()))
    }
    with WebhookReceiver() as hooks:
        config = tmp_path / "collector.toml"
        config.write_text(
            f'webhook = ["{hooks.url}"]\n'
            f'[[hooks]]\npath = "{hook_script}"\non = ["critical"]\nname = "pin"\n'
        )
        col = CollectorProc(
            tmp_path / "c.db",
            tmp_path / "c.log",
            f"127.0.0.1:{free_port()}",
            [
                "--insecure",
                "--respond",
                "enforce",
                "--fleet-guard",
                "1",
                "--silent-after",
                "1.5",
                "--max-clock-skew-s",
                "1e10",
                "--config",
                str(config),
            ],
        )
        col.start()
        try:
            # One at a time, each settled, so that which isolation the fleet guard
            # holds (the first is admitted, later ones within the minute are held)
            # does not depend on timing.
            _replay(col.listen, FIXTURES / "encrypt-inplace.jsonl", hooks)
            _replay(col.listen, written["evidence"], hooks)
            agent = FakeAgent(int(col.listen.rpartition(":")[2]), "pin-fake-agent")
            runner = threading.Thread(target=asyncio.run, args=(agent.run(),), daemon=True)
            runner.start()
            try:
                wait_for("the fake agent's report", lambda: _reports(hooks, "pin-fake-agent"), 30)
            finally:
                agent.stop.set()  # leaves without a goodbye: host_silent follows
                runner.join(10)
            wait_for("host_silent", lambda: _events(hooks, "host_silent"), 20)
            _settled(hooks)
            for recording in (written["drill"], written["smb"]):
                _replay(col.listen, recording, hooks)
            for name in ("exfil-stage", "backup-targz"):
                _replay(col.listen, FIXTURES / f"{name}.jsonl", hooks)
        finally:
            col.stop()
    got = sorted(json.dumps(normalised(b), ensure_ascii=False) for b in hooks.bodies)
    text = "[\n" + ",\n".join(got) + "\n]\n"
    if os.environ.get("TOCSIN_RECORD_WEBHOOK_JSON"):
        EXPECTED.parent.mkdir(exist_ok=True)
        EXPECTED.write_text(text, encoding="utf-8")
    want = EXPECTED.read_text(encoding="utf-8").splitlines()
    assert text.splitlines() == want
    kinds = {json.loads(line.rstrip(","))["event"] for line in want[1:-1]}
    assert kinds >= {"alert", "action", "fleet_guard", "host_silent"}


def _recording(path: Path, messages: list[pb.AgentMessage]) -> Path:
    path.write_text("".join(message_to_line(m) + "\n" for m in messages))
    return path


def _replay(listen: str, recording: Path, hooks: WebhookReceiver) -> None:
    """Replay ``recording`` as host ``pin-<its name>``; return once its bodies settled."""
    replay(recording, listen, f"pin-{recording.stem}", timeout_s=120)
    wait_for(f"an alert of {recording.stem}", lambda: _alerts(hooks, f"pin-{recording.stem}"))
    _settled(hooks)


def _window(seq: int, pid: int = 500, **counts: Any) -> pb.AgentMessage:
    w = pb.Window(seq=seq, **counts)
    w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
    w.top_writers.add(pid=pid + seq % 2, name="w", exe="/usr/bin/w", tree_root_pid=pid)
    return pb.AgentMessage(window=w)


def _hello(host_id: str) -> pb.AgentMessage:
    return pb.AgentMessage(hello=pb.Hello(host_id=host_id, boot_id="b1"))


def _evidence() -> list[pb.AgentMessage]:
    """Windows that raise the reasons the fixtures do not."""
    out = [_hello("pin-evidence")]
    # Counted kinds below the one-window bar that add up over the horizons: a warning.
    for seq in range(1, 4):
        out.append(_window(seq, files_type_destroyed=2))
    # The agent's tripwire (its text has colons), a canary, lost events, blindness:
    # the warning escalates.
    out.append(
        _window(
            4,
            files_type_destroyed=1,
            tripwire_fired=True,
            tripwire_reason="ruined:12 files by tree 500 (type_destroyed:10, encoded_random:2)",
            canary_touches=1,
            events_dropped=40,
            queue_overflows=2,
            watch_limit_hits=3,
        )
    )
    # Staging with the traffic that goes with it, after the incident went quiet.
    out.append(
        _window(
            400,
            files_read=200,
            read_dirs=20,
            archives_created=2,
            net_bytes_out=25_000_000,
        )
    )
    return out


def _drill() -> list[pb.AgentMessage]:
    """``tocsin-agent drill``: suspended, never isolated, said so."""
    return [_hello("pin-drill"), _window(1, pid=700, canary_touches=1, drill=True)]


def _smb() -> list[pb.AgentMessage]:
    """Encryption through a Samba worker: the workstation is blocked, not the server."""
    msg = _window(
        1,
        pid=800,
        files_probed=20,
        files_type_destroyed=20,
        top_new_extension=".crypt",
        top_new_extension_dirs=4,
        repeated_name="RESTORE:FILES.txt",
        repeated_name_dirs=4,
    )
    writer = msg.window.top_writers[0]
    writer.name, writer.exe = "smbd", "/usr/sbin/smbd"
    writer.smb_client_addr, writer.smb_user = "192.0.2.41", "MAIRIE\\accueil"
    return [_hello("pin-smb"), msg]


def _events(hooks: WebhookReceiver, kind: str) -> list[dict[str, Any]]:
    return [b for b in hooks.bodies if b.get("event") == kind]


def _alerts(hooks: WebhookReceiver, host_id: str) -> list[dict[str, Any]]:
    return [b for b in _events(hooks, "alert") if b.get("host_id") == host_id]


def _reports(hooks: WebhookReceiver, host_id: str) -> list[dict[str, Any]]:
    """The agent's reports on commands (not the hooks' runs)."""
    actions = _events(hooks, "action")
    return [b for b in actions if b.get("host_id") == host_id and b.get("action") != "hook"]


def _settled(hooks: WebhookReceiver, quiet_s: float = 1.5) -> None:
    """Wait until no body has arrived for ``quiet_s`` (deliveries are asynchronous)."""
    seen, since = len(hooks.bodies), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        if len(hooks.bodies) != seen:
            seen, since = len(hooks.bodies), time.monotonic()
