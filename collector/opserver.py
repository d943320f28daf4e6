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
TLS (``--insecure``) every caller is trusted, as the collector logs at start.
"""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.collector.commands import CommandRouter
from tocsin.collector.console.auth import LinkIssuer
from tocsin.collector.operations import PROCESS_CHOICES, HostActions, Outcome, UnknownHost
from tocsin.collector.respond import Responder
from tocsin.collector.store import Store
from tocsin.v1 import operator_pb2 as op
from tocsin.v1 import operator_pb2_grpc as op_grpc

_Ctx = grpc.aio.ServicerContext[object, object]
OPERATOR_OU = "tocsin-operator"  # as written by tocsin.collector.certs


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
    ) -> None:
        self.store, self.router, self.responder = store, router, responder
        self.console = console
        self.actions = HostActions(store, responder, default_timeout_s)

    async def ListHosts(self, request: op.ListHostsRequest, context: _Ctx) -> op.ListHostsResponse:
        await self._authorise(request, context)
        open_alerts: dict[str, int] = {}
        for a in self.store.list_alerts(limit=10_000):
            if a.open:
                open_alerts[a.host_id] = open_alerts.get(a.host_id, 0) + 1
        return op.ListHostsResponse(
            hosts=[
                op.HostInfo(
                    host_id=h.host_id,
                    hostname=h.hostname,
                    connected=self.router.is_connected(h.host_id),
                    last_seen=_ts(h.last_seen_s),
                    windows=h.windows,
                    isolated=h.isolated,
                    suspended_pids=h.suspended_pids,
                    agent_version=h.agent_version,
                    open_alerts=open_alerts.get(h.host_id, 0),
                )
                for h in self.store.list_hosts()
            ]
        )

    async def ListAlerts(
        self, request: op.ListAlertsRequest, context: _Ctx
    ) -> op.ListAlertsResponse:
        await self._authorise(request, context)
        import json

        limit = min(request.limit or 50, 1000)
        alerts = []
        for a in self.store.list_alerts(request.host_id, limit):
            proc = f"{a.process['name']} (pid {a.process['pid']})" if a.process else ""
            alerts.append(
                op.AlertInfo(
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
            )
        return op.ListAlertsResponse(alerts=alerts)

    async def ListActions(
        self, request: op.ListActionsRequest, context: _Ctx
    ) -> op.ListActionsResponse:
        await self._authorise(request, context)
        limit = min(request.limit or 50, 5000)
        return op.ListActionsResponse(
            actions=[
                op.ActionInfo(
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
                for a in self.store.list_actions(request.host_id, limit)
            ]
        )

    async def _authorise(self, request: object, context: _Ctx) -> str:
        """``operator:<name>`` for the audit, or abort PERMISSION_DENIED."""
        name = operator_identity(context)
        if name is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this certificate is not an operator's (tocsin certs issue NAME --operator)",
            )
        claimed = getattr(request, "operator", "") or "unknown"
        return f"operator:{name or claimed}"

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
