"""The console's HTTP side: aiohttp handlers, sessions, CSRF, security headers, live updates.

Contract of ``console_app(backend, links, sessions, config)``:

- Without a valid session cookie every page and API answers 401 with a page
  that says how to sign in, and nothing else. ``GET /login/{token}`` shows a
  button; only ``POST /login`` with the token redeems it (a chat client
  fetching the link for a preview does not use it up) and sets the cookie
  ``tocsin_session`` (HttpOnly, Secure, SameSite=Strict, 12 h).
- Every POST made in a session must carry the session's ``csrf`` form field
  (403 otherwise). Actions (release, resume, kill, isolate) go through
  ``HostActions`` with ``operator:<name>`` as the requester, as from the CLI;
  sign-in and sign-out are written to the audit too.
- Every response carries a strict Content-Security-Policy (no inline script
  or style, nothing from another origin), ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``.
- ``GET /events`` is a server-sent-event stream: one ``change`` event when a
  new alert or action arrives (polled from the store each ``poll_s``), a
  comment line every 15 s; at most ``max_streams`` at once.
- Host ids and incident ids in paths are checked against their wire formats
  (404 otherwise); every string from agents is escaped by the templates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

from tocsin.collector.console.auth import LoginLinks, Session, Sessions
from tocsin.collector.console.backend import ACTS, ConsoleBackend
from tocsin.collector.console.chart import Bar, Labels, Mark, Point, hourly, timeline
from tocsin.collector.explain import N_, evidence_sentences
from tocsin.collector.grpcconf import parse_hostport
from tocsin.collector.i18n import LANGUAGES, Language
from tocsin.collector.operations import UnknownHost
from tocsin.v1.errors import ConfigError
from tocsin.v1.text import printable

log = logging.getLogger("tocsin.collector.console")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "tocsin_session"
LANG_COOKIE = "tocsin_lang"
HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
INCIDENT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = ("/login", "/static/")
# Action kinds as the chart labels them (the tables show the machine words).
ACTION_WORDS = {
    "suspend": N_("suspend"),
    "resume": N_("resume"),
    "kill": N_("kill"),
    "isolate": N_("isolate"),
    "release": N_("release"),
    "block_client": N_("block workstation"),
    "unblock_client": N_("unblock workstation"),
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Orders agent versions as people read them: 0.9.0 before 0.10.0 (numbers as numbers)."""
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+]", version))


@dataclass(frozen=True)
class ConsoleConfig:
    language: str = "en"
    secure_cookie: bool = True
    poll_s: float = 1.0
    max_streams: int = 32


