"""What the collector does about a decision: tell humans, command the agent.

``Responder`` contract:

- ``on_decision(d)``: an ``open``, ``escalate`` or ``named`` decision (a critical
  incident whose writer became known after it was posted) becomes an alert
  (stored, then posted to the webhooks in the background as event ``alert``);
  ``update`` refreshes the stored alert of the incident, written with the next
  group commit (``AlertUpdates``; or, if the incident
  has none because the database failed before it was stored, raises it as
  ``open`` would); ``close`` marks it closed. Never blocks on a receiver.
- Mode ``off``: alerts only. ``dry-run``: alerts list the actions tocsin would
  take with status ``dry-run``; nothing is sent. ``enforce``: a critical
  alert suspends the tree root (``suspend``) and isolates the host
  (``isolate``, with the operator allowlist), except for a drill, which is
  never isolated ("skipped: drill"), or a host already isolated. When the
  writer is an smbd worker serving a client (``process.smb_client_addr``),
  the attacker is that workstation, not the server: the worker is suspended
  and the client's address blocked on the file server (``block_client``,
  parameter ``addresses``); the server is not isolated and every other user
  keeps working. A drill's
  process is suspended in ``dry-run`` too (never isolated), so that
  ``tocsin-agent drill`` proves the chain before enforce is switched on. When the
  fleet guard (``guard``) refuses, the isolation is ``held``: audited, stored
  as an action with status "held", and posted as event ``fleet_guard``; an
  operator can still isolate the host by hand.
- Hooks (``hooks``) run on every posted event they match; their outcome is
  audited, stored as an action of kind ``hook`` and posted as event ``action``.
- ``command(...)``: operator-requested actions (always sent; audited).
- ``on_action_result(host_id, result)``: the agent's report is stored,
  audited, folded into the host state (isolated, suspended pids) and posted as
  event ``action``. A report on a command is accepted only from the host the
  command was sent to, for a command the collector (or an operator through it)
  issued; anything else is refused, logged and counted (``results_refused``),
  and changes nothing. A report of the agent's own action (``local``) is
  recorded under the id ``HOST/ID``: it can never land on another host's
  action. Details are cut to ``MAX_DETAIL_CHARS``; a host's suspended pids are
  bounded by ``MAX_SUSPENDED_PIDS``, the excess counted per host in
  ``suspended_pids_dropped``.
Events go to the sink with ``enqueue`` (the durable outbox stores them at
once, so an alert is queued for its webhooks before ``on_decision``
returns). The commands of a decision go to the router first, before anything
is written: the attacker is stopped without waiting for a disk. Then the
actions sent (with their audit rows), the alert, the previous alert of its
incident closed, its audit row and its webhook rows are written in one
transaction (``Store.atomic``; the outbox shares the store's database), in a
worker thread, so the event loop goes on writing the commands to the agent's
stream (and serving every other agent) while the disk syncs; the sink's
``enqueue`` must be thread-safe. A failure leaves none of them, raises, and the
window is judged again (its commands are sent again; the agent's report on the
first ones is refused as a command never recorded). Other events that a
sink refuses are counted in ``posts_failed``. ``drain()`` waits for hooks and
background posts in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from tocsin.collector.commands import CommandRouter
from tocsin.collector.decide import Decision, ProcessInfo
from tocsin.collector.events import (
    ActionEvent,
    ActionTaken,
    AlertEvent,
    FleetGuardEvent,
)
from tocsin.collector.explain import N_, Gettext, explain_decision, same_text
from tocsin.collector.fleetguard import FleetGuard
from tocsin.collector.hooks import HookOutcome, HookRunner
from tocsin.collector.reasons import Reason, texts
from tocsin.collector.store import ActionRecord, AlertRecord, Store
from tocsin.collector.webhook import WebhookSink
from tocsin.v1 import telemetry_pb2 as pb

log = logging.getLogger("tocsin.collector.respond")

MAX_SUSPENDED_PIDS = 256
# How long an agent's report waits for the row of a command sent ahead of it.
RECORD_WAIT_S = 30.0
# What to record of a command already sent: the action, and its audit row (what, detail).
_ActionRow = tuple[ActionRecord, str, str]
MAX_DETAIL_CHARS = 2000

Mode = Literal["off", "dry-run", "enforce"]
MODES: tuple[str, ...] = ("off", "dry-run", "enforce")

_PHRASES = {
    "type_destroyed": N_("{n} files lost their file type"),
    "encrypted_twins": N_("{n} files were replaced by encrypted copies"),
    "encoded_random": N_("{n} files were rewritten as encoded random data"),
    "new_extension_spreading": N_("the new extension {a} spread to {b} directories"),
    "ransom_note": N_("a note named {a} appeared in {b} directories"),
    "canary_touched": N_("a canary file was touched"),
    "tripwire": N_("the agent's tripwire fired ({a})"),
    "anomaly_score": N_("activity was unusual (score {a})"),
    "clock_skew": N_("the agent's clock was off"),
}
# The summary's words for severities, actions and their outcomes.
_WORDS = {
    "critical": N_("Critical"),
    "warning": N_("Warning"),
    "suspend": N_("suspend"),
    "isolate": N_("isolate"),
    "block_client": N_("block workstation"),
    "done": N_("done"),
    "failed": N_("failed"),
    "sent": N_("sent"),
    "dry-run": N_("dry-run"),
    "held": N_("held"),
    "refused": N_("refused"),
}


def describe(reasons: Sequence[Reason], _: Gettext = same_text) -> str:
    """The reasons as one clause of the summary, in the reader's language (``_``)."""
    parts = []
    for r in reasons:
        phrase = _PHRASES.get(r.kind)
        if phrase is None:
            continue
        if r.kind == "anomaly_score":
            a = f"{r.score:.2f}"
        elif r.kind == "tripwire":
            a = r.detail
        else:
            a = r.name
        parts.append(_(phrase).format(n=r.files, a=a, b=r.dirs))
    return "; ".join(parts) or _("unusual file activity")


