"""How one tocsin event looks to each kind of receiver.

Contract: ``render(fmt, event)`` returns the JSON value to POST for an event
dict (``event`` is "alert", "action", "fleet_guard", "host_silent", "hook",
"test", ...). It never raises for a missing field: every format falls back to
``headline(event)``, one human sentence. Formats:

- ``generic``: the event itself (the documented tocsin body).
- ``slack``: ``{"text", "blocks"}`` (incoming webhook; ``text`` is the
  notification fallback).
- ``mattermost``: ``{"text", "attachments"}`` (Slack-compatible attachments,
  which Mattermost renders with a colour bar and fields).
- ``teams``: a message carrying one Adaptive Card (Teams incoming webhooks and
  Power Automate "workflows" both accept it).
- ``alertmanager``: a list of one alert for ``POST /api/v2/alerts`` with
  labels (alertname, host_id, severity, event) and annotations (summary,
  description, alert_id).

Every string an event carries may be attacker text (process names, paths,
extensions, note names, agent details). The chat formats get it as one
printable line (``tocsin.v1.text.printable``: no newline, no control or bidi
character) with its markup neutralised: Slack text objects are ``verbatim``
(no auto-links, no mentions), ``&``, ``<``, ``>`` are escaped (so no
``<url|text>`` link or ``<!channel>``) and ``@`` broken; Mattermost and Teams markdown has its
special characters backslash-escaped, ``@`` mentions and bare ``scheme://``
links broken by a word joiner (U+2060). Alertmanager labels and annotations
are made printable. ``generic`` is the event as is: JSON escapes it.
"""

from __future__ import annotations

import re
from typing import Any

from tocsin.v1.text import printable

FORMATS = ("generic", "slack", "mattermost", "teams", "alertmanager")
_COLOURS = {"critical": "#d40000", "warning": "#e8a000"}
_MARKDOWN = re.compile(r"([\\`*_~\[\](){}<>#|!])")
_JOINER = "\u2060"


def slack_text(text: object) -> str:
    """Attacker text for Slack mrkdwn: one printable line, ``&<>`` escaped, no mention."""
    line = printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return line.replace("@", "@" + _JOINER)


def markdown_text(text: object) -> str:
    """Attacker text for Markdown (Mattermost, Teams): one printable line, inert."""
    line = _MARKDOWN.sub(r"\\\1", printable(text))
    return line.replace("@", "@" + _JOINER).replace("://", ":" + _JOINER + "//")


def headline(event: dict[str, Any]) -> str:
    """One sentence for a human, whatever the event."""
    kind = str(event.get("event", "event"))
    host = str(event.get("host_id", "?"))
    if kind == "alert" and event.get("summary"):
        return str(event["summary"])
    if kind == "alert":
        return f"{str(event.get('severity', '')).capitalize()} on {host}"
    if kind == "action":
        detail = f" ({event['detail']})" if event.get("detail") else ""
        return f"tocsin {event.get('action', '?')} on {host}: {event.get('status', '?')}{detail}"
    if kind == "fleet_guard":
        held = ", ".join(map(str, event.get("held_hosts", []))) or host
        return (
            f"tocsin fleet guard: isolation of {held} is HELD "
            f"({event.get('isolations_last_minute', '?')} hosts isolated in the last minute, "
            f"limit {event.get('limit', '?')}); a human must decide: "
            f"tocsin isolate HOST to isolate anyway"
        )
    if kind == "host_silent":
        return f"tocsin: {host} went silent ({event.get('detail', 'no telemetry')})"
    if kind == "test":
        return "tocsin webhook test: if you read this, the webhook works"
    return f"tocsin {kind} on {host}"


def _facts(event: dict[str, Any]) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = [("Host", str(event.get("host_id", "-")))]
    if event.get("severity"):
        facts.append(("Severity", str(event["severity"])))
    if event.get("score") is not None:
        facts.append(("Score", f"{float(event['score']):.3f}"))
    proc = event.get("process")
    if isinstance(proc, dict):
        facts.append(("Process", f"{proc.get('name', '?')} (pid {proc.get('pid', '?')})"))
    if event.get("reasons"):
        facts.append(("Reasons", ", ".join(map(str, event["reasons"]))))
    actions = event.get("actions")
    if actions:
        facts.append(
            ("Actions", ", ".join(f"{a.get('action')} {a.get('status')}" for a in actions))
        )
    for key in ("action", "status", "detail", "detected_at", "at", "alert_id"):
        if event.get(key):
            facts.append((key.replace("_", " ").capitalize(), str(event[key])))
    return facts


def _slack(event: dict[str, Any]) -> dict[str, Any]:
    text = slack_text(headline(event))
    fields = [
        {"type": "mrkdwn", "text": f"*{k}*\n{slack_text(v)}", "verbatim": True}
        for k, v in _facts(event)[:10]
    ]
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}},
            {"type": "section", "fields": fields},
        ],
    }


def _mattermost(event: dict[str, Any]) -> dict[str, Any]:
    text = markdown_text(headline(event))
    return {
        "text": text,
        "attachments": [
            {
                "fallback": text,
                "color": _COLOURS.get(str(event.get("severity")), "#3060a0"),
                "title": f"tocsin {event.get('event', 'event')}",
                "fields": [
                    {"title": k, "value": markdown_text(v), "short": len(v) < 40}
                    for k, v in _facts(event)
                ],
            }
        ],
    }


def _teams(event: dict[str, Any]) -> dict[str, Any]:
    text = markdown_text(headline(event))
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "size": "Medium",
                "weight": "Bolder",
                "wrap": True,
                "color": "Attention" if event.get("severity") == "critical" else "Default",
                "text": f"tocsin {event.get('event', 'event')}",
            },
            {"type": "TextBlock", "wrap": True, "text": text},
            {
                "type": "FactSet",
                "facts": [{"title": k, "value": markdown_text(v)} for k, v in _facts(event)],
            },
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _alertmanager(event: dict[str, Any]) -> list[dict[str, Any]]:
    kind = str(event.get("event", "event"))
    name = {
        "alert": "TocsinRansomware",
        "fleet_guard": "TocsinFleetGuard",
        "host_silent": "TocsinHostSilent",
        "action": "TocsinAction",
    }.get(kind, "TocsinEvent")
    severity = str(event.get("severity") or ("critical" if kind == "fleet_guard" else "info"))
    labels = {
        "alertname": name,
        "host_id": printable(event.get("host_id", "")),
        "severity": printable(severity),
        "event": printable(kind),
        "source": "tocsin",
    }
    if event.get("incident_id"):
        labels["incident_id"] = printable(event["incident_id"])
    annotations = {
        "summary": printable(headline(event)),
        "description": printable("; ".join(f"{k}: {v}" for k, v in _facts(event))),
    }
    if event.get("alert_id"):
        annotations["alert_id"] = printable(event["alert_id"])
    alert: dict[str, Any] = {"labels": labels, "annotations": annotations}
    starts = event.get("detected_at") or event.get("at")
    if starts:
        alert["startsAt"] = str(starts)
    return [alert]


def render(fmt: str, event: dict[str, Any]) -> Any:
    """The JSON value to POST for ``event`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "generic":
        return event
    if fmt == "slack":
        return _slack(event)
    if fmt == "mattermost":
        return _mattermost(event)
    if fmt == "teams":
        return _teams(event)
    if fmt == "alertmanager":
        return _alertmanager(event)
    raise ValueError(f"unknown webhook format {fmt!r}; known: {', '.join(FORMATS)}")
