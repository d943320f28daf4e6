"""`make demo` (tools/demo.py) prints a sign-in link to a console that shows the drill's incident.

The demo runs as a person runs it, at a terminal (a pseudo-terminal here, so it keeps the
console open until Enter); the link it prints is opened, signed in with, and the fleet and the
incident page are read back over HTTP on loopback.
"""

from __future__ import annotations

import http.client
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_ID = "demo-fileserver"


def _until_link(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[str, str]:
    """Everything the demo printed up to its sign-in link, and the link."""
    assert proc.stdout is not None
    out = b""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
            found = re.search(rb"(http://127\.0\.0\.1:\d+/login/[\w-]+)\n", out)
            if found:
                return out.decode(errors="replace"), found.group(1).decode()
    raise AssertionError(f"no sign-in link in the demo's output:\n{out.decode(errors='replace')}")


class _Http:
    def __init__(self, base: str) -> None:
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname or "", url.port or 80
        self.cookie = ""

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = urllib.parse.urlencode(form) if form is not None else None
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        for header in resp.headers.get_all("Set-Cookie") or []:
            if header.startswith("tocsin_session="):
                self.cookie = header.split(";", 1)[0]
        conn.close()
        return resp.status, text


def test_the_demo_prints_a_link_to_a_console_showing_its_incident() -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "demo.py")],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    os.close(slave)
    try:
        printed, link = _until_link(proc, 120)
        assert "demo passed" in printed
        url = urllib.parse.urlsplit(link)
        web = _Http(link)
        token = url.path.rsplit("/", 1)[1]
        status, page = web.request("GET", url.path)
        assert status == 200 and 'name="token"' in page
        assert web.request("POST", "/login", {"token": token})[0] == 303
        status, fleet = web.request("GET", "/")
        assert status == 200
        incident = re.search(rf'href="/hosts/{HOST_ID}".*?href="/incidents/([^"]+)"', fleet, re.S)
        assert incident, fleet
        status, page = web.request("GET", f"/incidents/{incident.group(1)}")
        assert status == 200 and f"Incident on {HOST_ID}" in page
        assert "critical" in page and "suspend" in page
    finally:
        os.write(master, b"\n")  # "Press Enter to end the demo"
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
    assert proc.returncode == 0
