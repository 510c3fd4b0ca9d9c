"""Charts for the operators' pages, drawn on the server as inline SVG (no script, no request to
anyone else): horizontal bars, deadline margins, and a loan's timeline with one lane per chain.

Every text that reaches the SVG goes through format_html, so a value from a chain (an event
name, a txid) cannot inject markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# Colours by risk, shared with the dashboard's tables.
RISK_COLOURS = {
    "passed": "#7f1d1d",
    "critical": "#dc2626",
    "warning": "#d97706",
    "ok": "#16a34a",
}
BAR_COLOUR = "#2563eb"
MUTED = "#6b7280"
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    colour: str = BAR_COLOUR
    note: str = ""  # printed after the value


def bar_chart(bars: Sequence[Bar], *, title: str, width: int = 420) -> SafeString:
    """One horizontal bar per row, scaled to the largest value; zeros keep their row."""
    row, label_width, top = 20, 240, 22
    height = top + row * len(bars) + 6
    scale = (width - label_width - 70) / (max((b.value for b in bars), default=0) or 1)
    rows = format_html_join(
        "",
        '<text x="{}" y="{}" text-anchor="end">{}</text>'
        '<rect x="{}" y="{}" width="{}" height="14" fill="{}"><title>{}: {}</title></rect>'
        '<text x="{}" y="{}" fill="{}">{}{}</text>',
        (
            (
                label_width - 6,
                top + i * row + 11,
                bar.label,
                label_width,
                top + i * row,
                round(bar.value * scale, 1) if bar.value else 0,
                bar.colour,
                bar.label,
                bar.value,
                label_width + round(bar.value * scale) + 4,
                top + i * row + 11,
                MUTED,
                bar.value,
                f" {bar.note}" if bar.note else "",
            )
            for i, bar in enumerate(bars)
        ),
    )
    return format_html(
        '<svg class="btcloan-chart" role="img" aria-label="{}" width="{}" height="{}" '
        'viewBox="0 0 {} {}" xmlns="http://www.w3.org/2000/svg" {}>'
        '<text x="0" y="13" font-weight="bold">{}</text>{}</svg>',
        title,
        width,
        height,
        width,
        height,
        mark_safe(FONT),  # noqa: S308 - a constant of ours
        title,
        rows,
    )


@dataclass(frozen=True)
class Margin:
    label: str
    blocks_left: int
    risk: str


def margin_chart(margins: Sequence[Margin], *, title: str, width: int = 520) -> SafeString:
    """Blocks left before each deadline as bars from a zero line; passed ones point left."""
    row, label_width, top = 18, 190, 22
    height = top + row * max(len(margins), 1) + 6
    most = max((abs(m.blocks_left) for m in margins), default=1) or 1
    zero = label_width + 60
    scale = (width - zero - 50) / most
    rows = format_html_join(
        "",
        '<text x="{}" y="{}" text-anchor="end">{}</text>'
        '<rect x="{}" y="{}" width="{}" height="12" fill="{}"><title>{}: {} blocks left</title>'
        '</rect><text x="{}" y="{}" fill="{}">{}</text>',
        (
            (
                label_width - 6,
                top + i * row + 10,
                m.label,
                zero + min(m.blocks_left, 0) * scale if m.blocks_left < 0 else zero,
                top + i * row,
                max(round(abs(m.blocks_left) * scale, 1), 1),
                RISK_COLOURS[m.risk],
                m.label,
                m.blocks_left,
                zero + max(m.blocks_left, 0) * scale + 4,
                top + i * row + 10,
                RISK_COLOURS[m.risk],
                m.blocks_left,
            )
            for i, m in enumerate(margins)
        ),
    )
    return format_html(
        '<svg class="btcloan-chart" role="img" aria-label="{}" width="{}" height="{}" '
        'viewBox="0 0 {} {}" xmlns="http://www.w3.org/2000/svg" {}>'
        '<text x="0" y="13" font-weight="bold">{}</text>'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}"/>{}</svg>',
        title,
        width,
        height,
        width,
        height,
        mark_safe(FONT),  # noqa: S308 - a constant of ours
        title,
        zero,
        top - 4,
        zero,
        height,
        MUTED,
        rows,
    )


@dataclass(frozen=True)
class Mark:
    """Something on a lane at a block: an event, a transaction, a deadline ahead."""

    block: int
    label: str
    kind: str  # "event", "pending" (seen, no block yet) or "deadline"
    colour: str = BAR_COLOUR


@dataclass(frozen=True)
class Lane:
    name: str
    head: int | None
    marks: Sequence[Mark]


def timeline_chart(lanes: Sequence[Lane], *, width: int = 1000) -> SafeString:
    """One lane per chain on its own block axis (the chains' blocks do not line up in time):
    what happened at which block, the head ("now") and the deadlines ahead as flags."""
    lane_height, top = 132, 8
    height = top + lane_height * len(lanes)
    parts = [_lane(lane, top + i * lane_height, width) for i, lane in enumerate(lanes)]
    return format_html(
        '<svg class="btcloan-timeline-chart" role="img" aria-label="the loan on both chains" '
        'width="100%" style="max-width: {}px" viewBox="0 0 {} {}" '
        'xmlns="http://www.w3.org/2000/svg" {}>{}</svg>',
        width,
        width,
        height,
        mark_safe(FONT),  # noqa: S308 - a constant of ours
        format_html_join("", "{}", ((part,) for part in parts)),
    )


def _lane(lane: Lane, y: int, width: int) -> SafeString:
    left, right = 150, width - 70
    blocks = [m.block for m in lane.marks] + ([lane.head] if lane.head is not None else [])
    if not blocks:
        return format_html(
            '<text x="0" y="{}" font-weight="bold">{}</text>'
            '<text x="{}" y="{}" fill="{}">nothing yet</text>',
            y + 40,
            lane.name,
            left,
            y + 40,
            MUTED,
        )
    first, last = min(blocks), max(blocks)
    span = max(last - first, 1)
    pad = max(span // 20, 1)
    first, last = first - pad, last + pad

    def x(block: int) -> float:
        return round(left + (block - first) * (right - left) / (last - first), 1)

    axis = y + 74
    marks = sorted(lane.marks, key=lambda m: m.block)
    drawn = format_html_join(
        "", "{}", ((_mark(m, x(m.block), axis, i),) for i, m in enumerate(marks))
    )
    head = (
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#111827" stroke-dasharray="3 2"/>'
            '<text x="{}" y="{}" text-anchor="middle" font-weight="bold">now #{}</text>',
            x(lane.head),
            axis - 58,
            x(lane.head),
            axis + 56,
            x(lane.head),
            axis - 62,
            lane.head,
        )
        if lane.head is not None
        else ""
    )
    return format_html(
        '<text x="0" y="{}" font-weight="bold">{}</text>'
        '<text x="0" y="{}" fill="{}">blocks {} to {}</text>'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}"/>{}{}',
        axis - 4,
        lane.name,
        axis + 12,
        MUTED,
        first + pad,
        last - pad,
        left,
        axis,
        right,
        axis,
        MUTED,
        head,
        drawn,
    )


def _mark(mark: Mark, x: float, axis: int, index: int) -> SafeString:
    """A dot (event), a hollow dot (seen, not yet in a block) or a flag (deadline); labels
    take turns over three rows above and three below the axis, so neighbours do not overwrite
    each other."""
    level = index % 6 // 2
    label_y = axis - 26 - 15 * level if index % 2 == 0 else axis + 22 + 15 * level
    if mark.kind == "deadline":
        shape = format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"/>'
            '<polygon points="{},{} {},{} {},{}" fill="{}"/>',
            x,
            axis - 22,
            x,
            axis + 8,
            mark.colour,
            x,
            axis - 22,
            x + 10,
            axis - 18,
            x,
            axis - 14,
            mark.colour,
        )
    else:
        fill = "white" if mark.kind == "pending" else mark.colour
        shape = format_html(
            '<circle cx="{}" cy="{}" r="5" fill="{}" stroke="{}" stroke-width="2"/>',
            x,
            axis,
            fill,
            mark.colour,
        )
    return format_html(
        '<g>{}<text x="{}" y="{}" text-anchor="middle" fill="{}">{}</text>'
        "<title>{} at block {}</title></g>",
        shape,
        x,
        label_y,
        mark.colour,
        mark.label,
        mark.label,
        mark.block,
    )