def _word(word: str, _: Gettext) -> str:
    return _(_WORDS[word]) if word in _WORDS else word


def smb_client_phrase(p: ProcessInfo, _: Gettext = same_text) -> str:
    """For an smbd worker, the client it serves and its SMB user ("" for another writer)."""
    if not p.smb_client_addr:
        return ""
    if p.smb_user:
        return _(" serving the SMB client {addr} as user {user}").format(
            addr=p.smb_client_addr, user=p.smb_user
        )
    return _(" serving the SMB client {addr}").format(addr=p.smb_client_addr)


class AlertUpdates:
    """The open alerts refreshed since the last transaction, written by the next one.

    Every window of a host with an open incident refreshes its alert (end,
    score, reasons): that is no reason for a transaction of its own, which would
    hold the event loop for an fsync per window. ``hold`` keeps the live record;
    ``flush`` writes the ones held, inside the transaction open on its thread
    (the group commit's, or a worker's marks), so an update is durable no later
    than the judged marks of its window. A flush that fails holds them again.
    ``forget`` drops a record written meanwhile by other means (call it inside
    that transaction)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: dict[str, AlertRecord] = {}
        self._lock = threading.Lock()

    def hold(self, alert: AlertRecord) -> None:
        with self._lock:
            self._held[alert.alert_id] = alert

    def forget(self, alert_id: str) -> None:
        with self._lock:
            self._held.pop(alert_id, None)

    def flush(self) -> None:
        with self._lock:
            held, self._held = self._held, {}
        try:
            for alert in held.values():
                self.store.save_alert(replace(alert, reasons=list(alert.reasons)))
        except BaseException:
            with self._lock:
                for alert_id, alert in held.items():
                    self._held.setdefault(alert_id, alert)
            raise


def describe_process(p: ProcessInfo | None) -> str:
    """Who wrote, in words (for the operator's terminal)."""
    if p is None:
        return "an unknown process"
    return f"{p.name} (pid {p.pid}){smb_client_phrase(p)}"


class Responder:
    def __init__(
        self,
        store: Store,
        sink: WebhookSink,
        router: CommandRouter,
        mode: str = "dry-run",
        allow: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:16],
        command_ttl_s: float = 300.0,
        guard: FleetGuard | None = None,
        hooks: HookRunner | None = None,
        gettext: Gettext = same_text,
        updates: AlertUpdates | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"respond mode must be one of {MODES}, not {mode!r}")
        self.store, self.sink, self.router = store, sink, router
        self.mode = mode
        self.allow = list(allow)
        self._clock, self._new_id = clock, new_id
        self.command_ttl_s = command_ttl_s
        self.posts_failed = 0
        self._alerts: dict[str, AlertRecord] = {}
        # Refreshed and closed alerts, written with the next group commit (the assembly
        # hands the same object to it); stop() writes what is left.
        self.updates = updates or AlertUpdates(store)
        # A decision's commands go out before their rows are written: a report that
        # comes back meanwhile waits for the write (``on_action_result``).
        self._unrecorded: dict[str, asyncio.Event] = {}
        self.guard = guard
        self.hooks = hooks
        self._ = gettext
        self.alerts_total: Counter[str] = Counter()
        self.actions_total: Counter[tuple[str, str]] = Counter()
        self.results_refused = 0
        self.suspended_pids_dropped: Counter[str] = Counter()

    # ---------------------------------------------------------------- decisions

    def adopt(self, alert: AlertRecord) -> None:
        """Take back a stored open alert after a restart, so its incident's updates land on it."""
        if alert.open:
            self._alerts.setdefault(alert.incident_id, alert)

    async def on_decision(
        self, d: Decision, explanation: Sequence[tuple[str, float]] = ()
    ) -> dict[str, Any] | None:
        """Store and post an alert for ``open``/``escalate``/``named``; returns the posted body."""
        if d.kind == "update" and d.incident_id in self._alerts:
            self._update(d)
            return None
        if d.kind == "update":
            # The incident's alert was never stored (the database failed between
            # the judge's record and the alert): raise it now rather than never.
            log.warning("incident %s of %s had no alert; raising it now", d.incident_id, d.host_id)
        if d.kind == "close":
            alert = self._alerts.pop(d.incident_id, None)
            if alert is not None:
                alert.open = False
                self.updates.hold(alert)
            return None
        alert_id = self._new_id()
        records: list[_ActionRow] = []  # routed already, recorded with the alert
        try:
            return await self._raise_alert(d, alert_id, records, explanation)
        finally:
            for action, *_ in records:
                if (recorded := self._unrecorded.pop(action.action_id, None)) is not None:
                    recorded.set()

    async def _raise_alert(
        self,
        d: Decision,
        alert_id: str,
        records: list[_ActionRow],
        explanation: Sequence[tuple[str, float]],
    ) -> dict[str, Any]:
        critical = d.severity == "critical"
        actions = tuple(await self._respond(d, alert_id, records)) if critical else ()
        detected_at_s = self._clock()
        event = AlertEvent(
            alert_id=alert_id,
            incident_id=d.incident_id,
            host_id=d.host_id,
            severity=d.severity,
            score=d.score,
            detected_at_s=detected_at_s,
            window_start_s=d.window_start_s,
            window_end_s=d.window_end_s,
            reasons=d.reasons,
            process=d.process,
            actions=actions,
            summary=self._summary(d, actions),
            example_paths=d.example_paths,
            mode=self.mode,
            drill=d.drill,
            top_features=tuple(explanation),
            explanation=explain_decision(d, explanation),
        )
        payload = event.to_json()
        previous = self._alerts.get(d.incident_id)
        alert = AlertRecord(
            alert_id=alert_id,
            host_id=d.host_id,
            incident_id=d.incident_id,
            severity=d.severity,
            score=d.score or 0.0,
            detected_at_s=detected_at_s,
            window_start_s=d.window_start_s,
            window_end_s=d.window_end_s,
            reasons=list(payload["reasons"]),
            process=payload["process"],
            payload=payload,
        )
        said = f"{alert_id} {d.host_id} {tuple(alert.reasons)}"
        await asyncio.to_thread(self._keep_alert, alert, previous, payload, records, said)
        if previous is not None:
            previous.open = False
        self._alerts[d.incident_id] = alert
        self.alerts_total[d.severity] += 1
        if self.hooks is not None:
            self.hooks.fire(payload, self.on_hook_outcome)
        return payload

    def _keep_alert(
        self,
        alert: AlertRecord,
        previous: AlertRecord | None,
        payload: dict[str, Any],
        records: Sequence[_ActionRow],
        audit: str,
    ) -> None:
        """The actions already sent, the alert and its webhook rows, each with its audit row:
        one transaction (the outbox shares the store's database) or nothing, and the window
        is then judged again. Runs in a worker thread (see module contract)."""
        with self.store.atomic():
            for action, what, detail in records:
                self.store.add_action(action)
                self.store.audit(action.requested_by, what, detail)
            if previous is not None:
                self.updates.forget(previous.alert_id)
                self.store.save_alert(replace(previous, open=False))
            self.store.save_alert(alert)
            self.store.audit("collector", f"alert {alert.severity}", audit)
            self.sink.enqueue(payload)

    def _update(self, d: Decision) -> None:
        alert = self._alerts.get(d.incident_id)
        if alert is None:
            return
        alert.window_end_s = max(alert.window_end_s, d.window_end_s)
        alert.score = max(alert.score, d.score or 0.0)
        alert.reasons = sorted(set(alert.reasons) | set(texts(d.reasons)))
        self.updates.hold(alert)

    async def _respond(
        self, d: Decision, alert_id: str, records: list[_ActionRow]
    ) -> list[ActionTaken]:
        """Route the decision's commands now, the suspend before anything touches the
        database; ``records`` gets what to store of them."""
        if self.mode == "off":
            return []
        name = d.process.name if d.process else "?"
        actions: list[ActionTaken] = []
        if d.root_pid > 0:
            detail = f"would suspend pid {d.root_pid} ({name})"
            if self.mode == "enforce" or d.drill:
                # A drill's own encryptor is suspended in dry-run too: that is how
                # `tocsin-agent drill` proves the chain during the dry-run weeks.
                ref = (
                    d.process.root_ref()
                    if d.process and d.process.tree_root_pid == d.root_pid
                    else pb.ProcessRef(pid=d.root_pid)  # unverifiable: the agent refuses it
                )
                self._send(
                    d.host_id,
                    "suspend",
                    [d.root_pid],
                    "collector",
                    alert_id,
                    [ref],
                    records=records,
                )
                actions.append(ActionTaken("suspend", "sent", pids=(d.root_pid,)))
            else:
                actions.append(ActionTaken("suspend", "dry-run", detail, pids=(d.root_pid,)))
        client = d.process.smb_client_addr if d.process else ""
        if d.drill:
            actions.append(
                ActionTaken("isolate", "skipped: drill", "a drill never isolates the host")
            )
        elif client:
            actions.append(self._block_client(d, client, alert_id, records))
        elif (host := await asyncio.to_thread(self.store.get_host, d.host_id)) and host.isolated:
            actions.append(ActionTaken("isolate", "skipped: already isolated"))
        elif self.mode == "enforce" and self.guard is not None and not self.guard.admit(d.host_id):
            actions.append(self._hold(d, alert_id, records))
        elif self.mode == "enforce":
            self._send(d.host_id, "isolate", [], "collector", alert_id, records=records)
            actions.append(ActionTaken("isolate", "sent"))
        else:
            actions.append(ActionTaken("isolate", "dry-run", "would isolate host"))
        return actions

    def _block_client(
        self, d: Decision, client: str, alert_id: str, records: list[_ActionRow]
    ) -> ActionTaken:
        """Cut the SMB client that attacks, not the server: block its address there."""
        if self.mode != "enforce":
            detail = f"would block client {client} on {d.host_id}"
            return ActionTaken("block_client", "dry-run", detail, clients=(client,))
        self._send(
            d.host_id,
            "block_client",
            [],
            "collector",
            alert_id,
            parameters={"addresses": client},
            records=records,
        )
        return ActionTaken("block_client", "sent", clients=(client,))

    def _hold(self, d: Decision, alert_id: str, records: list[_ActionRow]) -> ActionTaken:
        """The fleet guard refused an automatic isolation: record, audit, ask a human."""
        assert self.guard is not None
        limit = self.guard.max_per_minute
        detail = (
            f"fleet guard: {self.guard.recent()} hosts isolated in the last minute "
            f"(limit {limit}); a human must decide (tocsin isolate {d.host_id})"
        )
        held = ActionRecord(
            action_id=self._new_id(),
            alert_id=alert_id,
            host_id=d.host_id,
            kind="isolate",
            requested_by="collector",
            requested_at_s=self._clock(),
            status="held",
            detail=detail,
            finished_at_s=self._clock(),
        )
        records.append((held, "isolate held", f"{d.host_id} {detail}"))
        self.actions_total[("isolate", "held")] += 1
        log.error("isolation of %s held by the fleet guard", d.host_id)
        self._post_later(
            FleetGuardEvent(
                alert_id=alert_id,
                host_id=d.host_id,
                held_hosts=tuple(self.guard.held),
                isolations_last_minute=self.guard.recent(),
                limit=limit,
                detail=detail,
                at_s=self._clock(),
                mode=self.mode,
            )
        )
        return ActionTaken("isolate", "held", detail)

    def _summary(self, d: Decision, actions: Sequence[ActionTaken]) -> str:
        """One sentence for the chat message, in the collector's language."""
        _ = self._
        if d.process:
            who = _("written by {name} (pid {pid})").format(name=d.process.name, pid=d.process.pid)
            who += smb_client_phrase(d.process, _)
        else:
            who = _("written by an unknown process")
        did = [f"{_word(a.action, _)} {_word(a.status, _)}" for a in actions]
        if self.mode == "off":
            done = _("tocsin only alerts (respond=off)")
        elif not actions:
            done = _("no action on a warning: a human should look")
        else:
            done = _("tocsin: {actions}").format(actions=", ".join(did))
        head = _("{severity} (drill) on {host}") if d.drill else _("{severity} on {host}")
        return _("{head}: {what}, {who}; {done}.").format(
            head=head.format(severity=_word(d.severity, _), host=d.host_id),
            what=describe(d.reasons, _),
            who=who,
            done=done,
        )

    # ---------------------------------------------------------------- commands

    def _send(
        self,
        host_id: str,
        kind: str,
        pids: Sequence[int],
        who: str,
        alert_id: str = "",
        processes: Sequence[pb.ProcessRef] = (),
        parameters: dict[str, str] | None = None,
        records: list[_ActionRow] | None = None,
    ) -> ActionRecord:
        """Queue a command; ``processes`` names each pid by its identity (tocsin.v1 Command).

        Recorded (action, audit) before it is routed; or, given ``records`` (a decision's
        commands), routed at once and its record appended there, to be written with the
        alert (see module contract).
        """
        cmd = pb.Command(id=self._new_id(), kind=kind, pids=list(pids), processes=list(processes))
        cmd.parameters.update(parameters or {})
        if kind == "isolate" and self.allow:
            cmd.parameters["allow"] = ",".join(self.allow)
        if alert_id:
            cmd.parameters["alert_id"] = alert_id
        cmd.deadline.FromNanoseconds(int((self._clock() + self.command_ttl_s) * 1e9))
        action = ActionRecord(
            action_id=cmd.id,
            alert_id=alert_id,
            host_id=host_id,
            kind=kind,
            requested_by=who,
            requested_at_s=self._clock(),
            status="sent",
            pids=list(pids),
        )
        extra = "".join(f" {k}={v}" for k, v in sorted((parameters or {}).items()))
        record = (action, f"{kind} requested", f"{host_id} pids={list(pids)}{extra} id={cmd.id}")
        if records is not None:
            self._unrecorded[cmd.id] = asyncio.Event()
            records.append(record)
            self.router.send(host_id, cmd)
            return action
        self.store.add_action(action)
        self.store.audit(who, *record[1:])
        self.router.send(host_id, cmd)
        return action

    async def command(
        self, host_id: str, kind: str, pids: Sequence[int], who: str, timeout_s: float
    ) -> tuple[str, str]:
        """Send an operator command and wait for the agent's report: (status, detail)."""
        connected = self.router.is_connected(host_id)
        fut = None
        action = ActionRecord("", "", host_id, kind, who, 0.0, "")
        try:
            action = self._send(host_id, kind, pids, who)
            fut = self.router.expect(action.action_id)
            if not connected:
                return "queued", "agent offline; the command waits for it to reconnect"
            result = await asyncio.wait_for(fut, timeout=max(timeout_s, 0.1))
            return result.status, result.detail
        except TimeoutError:
            return "queued", f"no report from the agent within {timeout_s:g} s"
        finally:
            if fut is not None and not fut.done() and connected:
                fut.cancel()

    def _issued_to(self, host_id: str, command_id: str) -> ActionRecord | None:
        """The collector's command ``command_id`` if it was sent to ``host_id``, else None."""
        action = self.store.get_action(command_id) if command_id else None
        if action is None or action.host_id != host_id or action.kind == "hook":
            return None
        if not action.requested_by.startswith(("collector", "operator:")):
            return None
        return action

    async def on_action_result(self, host_id: str, r: pb.ActionResult) -> None:
        """Store, audit and fold in the agent's report, with its webhook rows, in one
        transaction in a worker thread (the event loop goes on meanwhile), then resolve
        its command and start the hooks."""

        def record() -> ActionEvent | None:
            with self.store.atomic():  # one commit, one fsync, for all of it
                return self._record_result(host_id, r)

        if (recorded := self._unrecorded.get(r.command_id)) is not None:
            # Its command went out ahead of its row: the row first, then the report.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorded.wait(), RECORD_WAIT_S)
        event = await asyncio.to_thread(record)
        if event is None:
            return
        if not r.local:
            self.router.resolve(r)
        if self.hooks is not None:
            self.hooks.fire(event.to_json(), self.on_hook_outcome)

    def _record_result(self, host_id: str, r: pb.ActionResult) -> ActionEvent | None:
        """The store's part of ``on_action_result``, its webhook rows included: the event
        posted, or None when the report was refused."""
        pids = list(r.pids[:MAX_SUSPENDED_PIDS])
        if len(r.pids) > len(pids):
            self.suspended_pids_dropped[host_id] += len(r.pids) - len(pids)
        detail = r.detail[:MAX_DETAIL_CHARS]
        kind, status = r.kind[:32], r.status[:64]
        if r.local:
            action = ActionRecord(
                action_id=f"{host_id}/{r.command_id[:64] or self._new_id()}",
                alert_id="",
                host_id=host_id,
                kind=kind,
                requested_by="agent",
                requested_at_s=self._clock(),
                status=status,
                detail=detail,
                pids=pids,
                finished_at_s=self._clock(),
            )
            self.store.add_action(action)
        else:
            issued = self._issued_to(host_id, r.command_id)
            if issued is None:
                self.results_refused += 1
                log.warning(
                    "agent %s reported %s %s for command %r, which the collector never sent"
                    " it; refused",
                    host_id,
                    kind,
                    status,
                    r.command_id[:64],
                )
                self.store.audit(
                    f"agent:{host_id}", "result refused", f"command {r.command_id[:64]!r}"
                )
                return None
            kind = issued.kind  # what was asked, whatever the report calls it
            finished = self.store.finish_action(issued.action_id, status, detail, pids)
            action = finished or issued
        self.store.audit(f"agent:{host_id}", f"{kind} {status}", detail)
        self.actions_total[(kind, status)] += 1
        if status == "done":
            self._fold_host_state(host_id, kind, pids or action.pids)
        event = ActionEvent(
            alert_id=action.alert_id,
            host_id=host_id,
            action=kind,
            status=status,
            detail=detail,
            pids=tuple(pids or action.pids),
            command_id=action.action_id,
            local=r.local,
            at_s=self._clock(),
            mode=self.mode,
        )
        self._post_later(event, hooks=False)  # the hooks are started on the loop
        return event

    def _fold_host_state(self, host_id: str, kind: str, pids: Sequence[int]) -> None:
        host = self.store.get_host(host_id)
        if host is None:
            return
        if kind == "isolate":
            self.store.set_host_state(host_id, isolated=True)
        elif kind == "release":
            self.store.set_host_state(host_id, isolated=False)
        elif kind == "suspend":
            known = set(host.suspended_pids)
            new = sorted(set(pids) - known)
            room = max(MAX_SUSPENDED_PIDS - len(known), 0)
            if len(new) > room:
                self.suspended_pids_dropped[host_id] += len(new) - room
                log.warning(
                    "agent %s: %d suspended pids past the %d kept per host; not listed",
                    host_id,
                    len(new) - room,
                    MAX_SUSPENDED_PIDS,
                )
            self.store.set_host_state(host_id, suspended_pids=[*known, *new[:room]])
        elif kind in ("resume", "kill"):
            left = [p for p in host.suspended_pids if p not in set(pids)]
            self.store.set_host_state(host_id, suspended_pids=left)

    # ---------------------------------------------------------------- posting

    async def on_hook_outcome(self, o: HookOutcome) -> None:
        """Audit a hook run and tell the receivers (event ``action``, action ``hook``)."""
        host_id = str(o.event.get("host_id", ""))
        alert_id = str(o.event.get("alert_id", ""))
        now = self._clock()
        self.store.add_action(
            ActionRecord(
                action_id=self._new_id(),
                alert_id=alert_id,
                host_id=host_id,
                kind="hook",
                requested_by=f"hook:{o.hook.label}",
                requested_at_s=now - o.duration_s,
                status=o.status,
                detail=f"{o.hook.path}: {o.detail}",
                finished_at_s=now,
            )
        )
        self.store.audit(
            f"hook:{o.hook.label}",
            f"hook {o.status}",
            f"{o.hook.path} {list(o.hook.args)} on {o.event.get('event')} "
            f"{alert_id} {host_id}: {o.detail} ({o.duration_s:.2f} s)",
        )
        self.actions_total[("hook", o.status)] += 1
        self._post_later(
            ActionEvent(
                alert_id=alert_id,
                host_id=host_id,
                action="hook",
                status=o.status,
                detail=f"{o.hook.label}: {o.detail}",
                pids=(),
                command_id="",
                local=False,
                at_s=now,
                mode=self.mode,
            ),
            hooks=False,
        )

    def _post_later(self, event: ActionEvent | FleetGuardEvent, hooks: bool = True) -> None:
        """Queue ``event`` for the webhooks and (``hooks``: not a hook's own outcome) the hooks."""
        body = event.to_json()
        if hooks and self.hooks is not None:
            self.hooks.fire(body, self.on_hook_outcome)
        try:
            self.sink.enqueue(body)
        except Exception:
            self.posts_failed += 1
            log.exception("could not queue %s for the webhooks", body["event"])

    async def drain(self) -> None:
        if self.hooks is not None:
            await self.hooks.drain()
        await self.sink.drain()
