"""Readable tables (and ``--json``) for ``tocsin actions`` and ``tocsin incidents``.

Contract: ``actions_rows`` and ``incident_rows`` turn Operator API replies into
lists of rows whose first row is the header; ``table(rows)`` aligns them in
columns. ``incidents`` groups alerts by their ``incident_id`` (one incident =
one process tree on one host) and attaches every action taken for any of its
alerts, with the outcome reported. Every cell goes through
``tocsin.v1.text.printable`` in ``table``: a process name or a detail cannot
break a row, move the cursor or reverse the text. Nothing here talks to the
network.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from tocsin.v1 import operator_pb2 as op
from tocsin.v1.text import printable


def when(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    return dt.datetime.fromtimestamp(ts.seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def actions_rows(actions: Sequence[op.ActionInfo]) -> list[list[str]]:
    rows = [["REQUESTED", "HOST", "ACTION", "BY", "STATUS", "FINISHED", "PIDS", "DETAIL"]]
    for a in actions:
        rows.append(
            [
                when(a.requested_at),
                a.host_id,
                a.kind,
                a.requested_by,
                a.status,
                when(a.finished_at),
                ",".join(map(str, a.pids)) or "-",
                _short(a.detail) or "-",
            ]
        )
    return rows


def incidents(
    alerts: Sequence[op.AlertInfo], actions: Sequence[op.ActionInfo]
) -> list[dict[str, Any]]:
    """One dict per incident, newest first: host, first/last alert, severity, actions."""
    by_alert: dict[str, list[op.ActionInfo]] = {}
    for a in actions:
        if a.alert_id:
            by_alert.setdefault(a.alert_id, []).append(a)
    found: dict[str, dict[str, Any]] = {}
    for al in sorted(alerts, key=lambda a: (a.detected_at.seconds, a.detected_at.nanos)):
        payload = json.loads(al.json) if al.json else {}
        key = str(payload.get("incident_id") or al.alert_id)
        inc = found.setdefault(
            key,
            {
                "incident_id": key,
                "host_id": al.host_id,
                "first_alert": when(al.detected_at),
                "severity": al.severity,
                "process": al.process,
                "alerts": [],
                "actions": [],
                "reasons": [],
            },
        )
        inc["last_alert"] = when(al.detected_at)
        inc["alerts"].append(al.alert_id)
        if al.severity == "critical":
            inc["severity"] = "critical"
        inc["reasons"] = sorted(set(inc["reasons"]) | set(al.reasons))
        mine = by_alert.get(al.alert_id, [])
        for act in sorted(mine, key=lambda x: (x.requested_at.seconds, x.requested_at.nanos)):
            inc["actions"].append(
                {
                    "action": act.kind,
                    "status": act.status,
                    "by": act.requested_by,
                    "at": when(act.requested_at),
                    "detail": act.detail,
                }
            )
    return sorted(found.values(), key=lambda i: i["last_alert"], reverse=True)


def incident_rows(items: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = [
        ["LAST ALERT", "HOST", "SEVERITY", "ALERTS", "PROCESS", "ACTIONS (outcome)", "INCIDENT"]
    ]
    for i in items:
        acts = ", ".join(f"{a['action']} {a['status']}" for a in i["actions"]) or "-"
        rows.append(
            [
                i["last_alert"],
                i["host_id"],
                i["severity"],
                str(len(i["alerts"])),
                i["process"] or "-",
                _short(acts, 60),
                i["incident_id"],
            ]
        )
    return rows
