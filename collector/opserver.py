"""The Operator service: what ``tocsin hosts|alerts|isolate|release`` asks.

Contract: list calls read the store. ``Isolate`` and ``Release`` are audited
with the operator's name, sent to the agent whatever the respond mode (the mode
governs automatic responses, not a human's decision), and wait up to
``timeout_s`` for the agent's report; status is the agent's ("done",
"failed", ...) or "queued" when the agent is offline or silent. ``Release``
then resumes or kills the suspended processes if asked ("resume" / "kill")
and always answers which pids are still stopped. Unknown hosts: NOT_FOUND.
``ListActions`` is the audit of actions (automatic, operator, agent, hook),
newest first, with the outcome reported.

Authorisation: over TLS, every call needs a client certificate whose subject
carries the operator unit (``tocsin certs issue NAME --operator``, or the
collector's own certificate); anything else, an agent's certificate first of
all, gets PERMISSION_DENIED. The audit then names the certificate's CN. Without
TLS (``--insecure``) nothing proves who calls, so only callers on loopback
(127.0.0.0/8, ::1, a unix socket) are answered: anyone else gets
PERMISSION_DENIED with one line saying why (and one log line, at most one per
``deny_log_every_s``). No one gets remote control without a certificate.

Lists are paginated (``limit``, ``page_token`` -> ``next_page_token``, an
offset into the newest-first list): a reply never holds more than ``limit``
items nor more than ``PAGE_BUDGET_BYTES``, well under the message limit. An
item that alone would not fit is sent without its bulk (an alert's ``json``,
an action's ``detail``), so every page makes progress.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.collector.commands import CommandRouter
from tocsin.collector.console.auth import LinkIssuer
from tocsin.collector.grpcconf import is_loopback
from tocsin.collector.operations import PROCESS_CHOICES, HostActions, Outcome, UnknownHost
from tocsin.collector.respond import Responder
from tocsin.collector.store import Store
from tocsin.v1 import MAX_MESSAGE_BYTES
from tocsin.v1 import operator_pb2 as op
from tocsin.v1 import operator_pb2_grpc as op_grpc

log = logging.getLogger("tocsin.collector.opserver")

_Ctx = grpc.aio.ServicerContext[object, object]
OPERATOR_OU = "tocsin-operator"  # as written by tocsin.collector.certs
# Room left in a reply for the envelope and a next_page_token.
PAGE_BUDGET_BYTES = MAX_MESSAGE_BYTES - 16 * 1024
_Item = TypeVar("_Item", op.HostInfo, op.AlertInfo, op.ActionInfo)


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.2:5000" -> "10.0.0.2")."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return kind
    return rest.rpartition(":")[0].strip("[]")


def is_loopback_peer(peer: str) -> bool:
    """True for a caller on this machine's loopback (or a unix socket)."""
    return peer.startswith("unix:") or (
        peer.startswith(("ipv4:", "ipv6:")) and is_loopback(peer_address(peer))
    )


def paginate(
    fetch: Callable[[int, int], Sequence[Any]],
    build: Callable[[Any], _Item],
    shrink: Callable[[_Item], None],
    limit: int,
    offset: int,
    budget: int = PAGE_BUDGET_BYTES,
) -> tuple[list[_Item], str]:
    """At most ``limit`` items from ``offset`` that fit ``budget``; and the next page's token.

    ``fetch(offset, n)`` returns up to ``n`` records, ``build`` makes one item of
    a record, ``shrink`` strips an item that alone is over the budget.
    """
    records = fetch(offset, limit + 1)
    page: list[_Item] = []
    used = 0
    for record in records[:limit]:
        item = build(record)
        size = item.ByteSize() + 8  # field tag and length prefix
        if page and used + size > budget:
            break
        if size > budget:
            shrink(item)
            size = item.ByteSize() + 8
        page.append(item)
        used += size
    more = len(page) < len(records)
    return page, str(offset + len(page)) if more else ""


