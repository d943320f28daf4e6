"""Charts drawn on the server as SVG: no script, nothing fetched, every label escaped.

``timeline(points, threshold, marks, labels)`` draws the windows around an
incident: files written (grey bars) and destroyed (red bars) on the left
scale, the anomaly score (blue line) against the threshold (dashed) on the
right one, and each action as a labelled vertical line. ``hourly(bars,
marks, labels)`` draws 24 hours of a host's rollups: files written and destroyed each
hour, side by side on one scale, the alerts as marks. Both return markup to
embed as is (``markupsafe.Markup``); text inside comes from ``escape``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

W, H = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 44, 44, 16, 40


@dataclass(frozen=True)
class Point:
    t_s: float
    written: int
    destroyed: int
    score: float | None


@dataclass(frozen=True)
class Mark:
    t_s: float
    label: str


@dataclass(frozen=True)
class Labels:
    written: str
    destroyed: str
    score: str
    threshold: str
    empty: str


def _x(t: float, t0: float, t1: float) -> float:
    span = max(t1 - t0, 1e-9)
    return LEFT + (t - t0) / span * (W - LEFT - RIGHT)


def _frame(title: str, body: list[str]) -> Markup:
    head = (
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )
    return Markup(head + "".join(body) + "</svg>")


def _legend(labels: Labels, with_score: bool) -> list[str]:
    items = [("#9aa5b1", labels.written), ("#c0392b", labels.destroyed)]
    if with_score:
        items += [("#1f5fa8", labels.score), ("#555", labels.threshold)]
    out, x = [], LEFT
    for colour, text in items:
        out.append(f'<rect x="{x}" y="{H - 14}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{H - 5}" font-size="11">{escape(text)}</text>')
        x += 24 + 7 * len(text)
    return out


def timeline(
    points: Sequence[Point], threshold: float, marks: Sequence[Mark], labels: Labels
) -> Markup:
    if not points:
        return _frame(labels.empty, [f'<text x="{LEFT}" y="40">{escape(labels.empty)}</text>'])
    t0 = min(p.t_s for p in points)
    t1 = max([p.t_s for p in points] + [m.t_s for m in marks])
    t1 = max(t1, t0 + 1.0)
    peak = max(max(p.written, p.destroyed) for p in points) or 1
    scores = [p.score for p in points if p.score is not None]
    top_score = max([threshold, *scores]) * 1.1 or 1.0
    plot_h = H - TOP - BOTTOM
    bar_w = max(2.0, (W - LEFT - RIGHT) / max(len(points), 1) * 0.45)
    body = [
        f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#333"/>',
        f'<text x="4" y="{TOP + 10}" font-size="11">{peak}</text>',
    ]
    for p in points:
        x = _x(p.t_s, t0, t1)
        for value, colour, dx in ((p.written, "#9aa5b1", 0.0), (p.destroyed, "#c0392b", bar_w)):
            h = value / peak * plot_h
            body.append(
                f'<rect x="{x + dx - bar_w:.1f}" y="{H - BOTTOM - h:.1f}" width="{bar_w:.1f}"'
                f' height="{h:.1f}" fill="{colour}"/>'
            )
    if scores:
        y_thr = H - BOTTOM - threshold / top_score * plot_h
        body.append(
            f'<line x1="{LEFT}" y1="{y_thr:.1f}" x2="{W - RIGHT}" y2="{y_thr:.1f}"'
            ' stroke="#555" stroke-dasharray="6 4"/>'
        )
        line = " ".join(
            f"{_x(p.t_s, t0, t1):.1f},{H - BOTTOM - p.score / top_score * plot_h:.1f}"
            for p in points
            if p.score is not None
        )
        body.append(f'<polyline points="{line}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
    body += _marks(marks, t0, t1)
    for t, anchor in ((t0, "start"), (t1, "end")):
        stamp = time.strftime("%H:%M:%S", time.gmtime(t))
        body.append(
            f'<text x="{_x(t, t0, t1):.1f}" y="{H - BOTTOM + 14}" font-size="10"'
            f' text-anchor="{anchor}">{stamp} UTC</text>'
        )
    return _frame(labels.written, body + _legend(labels, bool(scores)))


def _marks(marks: Sequence[Mark], t0: float, t1: float) -> list[str]:
    """Orange lines with their labels, staggered so that actions at the same time stay legible."""
    out = []
    for i, m in enumerate(sorted(marks, key=lambda m: m.t_s)):
        if not t0 <= m.t_s <= t1:
            continue
        x = _x(m.t_s, t0, t1)
        anchor = "end" if x > W - RIGHT - 80 else "start"
        dx = -3 if anchor == "end" else 3
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#e67e22"'
            ' stroke-width="2"/>'
        )
        out.append(
            f'<text x="{x + dx:.1f}" y="{TOP + 10 + 13 * (i % 4)}" font-size="11"'
            f' fill="#a04000" text-anchor="{anchor}">{escape(m.label)}</text>'
        )
    return out


@dataclass(frozen=True)
class Bar:
    hour_s: int
    written: int
    destroyed: int


def hourly(bars: Sequence[Bar], marks: Sequence[Mark], labels: Labels, now_s: float) -> Markup:
    t1 = (int(now_s) // 3600 + 1) * 3600
    t0 = t1 - 24 * 3600
    shown = [b for b in bars if t0 <= b.hour_s < t1]
    peak = max([max(b.written, b.destroyed) for b in shown] + [1])
    plot_h = H - TOP - BOTTOM
    bar_w = (W - LEFT - RIGHT) / 24 * 0.4
    body = [
        f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#333"/>',
        f'<text x="4" y="{TOP + 10}" font-size="11">{peak}</text>',
    ]
    for b in shown:
        x = _x(b.hour_s, t0, t1)
        for value, colour, dx in ((b.written, "#9aa5b1", 0.0), (b.destroyed, "#c0392b", bar_w)):
            h = value / peak * plot_h
            body.append(
                f'<rect x="{x + dx:.1f}" y="{H - BOTTOM - h:.1f}" width="{bar_w:.1f}"'
                f' height="{h:.1f}" fill="{colour}"/>'
            )
    for hour in range(0, 24, 3):
        t = t0 + hour * 3600
        body.append(
            f'<text x="{_x(t, t0, t1):.1f}" y="{H - BOTTOM + 14}" font-size="10">'
            f"{(t // 3600) % 24:02d}h</text>"
        )
    body += _marks(marks, t0, t1)
    return _frame(labels.written, body + _legend(labels, False))
