"""What the console shows and does, read from the collector's live parts.

``ConsoleBackend(store, router, silence, actions, threshold)``: every method
returns small frozen view records (no store rows leak into templates), reads
the store through its own methods, and never blocks on an agent except
``act``, which goes through ``HostActions`` exactly like the CLI.
``change_marker()`` is a cheap fingerprint of the newest alert and action:
the live page updates are sent when it changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tocsin.collector.commands import CommandRouter
from tocsin.collector.features import window_tally
from tocsin.collector.operations import HostActions, Outcome
from tocsin.collector.reasons import Reason
from tocsin.collector.silence import SilenceWatch
from tocsin.collector.store import ActionRecord, AlertRecord, HourRollup, Store
from tocsin.v1 import telemetry_pb2 as pb

# Minutes of windows shown before an incident's first window and after its last.
AROUND_S = 300.0
ACTS = ("release", "resume", "kill", "isolate")


@dataclass(frozen=True)
class HostRow:
    host_id: str
    hostname: str
    connected: bool
    silent: bool
    last_seen_s: float
    isolated: bool
    open_incident: str
    open_severity: str
    tripwire_mode: str
    agent_version: str
    suspended_pids: list[int]


@dataclass(frozen=True)
class WindowPoint:
    t_s: float
    written: int
    destroyed: int
    score: float | None


@dataclass(frozen=True)
class Writer:
    """A process seen writing during the incident, with its place in its tree."""

    pid: int
    ppid: int
    name: str
    exe: str
    user: str
    tree_root_pid: int
    files_touched: int
    files_destroyed: int
    depth: int


@dataclass(frozen=True)
class IncidentView:
    incident_id: str
    host_id: str
    severity: str
    open: bool
    first_s: float
    last_s: float
    alerts: list[AlertRecord]
    latest: dict[str, Any]
    # The latest alert's reasons, read back from its stored body.
    reasons: tuple[Reason, ...]
    points: list[WindowPoint]
    writers: list[Writer]
    actions: list[ActionRecord]
    host: HostRow | None


@dataclass(frozen=True)
class HostView:
    row: HostRow
    rollups: list[HourRollup]
    alerts: list[AlertRecord]
    actions: list[ActionRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Page:
    items: Sequence[Any]
    page: int
    has_more: bool


class ConsoleBackend:
    def __init__(
        self,
        store: Store,
        router: CommandRouter,
        silence: SilenceWatch,
        actions: HostActions,
        threshold: float,
        clock: Callable[[], float] = time.time,
        per_page: int = 50,
        max_pages: int = 200,
    ) -> None:
        self.store, self.router, self.silence, self.actions = store, router, silence, actions
        self.threshold, self._clock = threshold, clock
        self.per_page, self.max_pages = per_page, max_pages

    def now(self) -> float:
        return self._clock()

    def _open_incidents(self) -> dict[str, tuple[str, str]]:
        """host id -> (incident id, severity) of its newest open incident."""
        found: dict[str, tuple[str, str]] = {}
        for a in self.store.list_alerts(limit=10_000):
            if a.open:
                found.setdefault(a.host_id, (a.incident_id, a.severity))
        return found

    def _row(self, h: Any, open_incidents: dict[str, tuple[str, str]], silent: set[str]) -> HostRow:
        incident, severity = open_incidents.get(h.host_id, ("", ""))
        return HostRow(
            host_id=h.host_id,
            hostname=h.hostname,
            connected=self.router.is_connected(h.host_id),
            silent=h.host_id in silent,
            last_seen_s=h.last_seen_s,
            isolated=h.isolated,
            open_incident=incident,
            open_severity=severity,
            tripwire_mode=h.tripwire_mode,
            agent_version=h.agent_version,
            suspended_pids=list(h.suspended_pids),
        )

    def fleet(self) -> list[HostRow]:
        incidents, silent = self._open_incidents(), set(self.silence.silent_hosts())
        return [self._row(h, incidents, silent) for h in self.store.list_hosts()]

    def host_row(self, host_id: str) -> HostRow | None:
        h = self.store.get_host(host_id)
        if h is None:
            return None
        return self._row(h, self._open_incidents(), set(self.silence.silent_hosts()))

    def host(self, host_id: str) -> HostView | None:
        row = self.host_row(host_id)
        if row is None:
            return None
        now = self.now()
        since = now - 24 * 3600
        return HostView(
            row=row,
            rollups=self.store.rollups(host_id, since, now + 3600),
            alerts=[a for a in self.store.list_alerts(host_id, 200) if a.detected_at_s >= since],
            actions=self.store.list_actions(host_id, 20),
        )

    def incident(self, incident_id: str) -> IncidentView | None:
        alerts = self.store.incident_alerts(incident_id)
        if not alerts:
            return None
        latest = alerts[0]
        first = min(a.window_start_s for a in alerts)
        last = max(a.window_end_s for a in alerts)
        windows = self.store.host_windows(latest.host_id, first - AROUND_S, last + AROUND_S)
        points = []
        seen: dict[int, pb.ProcessSample] = {}
        touched: dict[int, tuple[int, int]] = {}
        for w in windows:
            window = pb.Window.FromString(w.raw)
            tally = window_tally(window)
            points.append(WindowPoint(w.end_s, tally.files_written, tally.files_destroyed, w.score))
            for s in window.top_writers:
                seen[s.pid] = s
                files, ruined = touched.get(s.pid, (0, 0))
                touched[s.pid] = (files + s.files_touched, ruined + s.files_type_destroyed)
        ids = {a.alert_id for a in alerts}
        host_actions = self.store.list_actions(latest.host_id, 500)
        first_detected = min(a.detected_at_s for a in alerts)
        actions = [
            a for a in host_actions if a.alert_id in ids or a.requested_at_s >= first_detected
        ]
        return IncidentView(
            incident_id=incident_id,
            host_id=latest.host_id,
            severity=max((a.severity for a in alerts), key=("warning", "critical").index),
            open=latest.open,
            first_s=first,
            last_s=last,
            alerts=alerts,
            latest=dict(latest.payload),
            reasons=tuple(Reason.parse(str(r)) for r in latest.payload.get("reasons") or ()),
            points=points,
            writers=_tree(seen, touched),
            actions=sorted(actions, key=lambda a: a.requested_at_s),
            host=self.host_row(latest.host_id),
        )

    def _page(self, fetch: Callable[[int], Sequence[Any]], page: int) -> Page:
        page = min(max(page, 1), self.max_pages)
        wanted = page * self.per_page
        found = fetch(wanted + 1)
        items = found[wanted - self.per_page : wanted]
        return Page(items, page, len(found) > wanted)

    def alerts(self, page: int) -> Page:
        return self._page(lambda n: self.store.list_alerts(limit=n), page)

    def action_list(self, page: int) -> Page:
        return self._page(lambda n: self.store.list_actions(limit=n), page)

    def audit(self, page: int) -> Page:
        return self._page(lambda n: self.store.audit_log(limit=n), page)

    def change_marker(self) -> str:
        alerts = self.store.list_alerts(limit=1)
        actions = self.store.list_actions(limit=1)
        a = alerts[0] if alerts else None
        c = actions[0] if actions else None
        return "|".join(
            (
                a.alert_id if a else "",
                str(a.open) if a else "",
                f"{a.window_end_s}" if a else "",
                c.action_id if c else "",
                c.status if c else "",
            )
        )

    async def act(self, host_id: str, what: str, who: str) -> Outcome:
        """release (processes stay stopped), resume or kill (release, then that), isolate."""
        if what == "isolate":
            return await self.actions.isolate(host_id, who)
        if what == "release":
            return await self.actions.release(host_id, who, "keep")
        if what in ("resume", "kill"):
            return await self.actions.release(host_id, who, what)
        raise ValueError(f"unknown action {what!r}")


MAX_WRITERS = 40


def _tree(seen: dict[int, pb.ProcessSample], touched: dict[int, tuple[int, int]]) -> list[Writer]:
    """The incident's writers by process tree (the root the agent suspends by): each tree's
    root first (named ``?`` when it wrote nothing itself), then its writers, busiest tree
    first, at most ``MAX_WRITERS`` rows."""
    trees: dict[int, list[int]] = {}
    for pid, s in seen.items():
        trees.setdefault(s.tree_root_pid or pid, []).append(pid)

    def files(root: int) -> int:
        return sum(touched[p][0] for p in trees[root])

    out: list[Writer] = []
    for root in sorted(trees, key=lambda r: -files(r)):
        if root in seen:
            s = seen[root]
            out.append(Writer(root, s.ppid, s.name, s.exe, s.user, root, *touched[root], 0))
        else:
            out.append(Writer(root, 0, "?", "", "", root, 0, 0, 0))
        for pid in sorted(p for p in trees[root] if p != root):
            s = seen[pid]
            out.append(Writer(pid, s.ppid, s.name, s.exe, s.user, root, *touched[pid], 1))
    return out[:MAX_WRITERS]
