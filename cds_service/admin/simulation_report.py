"""Reports of a ``Simulation``: a plain-text table, a self-contained HTML page (inline CSS and SVG bar
charts: no scripts, no CDN, opens offline; every text escaped), or JSON.

Patients are named by their source file and Patient.id only.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from cds_service.admin.simulation import Simulation

BAR_WIDTH = 360


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _heading(sim: Simulation) -> list[str]:
    names = [f"{info.path} (version {info.version})" for info in sim.rule_sets]
    lines = [f"Rule set: {names[0]}"]
    if len(names) > 1:
        lines.append(f"Against:  {names[1]}")
    lines.append(f"As of {sim.as_of.isoformat()} (one clock for all); patients evaluated: {len(sim.evaluated)}"
                 + (f"; unreadable: {len(sim.errors)}" if sim.errors else ""))
    return lines


def render_table(sim: Simulation) -> str:
    total = len(sim.evaluated)
    lines = _heading(sim) + [""]
    rows: list[tuple[str, ...]] = [("card", "patients", "rate")]
    if len(sim.rule_sets) > 1:
        rows = [("card", "before", "rate", "after", "rate", "change")]
    for row in sim.card_rates():
        counts, rates = row["counts"], row["rates"]
        cells = [row["card"], f"{counts[0]}/{total}", _pct(rates[0])]
        if len(counts) > 1:
            cells += [f"{counts[1]}/{total}", _pct(rates[1]), f"{counts[1] - counts[0]:+d} ({(rates[1] - rates[0]) * 100:+.1f} pts)"]
        rows.append(tuple(cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for index, table_row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(table_row, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    if len(sim.rule_sets) > 1:
        changes = sim.changes()
        lines += ["", f"Patients whose card changes: {len(changes)}"]
        for change in changes:
            lines.append(f"- {change.source} Patient/{change.patient_id}: "
                         f"{', '.join(change.before) or 'none'} -> {', '.join(change.after) or 'none'}")
            lines += [f"    {reason}" for reason in change.reasons]
    if sim.errors:
        lines += ["", "Not evaluated:"] + [f"- {r.source} Patient/{r.patient_id}: {r.error}" for r in sim.errors]
    return "\n".join(lines) + "\n"


def render_json(sim: Simulation) -> str:
    total = len(sim.evaluated)
    body: dict[str, Any] = {
        "asOf": sim.as_of.isoformat(),
        "ruleSets": [{"file": info.path, "version": info.version} for info in sim.rule_sets],
        "patients": total,
        "cards": {
            row["card"]: [
                {"patients": count, "rate": round(rate, 4), "who": who}
                for count, rate, who in zip(row["counts"], row["rates"], row["patients"])
            ]
            for row in sim.card_rates()
        },
        "errors": [{"source": r.source, "patientId": r.patient_id, "error": r.error} for r in sim.errors],
    }
    if len(sim.rule_sets) > 1:
        body["changes"] = [
            {"source": c.source, "patientId": c.patient_id, "before": list(c.before), "after": list(c.after),
             "reasons": list(c.reasons)}
            for c in sim.changes()
        ]
    return json.dumps(body, indent=2) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1d2733;max-width:70rem}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #c9d1d9;padding:.3rem .6rem;text-align:left;
vertical-align:top}th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#4b5866}.reason{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
svg text{font-family:system-ui,sans-serif;font-size:12px}
"""


def _svg_bars(sim: Simulation) -> str:
    rows = [(row["card"], row["counts"], row["rates"]) for row in sim.card_rates()]
    return svg_bar_chart(rows, [info.path for info in sim.rule_sets], [info.version for info in sim.rule_sets])


