"""A real collector process with its console on, certificates from ``tocsin certs``.

``ConsoleCollector`` starts ``tocsin-collector`` with mTLS for agents and
operators and the console on HTTPS (the collector's own certificate), replays
recorded fixtures into it over mTLS, and asks ``tocsin console login`` for
sign-in links as operator ``alice``. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).with_name("fixtures")


def _tocsin(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tocsin"), *args], capture_output=True, text=True, timeout=timeout
    )


class ConsoleCollector:
    def __init__(self, tmp: Path, hosts: tuple[str, ...] = (), language: str = "en") -> None:
        self.tmp = tmp
        self.pki = tmp / "pki"
        assert _tocsin("certs", "init", "--dir", str(self.pki)).returncode == 0
        for args in (
            ("collector", "--collector", "--san", "127.0.0.1"),
            ("alice", "--operator"),
            *((h,) for h in hosts),
        ):
            res = _tocsin("certs", "issue", *args, "--dir", str(self.pki))
            assert res.returncode == 0, res.stderr
        self.log = tmp / "collector.log"
        conf = tmp / "collector.toml"
        conf.write_text(f'console = "127.0.0.1:0"\nlanguage = "{language}"\n', encoding="utf-8")
        self.proc = subprocess.Popen(
            [
                str(BIN / "tocsin-collector"),
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(tmp / "c.db"),
                "--respond",
                "enforce",
                "--config",
                str(conf),
                "--tls-ca",
                str(self.pki / "ca.pem"),
                "--tls-cert",
                str(self.pki / "collector.pem"),
                "--tls-key",
                str(self.pki / "collector.key"),
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        end = time.monotonic() + 30
        text = ""
        while time.monotonic() < end and self.proc.poll() is None:
            text = self.log.read_text(errors="replace")
            if "listening on" in text and "console on" in text:
                break
            time.sleep(0.05)
        grpc_addr = re.search(r"listening on (\S+:\d+)", text)
        console = re.search(r"console on (\S+)/", text)
        assert grpc_addr and console, text
        self.addr = grpc_addr.group(1)
        self.base_url = console.group(1)

    def tls(self, name: str) -> list[str]:
        return [
            "--tls-ca",
            str(self.pki / "ca.pem"),
            "--tls-cert",
            str(self.pki / f"{name}.pem"),
            "--tls-key",
            str(self.pki / f"{name}.key"),
        ]

    def replay(self, recording: Path, host: str) -> None:
        """Stream ``recording`` as ``host``, its windows moved to end a second ago (a live host)."""
        from tocsin.v1.recording import Recorder, read_recording

        messages = list(read_recording(recording))
        last = max(m.window.end.ToNanoseconds() for m in messages if m.HasField("window"))
        shift_ns = time.time_ns() - 1_000_000_000 - last
        moved = self.tmp / f"{host}-{recording.name}"
        rec = Recorder(moved)
        for msg in messages:
            if msg.HasField("window"):
                for stamp in (msg.window.start, msg.window.end):
                    stamp.FromNanoseconds(stamp.ToNanoseconds() + shift_ns)
            rec.write(msg)
        rec.close()
        res = _tocsin(
            "replay",
            str(moved),
            "--collector",
            self.addr,
            "--speed",
            "0",
            "--host-id",
            host,
            *self.tls(host),
        )
        assert res.returncode == 0, res.stderr

    def link(self) -> str:
        res = _tocsin("console", "login", "--json", "--collector", self.addr, *self.tls("alice"))
        assert res.returncode == 0, res.stderr
        url = str(json.loads(res.stdout)["url"])
        assert url.startswith(self.base_url + "/login/"), url
        return url

    def operator(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _tocsin(*args, "--collector", self.addr, *self.tls("alice"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
