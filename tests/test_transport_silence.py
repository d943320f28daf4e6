"""Silence is an alarm: a real agent killed with SIGKILL, a real HTTP receiver."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from transport_procs import BIN, CollectorProc, free_port, wait_for

from receiver import WebhookReceiver


def test_killed_agent_is_silent_then_back_and_a_goodbye_is_not(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    with WebhookReceiver() as hooks:
        col = CollectorProc(
            tmp_path / "c.db",
            tmp_path / "c.log",
            f"127.0.0.1:{free_port()}",
            ["--insecure", "--silent-after", "2", "--webhook", hooks.url],
        )
        col.start()

        def agent(host: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [
                    str(BIN / "tocsin-agent"),
                    "--collector",
                    col.listen,
                    "--watch",
                    str(share),
                    "--host-id",
                    host,
                    "--state-dir",
                    str(tmp_path / host),
                    "--insecure",
                    "--tripwire",
                    "off",
                ],
                stdout=(tmp_path / f"{host}.log").open("ab"),
                stderr=subprocess.STDOUT,
            )

        def events(kind: str) -> list[dict[str, object]]:
            return [b for b in hooks.bodies if b.get("event") == kind]

        try:
            victim, polite = agent("fs-victim"), agent("fs-polite")
            wait_for("both agents connected", lambda: col.text().count(" connected (") >= 2)
            polite.send_signal(signal.SIGTERM)  # Goodbye: no alarm
            assert polite.wait(20) == 0
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed_at = time.monotonic()
            (silent,) = wait_for("host_silent", lambda: events("host_silent"), 20)
            assert silent["host_id"] == "fs-victim" and silent["severity"] == "warning"
            # Silent for 2 s counted from its last message, up to a window (1 s) before
            # the kill: never at once.
            assert float(silent["silent_for_s"]) >= 2.0, silent
            assert time.monotonic() - killed_at >= 0.8
            for key in ("alert_id", "detected_at", "reasons", "last_seen", "silent_for_s"):
                assert key in silent, key
            victim = agent("fs-victim")  # comes back (same spool, new boot)
            (back,) = wait_for("host_back", lambda: events("host_back"), 20)
            assert back["host_id"] == "fs-victim"
            time.sleep(3)  # the polite host stays unreported
            assert {e["host_id"] for e in events("host_silent")} == {"fs-victim"}
            assert "host fs-victim silent for" in col.text()
        finally:
            for p in (victim, polite):
                if p.poll() is None:
                    p.kill()
            col.stop()
