"""The feedback report (``cramp-cds feedback report``): per card rule and rule-set version, cards shown,
accepted, overridden, the rates and the top override reasons, as a plain-text table, CSV or a
self-contained HTML page (inline CSS and SVG bar charts: no script, no external resource).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from html import escape
from typing import Callable, Sequence

from cds_service.storage.store import CardStore, ReportRow

FORMATS = ("table", "csv", "html")
TOP_REASONS = 3


def build_report(database_url: str, since: datetime | None = None) -> list[ReportRow]:
    """Read the report from an existing database (StoreUnavailable when there is none or it can't be opened)."""
    store = CardStore(database_url, None, must_exist=True)
    try:
        return store.report(since)
    finally:
        store.close()


def render(rows: Sequence[ReportRow], fmt: str, *, since: datetime | None = None) -> str:
    renderers: dict[str, Callable[..., str]] = {"table": render_table, "csv": render_csv, "html": render_html}
    return renderers[fmt](rows, since=since)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _reasons(row: ReportRow) -> str:
    return "; ".join(f"{r.label} ({r.cards})" for r in row.top_reasons[:TOP_REASONS]) or "-"


def render_table(rows: Sequence[ReportRow], *, since: datetime | None = None) -> str:
    header = ("card", "rule set", "shown", "accepted", "accept %", "overridden", "override %", "top override reasons")
    lines = [header] + [
        (r.rule, r.ruleset_version, str(r.shown), str(r.accepted), _percent(r.accept_rate), str(r.overridden),
         _percent(r.override_rate), _reasons(r))
        for r in rows
    ]
    numeric = {2, 3, 4, 5, 6}
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    title = f"Card feedback{_since_text(since)}"
    body = [fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines[1:]]
    if not rows:
        body.append("(no cards shown)")
    return "\n".join([title, ""] + body) + "\n"


def render_csv(rows: Sequence[ReportRow], *, since: datetime | None = None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    reason_columns = [f"top_reason_{n}{suffix}" for n in range(1, TOP_REASONS + 1)
                      for suffix in ("_system", "_code", "_display", "_cards")]
    writer.writerow(["rule", "ruleset_version", "shown", "accepted", "overridden", "accept_rate",
                     "override_rate", *reason_columns])
    for r in rows:
        reasons: list[object] = []
        for n in range(TOP_REASONS):
            reason = r.top_reasons[n] if n < len(r.top_reasons) else None
            reasons += [reason.system, reason.code, reason.display, reason.cards] if reason else ["", "", "", ""]
        writer.writerow([r.rule, r.ruleset_version, r.shown, r.accepted, r.overridden,
                         _rate(r.accept_rate), _rate(r.override_rate), *["" if v is None else v for v in reasons]])
    return out.getvalue()


def _rate(rate: float | None) -> str:
    return "" if rate is None else f"{rate:.4f}"


def _since_text(since: datetime | None) -> str:
    return f", cards issued since {since.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC" if since else ""


# --- HTML --------------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1d2430;max-width:72rem}
h1{font-size:1.4rem;margin:0 0 .2rem} p.meta{color:#5b6474;margin:0 0 1.5rem}
table{border-collapse:collapse;width:100%;margin-bottom:2rem}
th,td{padding:.45rem .6rem;border-bottom:1px solid #dfe3ea;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:1rem} .sw{display:inline-block;width:.8rem;height:.8rem;
margin-right:.3rem;vertical-align:-.1rem;border-radius:2px}
ol{margin:0;padding-left:1.2rem} svg text{font:11px system-ui,sans-serif;fill:#1d2430}
"""
_ACCEPTED, _OVERRIDDEN, _NONE, _REASON = "#2e7d4f", "#c2410c", "#d5dbe3", "#6b7fa8"


def _outcome_bar(row: ReportRow, width: int = 220, height: int = 16) -> str:
    """One stacked bar: accepted, overridden, and cards with no feedback, as shares of the cards shown."""
    if not row.shown:
        return ""
    parts = [(row.accepted, _ACCEPTED, "accepted"), (row.overridden, _OVERRIDDEN, "overridden"),
             (max(row.shown - row.accepted - row.overridden, 0), _NONE, "no feedback")]
    x, rects = 0.0, []
    for count, colour, label in parts:
        w = width * min(count, row.shown) / row.shown
        if w > 0:
            rects.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" fill="{colour}">'
                         f"<title>{label}: {count}</title></rect>")
        x += w
    return (f'<svg role="img" aria-label="accepted {row.accepted}, overridden {row.overridden} of {row.shown}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(rects)}</svg>')


def _reason_bars(row: ReportRow, width: int = 260) -> str:
    reasons = row.top_reasons[:TOP_REASONS]
    if not reasons:
        return "-"
    top = max(r.cards for r in reasons)
    line, bar_max = 18, width - 40
    rects = []
    for i, r in enumerate(reasons):
        w = bar_max * r.cards / top
        y = i * line * 2
        rects.append(f'<text x="0" y="{y + 11}">{escape(r.label)}</text>'
                     f'<rect x="0" y="{y + 15}" width="{w:.1f}" height="10" fill="{_REASON}"/>'
                     f'<text x="{w + 4:.1f}" y="{y + 24}">{r.cards}</text>')
    height = len(reasons) * line * 2
    return (f'<svg role="img" aria-label="top override reasons" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{"".join(rects)}</svg>')


def render_html(rows: Sequence[ReportRow], *, since: datetime | None = None,
                now: datetime | None = None) -> str:
    generated = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    body_rows = "".join(
        "<tr>"
        f"<td><strong>{escape(r.rule)}</strong></td><td>{escape(r.ruleset_version)}</td>"
        f'<td class="n">{r.shown}</td><td class="n">{r.accepted}<br>{_percent(r.accept_rate)}</td>'
        f'<td class="n">{r.overridden}<br>{_percent(r.override_rate)}</td>'
        f"<td>{_outcome_bar(r)}</td><td>{_reason_bars(r)}</td>"
        "</tr>"
        for r in rows
    ) or '<tr><td colspan="7">No cards shown.</td></tr>'
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{escape(t)}</span>'
                     for c, t in ((_ACCEPTED, "accepted"), (_OVERRIDDEN, "overridden"), (_NONE, "no feedback")))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>leg-cramp-cds: card feedback</title><style>{_CSS}</style></head><body>"
        f"<h1>Card feedback</h1><p class=\"meta\">Per card and rule-set version{escape(_since_text(since))}. "
        f"Generated {generated:%Y-%m-%d %H:%M} UTC. Rates are shares of the cards shown; a card counts once "
        "per outcome however often its feedback was sent.</p>"
        f"<p class=\"legend\">{legend}</p>"
        "<table><thead><tr><th>Card</th><th>Rule set</th><th>Shown</th><th>Accepted</th><th>Overridden</th>"
        "<th>Outcomes</th><th>Top override reasons (cards)</th></tr></thead>"
        f"<tbody>{body_rows}</tbody></table></body></html>\n"
    )
