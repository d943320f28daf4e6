"""The console over real HTTPS from a real collector: no session, no data; links once; CSRF; CSP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from console_harness import FIXTURES, ConsoleClient, ConsoleCollector, edited
from tocsin.collector.console.auth import LoginLinks, Sessions

HOST = "mairie-fs1"
EVIL = "fixture-evil"
TREE = "mairie-fs3"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleCollector]:
    with ConsoleCollector(tmp_path_factory.mktemp("console"), hosts=(HOST, EVIL, TREE)) as c:
        c.replay(FIXTURES / "encrypt-inplace.jsonl", HOST)
        yield c


PAGES = [
    "/",
    "/?sort=state",
    "/alerts",
    "/actions",
    "/audit?page=2",
    f"/hosts/{HOST}",
    f"/hosts/{HOST}/confirm?what=isolate",
    "/incidents/x",
    "/events",
]
CHANGES = [f"/hosts/{HOST}/act", "/lang", "/logout"]


def _rows(page: str) -> list[tuple[str, ...]]:
    """The cells of each table row of a page, as text."""
    return [
        tuple(
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)
        )
        for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)
    ]


def test_nothing_answers_without_a_session(console: ConsoleCollector) -> None:
    actions_before = console.operator("actions", "--json").stdout
    b = ConsoleClient(console)
    for path in PAGES:
        status, page = b.request("GET", path)
        assert status == 401, path
        assert HOST not in page and "tocsin console login" in page
    b.cookies["tocsin_session"] = "forged-session-id"
    assert b.request("GET", "/")[0] == 401
    for path in CHANGES:
        form = {"what": "isolate", "lang": "fr", "csrf": "x"}
        status, page = b.request("POST", path, form)
        assert status == 401 and "tocsin console login" in page, path
        assert "tocsin_lang" not in b.cookies
    assert console.operator("actions", "--json").stdout == actions_before


def test_only_an_operator_certificate_gets_a_link(console: ConsoleCollector) -> None:
    """An agent's certificate (the town's CA, but no operator unit) is refused a sign-in link."""
    res = console.operator("console", "login", "--json", cert=HOST)
    assert res.returncode != 0 and "not an operator's" in res.stderr, res
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "/login/" not in res.stdout


def test_the_console_speaks_https_with_the_collectors_certificate(
    console: ConsoleCollector,
) -> None:
    import socket
    import ssl

    client = ConsoleClient(console)
    assert console.base_url.startswith("https://")
    with (
        socket.create_connection((client.host, client.port), timeout=10) as raw,
        client.ctx.wrap_socket(raw, server_hostname=client.host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der == ssl.PEM_cert_to_DER_cert((console.pki / "collector.pem").read_text())


def test_a_link_works_once_and_gives_a_strict_cookie(console: ConsoleCollector) -> None:
    b = ConsoleClient(console)
    token = b.sign_in(console)
    (cookie,) = [c for c in b.set_cookie if c.startswith("tocsin_session=")]
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "max-age=43200", "path=/"} <= attrs
    status, page = b.request("GET", "/")
    assert status == 200 and HOST in page
    again = ConsoleClient(console)
    status, page = again.request("POST", "/login", {"token": token})
    assert status == 401 and "already used or has expired" in page
    assert again.request("GET", "/")[0] == 401


def test_links_last_five_minutes_and_sessions_twelve_hours() -> None:
    now = [0.0]
    links = LoginLinks(clock=lambda: now[0])
    early, late = links.issue("alice"), links.issue("bob")
    now[0] = 299.0
    assert links.redeem(early) == "alice"
    now[0] = 301.0
    assert links.redeem(late) is None
    sessions = Sessions(clock=lambda: now[0])
    s = sessions.open("alice")
    assert s.operator == "alice" and s.max_age_s == 12 * 3600
    now[0] += 12 * 3600 - 1
    assert sessions.get(s.session_id) == s
    now[0] += 2
    assert sessions.get(s.session_id) is None


def test_every_change_needs_the_csrf_token_and_is_audited(console: ConsoleCollector) -> None:
    b = ConsoleClient(console)
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
    done = {row[1:3] for row in _rows(audit)}
    assert ("operator:alice", "console sign-in") in done, done
    assert ("operator:alice", "release requested") in done, done


def test_security_headers_on_every_response(console: ConsoleCollector) -> None:
    b = ConsoleClient(console)
    b.request("GET", "/")  # the 401 page
    responses = [b.last_headers]
    b.sign_in(console)
    for path in ("/", f"/hosts/{HOST}", "/static/console.js"):
        b.request("GET", path)
        responses.append(b.last_headers)
    for headers in responses:
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "style-src 'self'" in csp and "form-action 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
        assert "'unsafe-eval'" not in csp and "*" not in csp
        assert headers["x-frame-options"] == "DENY"


def test_attacker_strings_render_inert(console: ConsoleCollector, tmp_path: Path) -> None:
    """Names, paths, host name and version chosen by the attacker come back escaped, bidi too."""
    evil = "<script>alert(1)</script>\u202egnp.exe"
    shown = "&lt;script&gt;alert(1)&lt;/script&gt;\\u202egnp.exe"

    def poison(msg: Any) -> None:
        if msg.HasField("hello"):
            msg.hello.hostname = evil
            msg.hello.agent_version = evil
        if msg.HasField("window"):
            for writer in msg.window.top_writers:
                writer.name = evil
                writer.exe = "/tmp/" + evil
            msg.window.example_paths[:] = ["/srv/partage/" + evil + ".docx"]

    src = edited(FIXTURES / "encrypt-inplace.jsonl", console.tmp / "evil.jsonl", poison)
    console.replay(src, EVIL)
    b = ConsoleClient(console)
    b.sign_in(console)
    incident = console.incident_of(b, EVIL)
    for path in ("/", f"/hosts/{EVIL}", f"/incidents/{incident}", "/alerts"):
        _, page = b.request("GET", path)
        assert "<script>alert(1)" not in page and "\u202e" not in page, path
    _, fleet = b.request("GET", "/")
    assert fleet.count(shown) == 2  # host name and agent version
    _, page = b.request("GET", f"/incidents/{incident}")
    assert shown in page
    assert f"/srv/partage/{shown}.docx" in page


def test_an_incident_shows_the_process_tree(console: ConsoleCollector) -> None:
    """Eight forked workers of one launcher: one tree, its root first, the workers under it."""
    console.replay(FIXTURES / "encrypt-workers.jsonl", TREE)
    b = ConsoleClient(console)
    b.sign_in(console)
    _, page = b.request("GET", f"/incidents/{console.incident_of(b, TREE)}")
    rows = re.findall(r'<tr class="depth-(\d)">\s*<td[^>]*>([^<]*)', page)
    assert [d for d, _ in rows] == ["0"] + ["1"] * 8, rows
    assert all("child of 7129" in text for _, text in rows[1:]), rows


def test_the_language_switch_never_sends_the_browser_elsewhere(console: ConsoleCollector) -> None:
    b = ConsoleClient(console)
    b.sign_in(console)
    for back in ("//evil.example/", "/\\evil.example/", "https://evil.example/", "/\r\nX: y"):
        csrf = b.csrf()
        status, _ = b.request("POST", "/lang", {"lang": "fr", "csrf": csrf, "back": back})
        assert status == 303 and b.last_headers["location"] == "/", (back, b.last_headers)
    csrf = b.csrf()
    b.request("POST", "/lang", {"lang": "en", "csrf": csrf, "back": "/alerts"})
    assert b.last_headers["location"] == "/alerts"
