"""The console over real HTTPS from a real collector: no session, no data; links once; CSRF; CSP."""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from console_harness import FIXTURES, ConsoleCollector
from tocsin.collector.console.auth import LoginLinks, Sessions

HOST = "mairie-fs1"
EVIL = "fixture-evil"
TREE = "mairie-fs3"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleCollector]:
    c = ConsoleCollector(tmp_path_factory.mktemp("console"), hosts=(HOST, EVIL, TREE))
    try:
        c.replay(FIXTURES / "encrypt-inplace.jsonl", HOST)
        yield c
    finally:
        c.stop()


class Browser:
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


PAGES = ["/", "/alerts", "/actions", "/audit", f"/hosts/{HOST}", "/incidents/x", "/events"]


def test_nothing_answers_without_a_session(console: ConsoleCollector) -> None:
    b = Browser(console)
    for path in PAGES:
        status, page = b.request("GET", path)
        assert status == 401, path
        assert HOST not in page and "tocsin console login" in page
    b.cookies["tocsin_session"] = "forged-session-id"
    assert b.request("GET", "/")[0] == 401
    status, _ = b.request("POST", f"/hosts/{HOST}/act", {"what": "isolate", "csrf": "x"})
    assert status == 401


def test_a_link_works_once_and_gives_a_strict_cookie(console: ConsoleCollector) -> None:
    b = Browser(console)
    token = b.sign_in(console)
    (cookie,) = [c for c in b.set_cookie if c.startswith("tocsin_session=")]
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "max-age=43200", "path=/"} <= attrs
    status, page = b.request("GET", "/")
    assert status == 200 and HOST in page
    again = Browser(console)
    status, page = again.request("POST", "/login", {"token": token})
    assert status == 401 and "already used or has expired" in page
    assert again.request("GET", "/")[0] == 401


def test_links_expire_and_sessions_end() -> None:
    now = [0.0]
    links = LoginLinks(clock=lambda: now[0])
    token = links.issue("alice")
    now[0] = 301.0
    assert links.redeem(token) is None
    sessions = Sessions(clock=lambda: now[0])
    s = sessions.open("alice")
    assert sessions.get(s.session_id) == s
    now[0] += 12 * 3600 + 1
    assert sessions.get(s.session_id) is None


def test_every_change_needs_the_csrf_token_and_is_audited(console: ConsoleCollector) -> None:
    b = Browser(console)
    b.sign_in(console)
    for form in ({"what": "release"}, {"what": "release", "csrf": "wrong"}):
        status, _ = b.request("POST", f"/hosts/{HOST}/act", form)
        assert status == 403
    assert b.request("POST", "/lang", {"lang": "fr"})[0] == 403
    csrf = b.csrf(f"/hosts/{HOST}/confirm?what=release")
    status, page = b.request("POST", f"/hosts/{HOST}/act", {"what": "release", "csrf": csrf})
    assert status == 200 and "queued" in page
    actions = console.operator("actions", "--json")
    assert actions.returncode == 0
    assert '"requested_by": "operator:alice"' in actions.stdout
    status, audit = b.request("GET", "/audit")
    assert "console sign-in" in audit and "operator:alice" in audit


def test_security_headers_on_every_response(console: ConsoleCollector) -> None:
    b = Browser(console)
    for path in ("/", "/static/console.css"):
        b.request("GET", path)
        csp = b.last_headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
        assert b.last_headers["x-frame-options"] == "DENY"


def test_attacker_strings_render_inert(console: ConsoleCollector, tmp_path: Path) -> None:
    """A process name and paths chosen by the attacker come back escaped, bidi included."""
    from tocsin.v1.recording import Recorder, read_recording

    evil = "<script>alert(1)</script>\u202egnp.exe"
    src = console.tmp / "evil.jsonl"
    rec = Recorder(src)
    for msg in read_recording(FIXTURES / "encrypt-inplace.jsonl"):
        if msg.HasField("window"):
            for writer in msg.window.top_writers:
                writer.name = evil
                writer.exe = "/tmp/" + evil
            msg.window.example_paths[:] = ["/srv/partage/" + evil + ".docx"]
        rec.write(msg)
    rec.close()
    console.replay(src, EVIL)
    b = Browser(console)
    b.sign_in(console)
    _, fleet = b.request("GET", "/")
    incident = re.search(rf'href="/hosts/{EVIL}".*?href="/incidents/([^"]+)"', fleet, re.S)
    assert incident, fleet
    _, page = b.request("GET", f"/incidents/{incident.group(1)}")
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\u202egnp.exe" in page
    assert "\u202e" not in page


def test_an_incident_shows_the_process_tree(console: ConsoleCollector) -> None:
    """Eight forked workers of one launcher: one tree, its root first, the workers under it."""
    console.replay(FIXTURES / "encrypt-workers.jsonl", TREE)
    b = Browser(console)
    b.sign_in(console)
    _, fleet = b.request("GET", "/")
    incident = re.search(rf'href="/hosts/{TREE}".*?href="/incidents/([^"]+)"', fleet, re.S)
    assert incident, fleet
    _, page = b.request("GET", f"/incidents/{incident.group(1)}")
    rows = re.findall(r'<tr class="depth-(\d)">\s*<td[^>]*>([^<]*)', page)
    assert [d for d, _ in rows] == ["0"] + ["1"] * 8, rows
    assert all("child of 7129" in text for _, text in rows[1:]), rows


def test_the_language_switch_never_sends_the_browser_elsewhere(console: ConsoleCollector) -> None:
    b = Browser(console)
    b.sign_in(console)
    for back in ("//evil.example/", "/\\evil.example/", "https://evil.example/", "/\r\nX: y"):
        csrf = b.csrf()
        status, _ = b.request("POST", "/lang", {"lang": "fr", "csrf": csrf, "back": back})
        assert status == 303 and b.last_headers["location"] == "/", (back, b.last_headers)
    csrf = b.csrf()
    b.request("POST", "/lang", {"lang": "en", "csrf": csrf, "back": "/alerts"})
    assert b.last_headers["location"] == "/alerts"
