"""A real collector process with its console on, certificates from ``tocsin certs``.

``ConsoleCollector`` starts ``tocsin-collector`` with mTLS for agents and
operators and the console on HTTPS (the collector's own certificate), replays
recorded fixtures into it over mTLS, and asks ``tocsin console login`` for
sign-in links as operator ``alice``. ``ConsoleClient`` is just enough of a
browser for the HTTP-level tests: TLS checked against the town's CA, one
cookie jar. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).with_name("fixtures")


def _tocsin(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tocsin"), *args], capture_output=True, text=True, timeout=timeout
    )


def edited(recording: Path, out: Path, edit: Callable[[Any], None]) -> Path:
    """A copy of ``recording`` at ``out`` with ``edit`` applied to each of its messages."""
    from tocsin.v1.recording import Recorder, read_recording

    rec = Recorder(out)
    for msg in read_recording(recording):
        edit(msg)
        rec.write(msg)
    rec.close()
    return out


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

    def replay(self, recording: Path, host: str, speed: float = 0) -> None:
        """Stream ``recording`` as ``host`` (``tocsin replay`` dates its first window now; at
        speed 0 the later ones land ahead of the clock by the recording's length)."""
        res = _tocsin(
            "replay",
            str(recording),
            "--collector",
            self.addr,
            "--speed",
            str(speed),
            "--host-id",
            host,
            *self.tls(host),
        )
        assert res.returncode == 0, res.stderr

    def incident_of(self, client: ConsoleClient, host: str) -> str:
        """The id of ``host``'s open incident, as the fleet page links it."""
        _, fleet = client.request("GET", "/")
        found = re.search(rf'href="/hosts/{host}".*?href="/incidents/([^"]+)"', fleet, re.S)
        assert found, fleet
        return found.group(1)

    def link(self) -> str:
        res = _tocsin("console", "login", "--json", "--collector", self.addr, *self.tls("alice"))
        assert res.returncode == 0, res.stderr
        url = str(json.loads(res.stdout)["url"])
        assert url.startswith(self.base_url + "/login/"), url
        return url

    def operator(self, *args: str, cert: str = "alice") -> subprocess.CompletedProcess[str]:
        """``tocsin ARGS`` against this collector with ``cert``'s certificate (alice's)."""
        return _tocsin(*args, "--collector", self.addr, *self.tls(cert))

    def __enter__(self) -> ConsoleCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ConsoleClient:
    """Just enough of a browser: TLS checked against the town's CA, one cookie jar."""

    def __init__(self, c: ConsoleCollector) -> None:
        url = urllib.parse.urlsplit(c.base_url)
        self.host, self.port = url.hostname or "", url.port or 443
        self.ctx = ssl.create_default_context(cafile=str(c.pki / "ca.pem"))
        self.cookies: dict[str, str] = {}
        self.last_headers: dict[str, str] = {}
        self.set_cookie: list[str] = []

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, str]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=20)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        self.last_headers = {k.lower(): v for k, v in resp.getheaders()}
        self.set_cookie = resp.headers.get_all("Set-Cookie") or []
        for header in self.set_cookie:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        conn.close()
        return resp.status, text

    def sign_in(self, c: ConsoleCollector) -> str:
        token = c.link().rsplit("/", 1)[1]
        status, page = self.request("GET", f"/login/{token}")
        assert status == 200 and 'name="token"' in page
        status, _ = self.request("POST", "/login", {"token": token})
        assert status == 303, status
        return token

    def csrf(self, path: str = "/") -> str:
        _, page = self.request("GET", path)
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page
        return found.group(1)