# Bidirectional overrides and other invisible controls: shown as \uXXXX, never applied.
def inert(value: Any) -> Any:
    """Every string a template prints, with invisible and direction-changing characters shown
    as escapes (our own markup, such as the charts, is left alone)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, keep="\t\n")  # tocsin.v1.text: one sanitiser for every output
    return value


class _Pages:
    """One Jinja2 environment per language, gettext installed, autoescaping on."""

    def __init__(self) -> None:
        self.languages = {code: Language.load(code) for code in LANGUAGES}
        self.envs: dict[str, jinja2.Environment] = {}
        for code, lang in self.languages.items():
            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(HERE / "templates"),
                autoescape=True,
                extensions=["jinja2.ext.i18n"],
                undefined=jinja2.StrictUndefined,
                finalize=inert,
            )
            env.install_gettext_translations(lang.translations, newstyle=True)  # type: ignore[attr-defined]
            env.filters["when"] = lang.when
            env.filters["number"] = lang.number
            self.envs[code] = env

    def render(self, code: str, name: str, **ctx: Any) -> str:
        return self.envs[code].get_template(name).render(**ctx)


def console_app(
    backend: ConsoleBackend,
    links: LoginLinks,
    sessions: Sessions,
    config: ConsoleConfig | None = None,
) -> web.Application:
    cfg = config or ConsoleConfig()
    pages = _Pages()
    streams: set[web.StreamResponse] = set()

    def language(request: web.Request) -> Language:
        code = request.cookies.get(LANG_COOKIE, cfg.language)
        return pages.languages.get(code, pages.languages[cfg.language])

    def page(request: web.Request, name: str, status: int = 200, **ctx: Any) -> web.Response:
        lang = language(request)
        session: Session | None = request.get("session")
        body = pages.render(
            lang.code, name, session=session, lang=lang.code, path=request.path, **ctx
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        session = sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        request["session"] = session
        public = request.path.startswith(PUBLIC)
        if session is None and not public:
            response: web.StreamResponse = page(request, "signed_out.html", status=401)
        elif request.method == "POST" and session is not None and request.path != "/login":
            form = await request.post()
            if not Sessions.check_csrf(session, str(form.get("csrf", ""))):
                response = web.Response(status=403, text="CSRF token missing or wrong")
            else:
                response = await handler(request)
        else:
            response = await handler(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def who(request: web.Request) -> str:
        session: Session = request["session"]
        return f"operator:{session.operator}"

    async def login_page(request: web.Request) -> web.Response:
        return page(request, "login.html", token=request.match_info["token"])

    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        operator = links.redeem(str(form.get("token", "")))
        if operator is None:
            return page(request, "signed_out.html", status=401, expired=True)
        session = sessions.open(operator)
        backend.store.audit(f"operator:{operator}", "console sign-in", request.remote or "")
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            max_age=session.max_age_s,
            httponly=True,
            secure=cfg.secure_cookie,
            samesite="Strict",
            path="/",
        )
        return response

    async def logout(request: web.Request) -> web.StreamResponse:
        session: Session = request["session"]
        sessions.close(session.session_id)
        backend.store.audit(who(request), "console sign-out", "")
        response = web.HTTPSeeOther("/login/-")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def set_language(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        code = str(form.get("lang", ""))
        back = str(form.get("back", "/"))
        # Only a path of this console: browsers read "/\\host" like "//host" (another site).
        if not back.startswith("/") or back[1:2] in ("/", "\\") or any(c < " " for c in back):
            back = "/"
        response = web.HTTPSeeOther(back)
        if code in LANGUAGES:
            response.set_cookie(
                LANG_COOKIE, code, max_age=365 * 86400, secure=cfg.secure_cookie, samesite="Strict"
            )
        return response

    async def fleet(request: web.Request) -> web.Response:
        rows = backend.fleet()
        query = request.query.get("q", "").strip().lower()
        if query:
            rows = [r for r in rows if query in r.host_id.lower() or query in r.hostname.lower()]
        sort = request.query.get("sort", "host")
        keys: dict[str, Callable[[Any], Any]] = {
            "host": lambda r: r.host_id,
            "seen": lambda r: -r.last_seen_s,
            "state": lambda r: (not r.open_incident, not r.isolated, r.connected, r.host_id),
            "version": lambda r: (version_key(r.agent_version), r.host_id),
        }
        rows.sort(key=keys.get(sort, keys["host"]))
        return page(request, "fleet.html", rows=rows, q=query, sort=sort)

    def labels(request: web.Request) -> Labels:
        _ = language(request).gettext
        return Labels(
            written=_("files written"),
            destroyed=_("files destroyed"),
            score=_("anomaly score"),
            threshold=_("threshold"),
            empty=_("no windows stored for this period"),
        )

    async def incident(request: web.Request) -> web.Response:
        incident_id = request.match_info["incident_id"]
        view = backend.incident(incident_id) if INCIDENT_RE.fullmatch(incident_id) else None
        if view is None:
            raise web.HTTPNotFound()
        lang = language(request)
        marks = [
            Mark(a.requested_at_s, lang.gettext(ACTION_WORDS.get(a.kind, a.kind)))
            for a in view.actions
            if a.requested_at_s
        ]
        points = [Point(p.t_s, p.written, p.destroyed, p.score) for p in view.points]
        chart = timeline(points, backend.threshold, marks, labels(request))
        sentences = evidence_sentences(view.reasons, lang.gettext)
        return page(request, "incident.html", v=view, chart=chart, sentences=sentences, acts=ACTS)

    async def host(request: web.Request) -> web.Response:
        host_id = request.match_info["host_id"]
        view = backend.host(host_id) if HOST_RE.fullmatch(host_id) else None
        if view is None:
            raise web.HTTPNotFound()
        lang = language(request)
        bars = [Bar(r.hour_s, r.tally.files_written, r.tally.files_destroyed) for r in view.rollups]
        marks = [Mark(a.detected_at_s, lang.gettext(a.severity)) for a in view.alerts]
        chart = hourly(bars, marks, labels(request), backend.now())
        return page(request, "host.html", v=view, chart=chart, acts=ACTS)

    async def confirm(request: web.Request) -> web.Response:
        host_id, what = request.match_info["host_id"], request.query.get("what", "")
        row = backend.host_row(host_id) if HOST_RE.fullmatch(host_id) else None
        if row is None or what not in ACTS:
            raise web.HTTPNotFound()
        return page(request, "confirm.html", row=row, what=what)

    async def act(request: web.Request) -> web.Response:
        host_id = request.match_info["host_id"]
        form = await request.post()
        what = str(form.get("what", ""))
        if not HOST_RE.fullmatch(host_id) or what not in ACTS:
            raise web.HTTPNotFound()
        try:
            outcome = await backend.act(host_id, what, who(request))
        except UnknownHost:
            raise web.HTTPNotFound() from None
        log.info("console: %s asked %s on %s: %s", who(request), what, host_id, outcome.status)
        return page(request, "done.html", row=backend.host_row(host_id), what=what, outcome=outcome)

    def listing(kind: str) -> Handler:
        fetch = {"alerts": backend.alerts, "actions": backend.action_list, "audit": backend.audit}

        async def handler(request: web.Request) -> web.Response:
            try:
                number = int(request.query.get("page", "1"))
            except ValueError:
                number = 1
            return page(request, f"{kind}.html", p=fetch[kind](number), kind=kind)

        return handler

    async def events(request: web.Request) -> web.StreamResponse:
        if len(streams) >= cfg.max_streams:
            return web.Response(status=503, text="too many live pages open")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        streams.add(response)
        marker, quiet = backend.change_marker(), 0.0
        try:
            while True:
                await asyncio.sleep(cfg.poll_s)
                now = backend.change_marker()
                if now != marker:
                    marker, quiet = now, 0.0
                    await response.write(b"event: change\ndata: {}\n\n")
                else:
                    quiet += cfg.poll_s
                    if quiet >= 15.0:
                        quiet = 0.0
                        await response.write(b": still here\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            streams.discard(response)
        return response

    async def close_streams(app: web.Application) -> None:
        for response in list(streams):
            with contextlib.suppress(Exception):
                await response.write_eof()

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.on_shutdown.append(close_streams)
    app.add_routes(
        [
            web.get("/login/{token}", login_page),
            web.post("/login", login),
            web.post("/logout", logout),
            web.post("/lang", set_language),
            web.get("/", fleet),
            web.get("/incidents/{incident_id}", incident),
            web.get("/hosts/{host_id}", host),
            web.get("/hosts/{host_id}/confirm", confirm),
            web.post("/hosts/{host_id}/act", act),
            web.get("/alerts", listing("alerts")),
            web.get("/actions", listing("actions")),
            web.get("/audit", listing("audit")),
            web.get("/events", events),
            web.static("/static", HERE / "static"),
        ]
    )
    return app


def bind(listen: str) -> socket.socket:
    """A listening socket on ``HOST:PORT`` (port 0 picks one), bound before anything is built,
    so the sign-in links can name the port; ``ConfigError`` if it cannot be bound."""
    host, port = parse_hostport(listen, "console")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"console {listen}: {exc.strerror or exc}") from None


class ConsoleServer:
    """The console on a bound socket, over TLS when given a context."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None) -> None:
        self.app, self.ssl_context = app, ssl_context
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)

    async def start(self, sock: socket.socket) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self.ssl_context).start()

    async def stop(self) -> None:
        await self._runner.cleanup()


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The collector's own certificate for the console's HTTPS (browsers present none)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