def svg_bar_chart(rows: list[tuple[str, list[int], list[float]]], names: list[str], versions: list[str],
                  legend: tuple[str, str] = ("before", "after")) -> str:
    """Horizontal bars, one per card and rule set: (card, counts, rates) rows; markup only (no script,
    no style attribute: it passes the admin console's content-security policy)."""
    runs = len(names)
    colours = ("#3b6ea5", "#d9822b")
    bar_height, gap, label_width = 16, 14, 190
    height = len(rows) * (runs * bar_height + gap) + gap + (22 if runs > 1 else 0)
    width = label_width + BAR_WIDTH + 90
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Patients shown each card, as a share of the population">']
    y = gap
    for card, counts, rates in rows:
        parts.append(f'<text x="0" y="{y + runs * bar_height / 2 + 4:.0f}">{escape(card)}</text>')
        for run, rate in enumerate(rates):
            length = max(rate * BAR_WIDTH, 1 if rate else 0)
            parts.append(f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar_height - 2}" '
                         f'fill="{colours[run % 2]}"><title>{escape(names[run])}: '
                         f'{counts[run]} patients</title></rect>')
            parts.append(f'<text x="{label_width + length + 6:.1f}" y="{y + bar_height - 4}">'
                         f'{counts[run]} ({_pct(rate)})</text>')
            y += bar_height
        y += gap
    if runs > 1:
        for run in range(runs):
            x = label_width + run * 180
            parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colours[run % 2]}"/>')
            parts.append(f'<text x="{x + 16}" y="{y + 11}">{escape(legend[run % 2])}: '
                         f'{escape(versions[run])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(sim: Simulation) -> str:
    total = len(sim.evaluated)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>Rule-set simulation</title>", f"<style>{_CSS}</style></head><body>",
           "<h1>Rule-set simulation</h1>"]
    out += [f'<p class="meta">{escape(line)}</p>' for line in _heading(sim)]
    out.append("<h2>Patients shown each card</h2>")
    out.append(_svg_bars(sim))
    head = "<tr><th>card</th><th>patients</th><th>rate</th>"
    if len(sim.rule_sets) > 1:
        head = "<tr><th>card</th><th>before</th><th>rate</th><th>after</th><th>rate</th><th>change</th>"
    out.append(f"<table>{head}</tr>")
    for row in sim.card_rates():
        counts, rates = row["counts"], row["rates"]
        cells = [f"<td>{escape(row['card'])}</td>", f'<td class="num">{counts[0]}/{total}</td>',
                 f'<td class="num">{_pct(rates[0])}</td>']
        if len(counts) > 1:
            cells += [f'<td class="num">{counts[1]}/{total}</td>', f'<td class="num">{_pct(rates[1])}</td>',
                      f'<td class="num">{counts[1] - counts[0]:+d}</td>']
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    if len(sim.rule_sets) > 1:
        changes = sim.changes()
        out.append(f"<h2>Patients whose card changes ({len(changes)})</h2>")
        if changes:
            out.append("<table><tr><th>source file</th><th>Patient.id</th><th>before</th><th>after</th>"
                       "<th>why</th></tr>")
            for c in changes:
                why = "<br>".join(escape(reason) for reason in c.reasons)
                out.append(f"<tr><td>{escape(c.source)}</td><td>{escape(c.patient_id)}</td>"
                           f"<td>{escape(', '.join(c.before) or 'none')}</td>"
                           f"<td>{escape(', '.join(c.after) or 'none')}</td><td class=\"reason\">{why}</td></tr>")
            out.append("</table>")
    else:
        out.append("<h2>Patients shown a card</h2><table><tr><th>card</th><th>source file</th><th>Patient.id</th></tr>")
        for result in sim.evaluated:
            for card in result.runs[0].shown:
                out.append(f"<tr><td>{escape(card)}</td><td>{escape(result.source)}</td>"
                           f"<td>{escape(result.patient_id)}</td></tr>")
        out.append("</table>")
    if sim.errors:
        out.append("<h2>Not evaluated</h2><ul>")
        out += [f"<li>{escape(r.source)}: {escape(r.error or '')}</li>" for r in sim.errors]
        out.append("</ul>")
    out.append("<p class=\"meta\">Decision support dry run: suppression after overrides is not simulated.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


RENDERERS = {"table": render_table, "html": render_html, "json": render_json}
