"""What the collector tells the outside world: one typed value per event, one JSON form.

Contract: each event is a frozen dataclass whose ``to_json()`` returns the body
posted to the webhooks (and rendered by ``tocsin.collector.formats``), given to
operator hooks on stdin, and kept as the stored alert's payload, which the CLI
and the console show. Bodies are plain JSON values (str, int, float, bool,
None, lists, dicts); times are RFC 3339 UTC with milliseconds (``rfc3339``);
``reasons`` are the text forms of ``tocsin.collector.reasons.Reason``. The
fields of each body are the webhook contract (docs/webhooks.md; pinned by
tests/test_response_webhook_json.py): add fields, never rename or drop one.

- ``AlertEvent`` (``event`` "alert"): an incident opened, escalated or named.
- ``ActionEvent`` ("action"): an agent's report on a command, or an operator hook's run.
- ``FleetGuardEvent`` ("fleet_guard"): an automatic isolation held by the fleet guard.
- ``SilenceEvent`` ("host_silent", "host_back"), ``DiskEvent`` ("disk_high"): about a
  host (or the collector itself) rather than a window: alert-shaped (no score,
  process or action) plus the fields of their kind.
- ``WebhookTestEvent`` ("test"): ``tocsin webhook test``'s message.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tocsin.collector.decide import ProcessInfo
from tocsin.collector.reasons import Reason, texts

_FIRST_S = dt.datetime(1, 1, 1, tzinfo=dt.UTC).timestamp()
_LAST_S = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()


def rfc3339(t_s: float) -> str:
    """RFC 3339 UTC with milliseconds and a Z; never raises (held to years 1..9999)."""
    t_s = min(max(t_s, _FIRST_S), _LAST_S) if t_s == t_s else 0.0
    stamp = dt.datetime.fromtimestamp(t_s, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@dataclass(frozen=True)
class ActionTaken:
    """One entry of an alert's ``actions``: what tocsin did or would do, and how it went."""

    action: str
    status: str
    detail: str = ""
    pids: tuple[int, ...] | None = None
    clients: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "status": self.status}
        if self.detail:
            out["detail"] = self.detail
        if self.pids is not None:
            out["pids"] = list(self.pids)
        if self.clients is not None:
            out["clients"] = list(self.clients)
        return out


@dataclass(frozen=True)
class AlertEvent:
    alert_id: str
    incident_id: str
    host_id: str
    severity: str
    score: float | None
    detected_at_s: float
    window_start_s: float
    window_end_s: float
    reasons: tuple[Reason, ...]
    process: ProcessInfo | None
    actions: tuple[ActionTaken, ...]
    summary: str
    example_paths: tuple[str, ...]
    mode: str
    drill: bool
    top_features: tuple[tuple[str, float], ...]
    explanation: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "alert",
            "alert_id": self.alert_id,
            "incident_id": self.incident_id,
            "host_id": self.host_id,
            "severity": self.severity,
            "score": self.score,
            "detected_at": rfc3339(self.detected_at_s),
            "window_start": rfc3339(self.window_start_s),
            "window_end": rfc3339(self.window_end_s),
            "reasons": texts(self.reasons),
            "process": self.process.as_json() if self.process else None,
            "actions": [a.to_json() for a in self.actions],
            "summary": self.summary,
            "example_paths": list(self.example_paths),
            "mode": self.mode,
            "drill": self.drill,
            "top_features": [[name, round(v, 4)] for name, v in self.top_features],
            "explanation": self.explanation,
        }


@dataclass(frozen=True)
class ActionEvent:
    alert_id: str
    host_id: str
    action: str
    status: str
    detail: str
    pids: tuple[int, ...]
    command_id: str
    local: bool
    at_s: float
    mode: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "action",
            "alert_id": self.alert_id,
            "host_id": self.host_id,
            "action": self.action,
            "status": self.status,
            "detail": self.detail,
            "pids": list(self.pids),
            "command_id": self.command_id,
            "local": self.local,
            "at": rfc3339(self.at_s),
            "mode": self.mode,
        }


@dataclass(frozen=True)
class FleetGuardEvent:
    alert_id: str
    host_id: str
    held_hosts: tuple[str, ...]
    isolations_last_minute: int
    limit: int
    detail: str
    at_s: float
    mode: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "fleet_guard",
            "alert_id": self.alert_id,
            "host_id": self.host_id,
            "severity": "critical",
            "held_hosts": list(self.held_hosts),
            "isolations_last_minute": self.isolations_last_minute,
            "limit": self.limit,
            "detail": self.detail,
            "at": rfc3339(self.at_s),
            "mode": self.mode,
        }


def _about_host(
    kind: str,
    alert_id: str,
    host_id: str,
    severity: str,
    at_s: float,
    window_s: tuple[float, float],
) -> dict[str, Any]:
    """The alert-shaped head of an event about a host: no score, process or action."""
    return {
        "event": kind,
        "alert_id": alert_id,
        "host_id": host_id,
        "severity": severity,
        "score": None,
        "detected_at": rfc3339(at_s),
        "window_start": rfc3339(window_s[0]),
        "window_end": rfc3339(window_s[1]),
    }


@dataclass(frozen=True)
class SilenceEvent:
    """``host_silent`` (severity "warning") or ``host_back`` ("info")."""

    kind: str
    alert_id: str
    host_id: str
    severity: str
    last_seen_s: float
    now_s: float
    silent_after_s: float

    @property
    def silent_for_s(self) -> float:
        return round(self.now_s - self.last_seen_s, 1)

    def to_json(self) -> dict[str, Any]:
        silent_for_s = self.silent_for_s
        out = _about_host(
            self.kind,
            self.alert_id,
            self.host_id,
            self.severity,
            self.now_s,
            (self.last_seen_s, self.now_s),
        )
        summary = (
            f"{self.host_id} has sent nothing for {silent_for_s:g} s (no goodbye)"
            if self.kind == "host_silent"
            else f"{self.host_id} is back after {silent_for_s:g} s of silence"
        )
        return out | {
            "reasons": [Reason.silence(self.kind, silent_for_s).text],
            "process": None,
            "actions": [],
            "last_seen": rfc3339(self.last_seen_s),
            "silent_for_s": silent_for_s,
            "silent_after_s": self.silent_after_s,
            "summary": summary,
        }


@dataclass(frozen=True)
class DiskEvent:
    """``disk_high``: the collector's database disk passed its warning ratio."""

    alert_id: str
    collector_name: str
    at_s: float
    used_percent: float
    free_bytes: int
    summary: str

    def to_json(self) -> dict[str, Any]:
        out = _about_host(
            "disk_high",
            self.alert_id,
            self.collector_name,
            "warning",
            self.at_s,
            (self.at_s, self.at_s),
        )
        return out | {
            "reasons": [Reason.disk_high(self.used_percent).text],
            "process": None,
            "actions": [],
            "disk_used_percent": self.used_percent,
            "disk_free_bytes": self.free_bytes,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class WebhookTestEvent:
    """``test``: what ``tocsin webhook test`` sends (no window, no score)."""

    host_id: str
    at_s: float
    requested_by: str
    summary: str = "tocsin webhook test: if you read this, the webhook works"

    def to_json(self) -> dict[str, Any]:
        at = rfc3339(self.at_s)
        return {
            "event": "test",
            "alert_id": "",
            "host_id": self.host_id,
            "severity": "warning",
            "at": at,
            "detected_at": at,
            "summary": self.summary,
            "requested_by": self.requested_by,
            "reasons": [],
            "actions": [],
            "process": None,
        }
