"""Server-rendered SVG charts for the Watch page (admin/watch.py): markup, not script, so the console's CSP
(no inline script or style) allows them. Colours come from classes (static/watch.css), never a style
attribute. Each chart is ``role="img"`` with a <title> and a <desc> naming its numbers in words; the page
puts the same numbers in a data table next to it for screen readers and for copying.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Sequence

WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28  # plot margins, for the axis labels


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per week; None: no value (no card shown that week)
    css_class: str  # line-shown, line-overridden, ...


def _ticks(top: float, percent: bool) -> list[float]:
    if percent:
        return [0.0, 0.25, 0.5, 0.75, 1.0]
    if top <= 4:
        return [float(v) for v in range(0, int(top) + 1)]
    step = _nice_step(top / 4)
    return [step * i for i in range(0, int(top / step) + 1)]


def _nice_step(raw: float) -> float:
    magnitude = 10 ** len(str(int(raw))) / 10
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _label(value: float, percent: bool) -> str:
    return f"{value:.0%}" if percent else f"{value:g}"


def line_chart(chart_id: str, title: str, weeks: Sequence[str], series: Sequence[Series], *,
               percent: bool = False, band: tuple[float, float] | None = None,
               band_span: tuple[int, int] | None = None, highlight: int | None = None, description: str = "") -> str:
    """A line chart, one point per week; ``band`` shades the alarm's usual range over the weeks
    ``band_span`` (first, last index; default all), ``highlight`` marks the week checked. ``percent``:
    values are shares (0..1)."""
    present = [v for s in series for v in s.values if v is not None]
    top = 1.0 if percent else max([*present, band[1] if band else 0.0, 1.0])
    ticks = _ticks(top, percent)
    top = max(top, ticks[-1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = max(len(weeks), 1)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(value, top) / top)

    parts = [f'<svg class="chart" role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="xMinYMin meet" id="{chart_id}">',
             f'<title id="{chart_id}-title">{escape(title)}</title>',
             f'<desc id="{chart_id}-desc">{escape(description or _describe(weeks, series, percent))}</desc>']
    if band is not None:
        low, high = band
        first, last = band_span or (0, count - 1)
        left, right = (x(first), x(last)) if count > 1 else (LEFT, LEFT + plot_w)
        parts.append(f'<rect class="band" x="{left:.1f}" y="{y(high):.1f}" width="{max(right - left, 2):.1f}" '
                     f'height="{max(y(low) - y(high), 1):.1f}"><title>usual range {_label(low, percent)} to '
                     f'{_label(high, percent)}</title></rect>')
    for tick in ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
                     f'<text class="axis" x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f'{_label(tick, percent)}</text>')
    step = max(1, count // 8)  # about 8 week labels, the last one always
    for i, week in enumerate(weeks):
        if i % step == 0 or i == count - 1:
            parts.append(f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                         f'{escape(week[-3:])}</text>')
    if highlight is not None and 0 <= highlight < count:
        parts.append(f'<line class="checked-week" x1="{x(highlight):.1f}" x2="{x(highlight):.1f}" y1="{TOP}" '
                     f'y2="{TOP + plot_h}"><title>week checked: {escape(weeks[highlight])}</title></line>')
    for s in series:
        points = [(x(i), y(v), weeks[i], v) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            parts.append(f'<polyline class="{escape(s.css_class)}" points="{path}"/>')
        for px, py, week, v in points:
            parts.append(f'<circle class="{escape(s.css_class)}" cx="{px:.1f}" cy="{py:.1f}" r="3">'
                         f'<title>{escape(s.name)} {escape(week)}: {_label(v, percent)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _describe(weeks: Sequence[str], series: Sequence[Series], percent: bool) -> str:
    if not weeks:
        return "no weeks"
    out = []
    for s in series:
        known = [(w, v) for w, v in zip(weeks, s.values) if v is not None]
        if not known:
            out.append(f"{s.name}: no values")
            continue
        high = max(known, key=lambda item: item[1])
        out.append(f"{s.name}: latest {_label(known[-1][1], percent)} in {known[-1][0]}, highest "
                   f"{_label(high[1], percent)} in {high[0]}")
    return f"Weeks {weeks[0]} to {weeks[-1]}. " + "; ".join(out) + ". The table below lists every week."


def spark(chart_id: str, title: str, values: Sequence[float], *, alarm: bool = False) -> str:
    """A small bar chart (cards shown a week) for the overview table."""
    width, height, gap = 130, 28, 1
    count = max(len(values), 1)
    top = max([*values, 1.0])
    bar = (width - gap * (count - 1)) / count
    rects = []
    for i, v in enumerate(values):
        h = max(height * v / top, 0.5 if v else 0)
        rects.append(f'<rect x="{i * (bar + gap):.1f}" y="{height - h:.1f}" width="{bar:.1f}" height="{h:.1f}"/>')
    css = "spark alarm" if alarm else "spark"
    return (f'<svg class="{css}" role="img" aria-labelledby="{chart_id}-title" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}"><title id="{chart_id}-title">{escape(title)}</title>'
            + "".join(rects) + "</svg>")
