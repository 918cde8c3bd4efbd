"""Watch it (docs/watch.md): per card, cards shown, accepted and overridden per ISO week, top override
reasons, suppression and the alarm, from admin/watch.py. Viewers see the aggregates; clinicians' free-text
comments (they may hold PHI) only editors and deployers."""

from __future__ import annotations

import logging
from typing import Any

from flask import abort, render_template
from markupsafe import Markup

from cds_service.admin import watch
from cds_service.admin.watch_charts import Series, line_chart, spark
from cds_service.storage.watch_queries import WatchUnavailable
from cds_service.web.admin import access, services
from cds_service.web.admin.access import require_role
from cds_service.web.admin.blueprint import admin_bp

log = logging.getLogger(__name__)

OVERVIEW_COMMENTS = 10
MIN_WEEKS_SHOWN = 8


def _report() -> watch.WatchReport:
    return watch.build_watch(services.card_store(), services.current_engine().ruleset)


def _unavailable(exc: WatchUnavailable) -> Any:
    log.warning("admin console: watch data unavailable", extra={"error": str(exc)})
    return render_template("admin/watch_unavailable.html", reason=str(exc)), 503


@admin_bp.get("/watch")
@require_role("viewer")
def watch_page() -> Any:
    try:
        report = _report()
        comments = (watch.comments(services.card_store())[:OVERVIEW_COMMENTS]
                    if access.has_role("editor") else None)
    except WatchUnavailable as exc:
        return _unavailable(exc)
    sparks = {card.card: Markup(spark(f"spark-{card.card}", _spark_title(report, card),
                                      [float(w.shown) for w in card.weeks], alarm=card.firing.alarm))
              for card in report.cards}
    # alarms first, then the cards shown most
    cards = sorted(report.cards, key=lambda c: (not c.alarms, -c.shown, c.card))
    return render_template("admin/watch.html", report=report, cards=cards, sparks=sparks, comments=comments,
                           may_see_comments=access.has_role("editor"))


def _spark_title(report: watch.WatchReport, card: watch.CardWatch) -> str:
    """The spark line's text equivalent: every week's number (the card page has the full table)."""
    counts = ", ".join(str(w.shown) for w in card.weeks)
    return f"{card.card}: cards shown per week, {report.weeks[0].label} to {report.weeks[-1].label}: {counts}"


@admin_bp.get("/watch/<card_id>")
@require_role("viewer")
def watch_card(card_id: str) -> Any:
    try:
        report = _report()
        card = report.card(card_id)
        if card is None:
            abort(404)
        comments = watch.comments(services.card_store(), card=card_id) if access.has_role("editor") else None
    except WatchUnavailable as exc:
        return _unavailable(exc)
    start = _shown_weeks(report, card)
    return render_template("admin/watch_card.html", report=report, card=card, charts=_charts(report, card, start),
                           weeks=card.weeks[start:], suppression=card.suppression[start:],
                           comments=comments, may_see_comments=access.has_role("editor"), k=f"{watch.K:g}",
                           alpha=f"{watch.ALPHA:g}")


def _shown_weeks(report: watch.WatchReport, card: watch.CardWatch) -> int:
    """Index of the first week the page shows for ``card``: its first week with a card (at least
    MIN_WEEKS_SHOWN weeks are shown), so a card deployed last month is not drawn over months of nothing."""
    first = next((i for i, w in enumerate(card.weeks) if w.shown), len(card.weeks))
    return max(0, min(first, len(card.weeks) - MIN_WEEKS_SHOWN))


def _band(check: watch.AlarmCheck) -> tuple[float, float] | None:
    return (check.low, check.high) if check.low is not None and check.high is not None else None


def _charts(report: watch.WatchReport, card: watch.CardWatch, start: int) -> dict[str, Markup]:
    weeks = [w.label for w in report.weeks[start:]]
    series = card.weeks[start:]
    checked = next((i for i, w in enumerate(report.weeks[start:]) if w == report.latest_complete), None)

    def span(check: watch.AlarmCheck) -> tuple[int, int] | None:
        return (max(checked - check.history_weeks, 0), checked) if checked is not None else None

    firing, override = card.firing, card.override
    shown = line_chart(
        "chart-shown", f"{card.card}: cards shown per week", weeks,
        [Series("shown", [float(w.shown) for w in series], "line-shown")],
        band=_band(firing), band_span=span(firing), highlight=checked)
    rates = line_chart(
        "chart-rates", f"{card.card}: share of the week's cards accepted and overridden", weeks,
        [Series("accepted", [w.accept_rate for w in series], "line-accepted"),
         Series("overridden", [w.override_rate for w in series], "line-overridden")],
        percent=True, band=_band(override), band_span=span(override), highlight=checked)
    return {"shown": Markup(shown), "rates": Markup(rates)}
