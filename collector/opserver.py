"""The Operator service: what ``tocsin hosts|alerts|isolate|release`` asks.

Contract: list calls read the store. ``Isolate`` and ``Release`` are audited
with the operator's name, sent to the agent whatever the respond mode (the mode
governs automatic responses, not a human's decision), and wait up to
``timeout_s`` for the agent's report; status is the agent's ("done",
"failed", ...) or "queued" when the agent is offline or silent. ``Release``
kills the suspended processes first if asked ("kill": an SMB client unblocked
never finds its worker alive), or resumes them after ("resume")
and always answers which pids are still stopped; each pid is named as the
alerts named it (an smbd worker with its SMB client and user), so the
operator reads which workers were resumed, killed or are still stopped.
Unknown hosts: NOT_FOUND.
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
from tocsin.collector.decide import ProcessInfo
from tocsin.collector.respond import Responder, describe_process
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
    ) -> None:
        self.store, self.router, self.responder = store, router, responder
        self.default_timeout_s = default_timeout_s

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

    async def _host_or_abort(self, host_id: str, context: _Ctx) -> None:
        if not host_id or self.store.get_host(host_id) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown host {host_id!r}")

    async def Isolate(self, request: op.HostActionRequest, context: _Ctx) -> op.HostActionResponse:
        who = await self._authorise(request, context)
        await self._host_or_abort(request.host_id, context)
        timeout_s = request.timeout_s or self.default_timeout_s
        status, detail = await self.responder.command(
            request.host_id, "isolate", [], who, timeout_s
        )
        return self._reply(request.host_id, status, detail)

    async def Release(self, request: op.HostActionRequest, context: _Ctx) -> op.HostActionResponse:
        who = await self._authorise(request, context)
        await self._host_or_abort(request.host_id, context)
        processes = request.processes or "keep"
        if processes not in ("keep", "resume", "kill"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"processes must be keep, resume or kill, not {processes!r}",
            )
        timeout_s = request.timeout_s or self.default_timeout_s
        host = self.store.get_host(request.host_id)
        stopped = host.suspended_pids if host is not None else []
        verdict = ""
        p_status = "done"
        # Killed before the network opens again (an SMB client unblocked must not find
        # its worker alive); resumed after.
        if processes == "kill" and stopped:
            p_status, verdict = await self._processes(
                request.host_id, processes, stopped, who, timeout_s
            )
        status, detail = await self.responder.command(
            request.host_id, "release", [], who, timeout_s
        )
        if processes == "resume" and stopped:
            p_status, verdict = await self._processes(
                request.host_id, processes, stopped, who, timeout_s
            )
        detail = f"{detail}; {verdict}".strip("; ")
        if p_status != "done" and status == "done":
            status = p_status
        return self._reply(request.host_id, status, detail)

    async def _processes(
        self, host_id: str, kind: str, pids: list[int], who: str, timeout_s: float
    ) -> tuple[str, str]:
        """Resume or kill ``pids``: (status, what was done to whom, in words)."""
        status, detail = await self.responder.command(host_id, kind, pids, who, timeout_s)
        return status, f"{kind}: {status} {detail} ({self._name_pids(host_id, pids)})"

    def _name_pids(self, host_id: str, pids: list[int]) -> str:
        """The pids in words, as the host's alerts named their writers."""
        known: dict[int, ProcessInfo] = {}
        for a in self.store.list_alerts(host_id, limit=200):
            p = a.process or {}
            pid = p.get("pid")
            if isinstance(pid, int) and pid in pids and pid not in known:
                known[pid] = ProcessInfo(
                    pid,
                    str(p.get("name", "?")),
                    str(p.get("exe", "")),
                    pid,
                    str(p.get("smb_client_addr", "")),
                    str(p.get("smb_user", "")),
                )
        return ", ".join(
            describe_process(known[pid]) if pid in known else f"pid {pid}" for pid in pids
        )

    def _reply(self, host_id: str, status: str, detail: str) -> op.HostActionResponse:
        host = self.store.get_host(host_id)
        still = host.suspended_pids if host else []
        if still:
            detail = f"{detail}; still stopped: {self._name_pids(host_id, still)}".strip("; ")
        return op.HostActionResponse(status=status, detail=detail, still_suspended=still)