def operator_identity(context: _Ctx) -> str | None:
    """The operator's name from the peer certificate, "" without TLS, None if not an operator."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return ""
    from cryptography import x509  # the collector extra has it; only TLS peers get here
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pems[0])
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not any(u.value == OPERATOR_OU for u in units):
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"


def _ts(t_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t_s * 1e9))
    return ts


class OperatorService(op_grpc.OperatorServicer):
    def __init__(
        self,
        store: Store,
        router: CommandRouter,
        responder: Responder,
        default_timeout_s: float = 10.0,
        console: LinkIssuer | None = None,
        deny_log_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.router, self.responder = store, router, responder
        self.console = console
        self.actions = HostActions(store, responder, default_timeout_s)
        self.deny_log_every_s = deny_log_every_s
        self._clock = clock
        self.denied = 0
        self._denied_logged_at: float | None = None
        self._denied_unlogged = 0

    async def _listing(self, request: Any, context: _Ctx) -> int:
        """Authorise a list call; the offset its ``page_token`` names (INVALID_ARGUMENT if bad)."""
        await self._authorise(request, context)
        token = request.page_token
        if not token:
            return 0
        if not token.isdigit() or len(token) > 9:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad page_token")
        return int(token)

    async def ListHosts(self, request: op.ListHostsRequest, context: _Ctx) -> op.ListHostsResponse:
        offset = await self._listing(request, context)
        open_alerts: dict[str, int] = {}
        for a in self.store.list_alerts(limit=10_000):
            if a.open:
                open_alerts[a.host_id] = open_alerts.get(a.host_id, 0) + 1
        dropped = self.responder.suspended_pids_dropped

        def build(h: Any) -> op.HostInfo:
            return op.HostInfo(
                host_id=h.host_id,
                hostname=h.hostname,
                connected=self.router.is_connected(h.host_id),
                last_seen=_ts(h.last_seen_s),
                windows=h.windows,
                isolated=h.isolated,
                suspended_pids=h.suspended_pids,
                agent_version=h.agent_version,
                open_alerts=open_alerts.get(h.host_id, 0),
                suspended_pids_dropped=dropped[h.host_id],
            )

        hosts = self.store.list_hosts()
        page, token = paginate(
            lambda o, n: hosts[o : o + n],
            build,
            lambda h: h.ClearField("agent_version"),
            min(request.limit or 1000, 10_000),
            offset,
        )
        return op.ListHostsResponse(hosts=page, next_page_token=token)

    async def ListAlerts(
        self, request: op.ListAlertsRequest, context: _Ctx
    ) -> op.ListAlertsResponse:
        offset = await self._listing(request, context)

        def build(a: Any) -> op.AlertInfo:
            proc = f"{a.process['name']} (pid {a.process['pid']})" if a.process else ""
            return op.AlertInfo(
                alert_id=a.alert_id,
                host_id=a.host_id,
                severity=a.severity,
                score=a.score,
                detected_at=_ts(a.detected_at_s),
                reasons=a.reasons,
                process=proc,
                summary=str(a.payload.get("summary", "")),
                json=json.dumps(a.payload),
            )

        def shrink(a: op.AlertInfo) -> None:
            a.json = json.dumps({"alert_id": a.alert_id, "truncated": "over the message limit"})
            del a.reasons[20:]
            a.summary = a.summary[:1000]

        page, token = paginate(
            lambda o, n: self.store.list_alerts(request.host_id, n, o),
            build,
            shrink,
            min(request.limit or 50, 1000),
            offset,
        )
        return op.ListAlertsResponse(alerts=page, next_page_token=token)

    async def ListActions(
        self, request: op.ListActionsRequest, context: _Ctx
    ) -> op.ListActionsResponse:
        offset = await self._listing(request, context)

        def build(a: Any) -> op.ActionInfo:
            return op.ActionInfo(
                action_id=a.action_id,
                alert_id=a.alert_id,
                host_id=a.host_id,
                kind=a.kind,
                requested_by=a.requested_by,
                requested_at=_ts(a.requested_at_s),
                status=a.status,
                detail=a.detail,
                pids=a.pids,
                finished_at=_ts(a.finished_at_s) if a.finished_at_s else None,
            )

        def shrink(a: op.ActionInfo) -> None:
            a.detail = a.detail[:1000]
            del a.pids[1000:]

        page, token = paginate(
            lambda o, n: self.store.list_actions(request.host_id, n, o),
            build,
            shrink,
            min(request.limit or 50, 5000),
            offset,
        )
        return op.ListActionsResponse(actions=page, next_page_token=token)

    async def _authorise(self, request: object, context: _Ctx) -> str:
        """``operator:<name>`` for the audit, or abort PERMISSION_DENIED."""
        name = operator_identity(context)
        if name is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this certificate is not an operator's (tocsin certs issue NAME --operator)",
            )
        if name == "" and not is_loopback_peer(context.peer()):
            await self._deny_remote(context)
        claimed = getattr(request, "operator", "") or "unknown"
        return f"operator:{name or claimed}"

    async def _deny_remote(self, context: _Ctx) -> None:
        """Without TLS, a caller not on loopback: one line saying why, and a bounded log."""
        self.denied += 1
        address = peer_address(context.peer())
        now = self._clock()
        last = self._denied_logged_at
        if last is None or now - last >= self.deny_log_every_s:
            more = f" (and {self._denied_unlogged} more since the last line)"
            log.warning(
                "operator call from %s refused: --insecure answers loopback callers only%s",
                address,
                more if self._denied_unlogged else "",
            )
            self._denied_logged_at, self._denied_unlogged = now, 0
        else:
            self._denied_unlogged += 1
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the collector runs with --insecure: its operator API answers loopback callers"
            f" only, not {address}; run tocsin on the collector's host, or give the collector"
            f" TLS and yourself an operator certificate (tocsin certs issue NAME --operator)",
        )

    async def Isolate(self, request: op.HostActionRequest, context: _Ctx) -> op.HostActionResponse:
        who = await self._authorise(request, context)
        try:
            out = await self.actions.isolate(request.host_id, who, request.timeout_s)
        except UnknownHost as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return _reply(out)

    async def Release(self, request: op.HostActionRequest, context: _Ctx) -> op.HostActionResponse:
        who = await self._authorise(request, context)
        processes = request.processes or "keep"
        if processes not in PROCESS_CHOICES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"processes must be keep, resume or kill, not {processes!r}",
            )
        try:
            out = await self.actions.release(request.host_id, who, processes, request.timeout_s)
        except UnknownHost as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return _reply(out)

    async def ConsoleLink(
        self, request: op.ConsoleLinkRequest, context: _Ctx
    ) -> op.ConsoleLinkResponse:
        who = await self._authorise(request, context)
        if self.console is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                'this collector serves no console (set console = "HOST:PORT" in collector.toml)',
            )
            raise AssertionError("unreachable")
        url, valid_s = self.console.link(who.removeprefix("operator:"))
        self.store.audit(who, "console link issued", "")
        return op.ConsoleLinkResponse(url=url, valid_s=valid_s)


def _reply(out: Outcome) -> op.HostActionResponse:
    return op.HostActionResponse(
        status=out.status, detail=out.detail, still_suspended=out.still_suspended
    )
