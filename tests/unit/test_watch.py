"""Watch it (admin/watch.py over storage/watch_queries.py): weekly series and alarms from rows stored through
the CardStore's public API (record_shown, record_feedback) in a real SQLite file, on an injected clock.

The clock: Wednesday 2026-06-17 12:00 UTC, in ISO week 2026-W25 (15-21 June); the latest complete week is
2026-W24 (Monday 8 - Sunday 14 June). Every expected number below is counted by hand from the rows inserted.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest

from cds_service.admin import watch
from cds_service.admin.watch import IsoWeek, build_watch, comments
from cds_service.engine.ledger import ShownCard
from cds_service.hooks.feedback import parse_feedback
from cds_service.ruleset.loader import load_default_ruleset
from cds_service.storage.store import CardStore

NOW = datetime(2026, 6, 17, 12, 0, tzinfo=timezone.utc)
W24 = IsoWeek(2026, 24)
SYSTEM = "http://example.org/override-reasons"
RULESET = load_default_ruleset()


class Cards:
    """Cards shown and their feedback, through the store's public API."""

    def __init__(self, store: CardStore) -> None:
        self.store = store

    def show(self, rule: str, at: datetime, count: int = 1, version: str = "2026.12.1",
             patient: str = "patient") -> list[str]:
        uuids = [str(uuid.uuid4()) for _ in range(count)]
        self.store.record_shown([
            ShownCard(card_uuid=u, suggestion_uuids=(f"{u[:-4]}0000",), service_id="leg-cramp-patient-view",
                      rule=rule, ruleset_version=version, indicator="info", hook_instance=str(uuid.uuid4()),
                      patient_key=self.store.patient_key(patient), issued_at=at)
            for u in uuids
        ])
        return uuids

    def override(self, card: str, at: datetime, code: str = "not-relevant", display: str = "Not clinically relevant",
                 comment: str | None = None) -> None:
        reason: dict = {"reason": {"system": SYSTEM, "code": code, "display": display}}
        if comment:
            reason["userComment"] = comment
        self._send({"card": card, "outcome": "overridden", "overrideReason": reason, "outcomeTimestamp": _instant(at)})

    def accept(self, card: str, at: datetime) -> None:
        self._send({"card": card, "outcome": "accepted", "acceptedSuggestions": [{"id": f"{card[:-4]}0000"}],
                    "outcomeTimestamp": _instant(at)})

    def _send(self, item: dict) -> None:
        result = self.store.record_feedback("leg-cramp-patient-view", parse_feedback({"feedback": [item]}))
        assert result.stored == 1


def _instant(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(year: int, month: int, day: int, hour: int = 10, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=timezone.utc)


def _monday_of(week: int) -> datetime:
    return datetime.combine(IsoWeek(2026, week).start, datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=9)


@pytest.fixture
def store(tmp_path) -> Iterator[CardStore]:
    store = CardStore(f"sqlite:///{tmp_path / 'watch.sqlite3'}", "s" * 32, clock=lambda: NOW)
    yield store
    store.close()


def _weekly(cards: Cards, rule: str, shown_per_week: dict[int, int], overridden_per_week: dict[int, int] | None = None
            ) -> None:
    for week, count in shown_per_week.items():
        at = _monday_of(week)
        uuids = cards.show(rule, at, count) if count else []
        for card in uuids[: (overridden_per_week or {}).get(week, 0)]:
            cards.override(card, at + timedelta(minutes=5))


HISTORY = {16: 20, 17: 22, 18: 19, 19: 21, 20: 20, 21: 18, 22: 20, 23: 21}  # median 20, MAD 1


# ---------------------------------------------------------------- the weekly series

def _series_rows(store: CardStore) -> None:
    cards = Cards(store)
    c1, c2 = cards.show("conservative-care", _day(2026, 6, 8), 2, patient="p1")  # Monday of W24
    c3 = cards.show("conservative-care", _day(2026, 6, 12), 1, patient="p1")[0]  # Friday
    c4 = cards.show("conservative-care", _day(2026, 6, 12), 1, patient="p2")[0]
    c5 = cards.show("conservative-care", _day(2026, 6, 14, 23, 59), 1, version="2026.12.2", patient="p3")[0]  # Sunday
    cards.show("conservative-care", _day(2026, 6, 7, 23, 30), 1, patient="p4")  # Sunday of W23: not W24
    cards.accept(c1, _day(2026, 6, 8, 11))
    cards.override(c2, _day(2026, 6, 8, 13), comment="Already on magnesium")
    cards.override(c3, _day(2026, 6, 12, 11))
    cards.override(c4, _day(2026, 6, 12, 12), code="declined", display="Patient declined")
    cards.override(c5, _day(2026, 6, 15, 8))  # overridden on Monday of W25: still counts for W24, its issue week


def test_weekly_counts_rates_reasons_per_card_and_version(store) -> None:
    _series_rows(store)
    report = build_watch(store, RULESET)
    assert report.latest_complete == W24 and report.weeks[-1] == IsoWeek(2026, 25)
    assert len(report.weeks) == watch.WATCH_WEEKS
    card = report.card("conservative-care")
    week = {w.week: w for w in card.weeks}
    w24 = week[W24]
    # 5 issued 8-14 June (4 under 2026.12.1, 1 under 2026.12.2); c1 accepted; c2, c3, c4, c5 overridden
    assert (w24.shown, w24.accepted, w24.overridden) == (5, 1, 4)
    assert (w24.accept_rate, w24.override_rate) == (0.2, 0.8)
    assert w24.complete and not week[IsoWeek(2026, 25)].complete
    assert [(r.label, r.cards) for r in w24.top_reasons] == [("Not clinically relevant", 3), ("Patient declined", 1)]
    assert week[IsoWeek(2026, 23)].shown == 1  # Sunday 23:30 UTC belongs to W23
    by_version = {v: {w.week: w for w in weeks}[W24] for v, weeks in card.by_version.items()}
    assert {v: (w.shown, w.accepted, w.overridden) for v, w in by_version.items()} == {
        "2026.12.1": (4, 1, 3), "2026.12.2": (1, 0, 1)}
    assert (card.shown, card.accepted, card.overridden) == (6, 1, 4)
    # every enabled card of the rule set is listed, shown or not
    assert {c.card for c in report.cards} >= {"untreated-dvt", "elevated-cramp-risk", "quinine-for-cramps"}
    assert report.card("untreated-dvt").shown == 0


def test_suppression_counts_the_windows_overrides_opened(store) -> None:
    _series_rows(store)
    card = build_watch(store, RULESET).card("conservative-care")
    assert card.suppress_days == 90
    by_week = {s.week: s for s in card.suppression}
    # W24: overrides of c2 (p1), c3 (p1), c4 (p2) -> 3 opened, patients p1, p2
    assert (by_week[W24].overrides, by_week[W24].patients) == (3, 2)
    # W25: c5 (p3) overridden on Monday 15 June; p1's and p2's 90-day windows are still open
    assert (by_week[IsoWeek(2026, 25)].overrides, by_week[IsoWeek(2026, 25)].patients) == (1, 3)
    assert (by_week[IsoWeek(2026, 23)].overrides, by_week[IsoWeek(2026, 23)].patients) == (0, 0)
    # critical cards are never suppressed: nothing to count
    assert build_watch(store, RULESET).card("untreated-dvt").suppression == []


def test_comments_are_a_separate_read_with_their_dates(store) -> None:
    _series_rows(store)
    found = comments(store)
    assert [(c.rule, c.text, c.at, c.reason) for c in found] == [
        ("conservative-care", "Already on magnesium", _day(2026, 6, 8, 13), "Not clinically relevant")]
    assert comments(store, card="elevated-cramp-risk") == []
    report = build_watch(store, RULESET)
    assert "Already on magnesium" not in repr(report)  # the report itself never carries them


# ---------------------------------------------------------------- the alarm

def test_a_stable_history_raises_no_alarm(store) -> None:
    _weekly(Cards(store), "elevated-cramp-risk", {**HISTORY, 24: 21})
    card = build_watch(store, RULESET).card("elevated-cramp-risk")
    check = card.firing
    # history W16-W23 sorted: 18 19 20 20 20 21 21 22 -> median 20; |deviations| 0 0 0 1 1 1 2 2 -> MAD 1;
    # spread = max(1.4826 * 1, sqrt(20) = 4.472) = 4.472; band 20 +- 3 * 4.472 = 6.58 .. 33.42
    assert check.status == "ok" and not check.alarm
    assert check.median == 20 and check.history_weeks == 8
    assert check.low == pytest.approx(20 - 3 * math.sqrt(20)) and check.high == pytest.approx(20 + 3 * math.sqrt(20))
    assert card.alarms == []
    assert watch.alarm_states(build_watch(store, RULESET))[("elevated-cramp-risk", "firing")] is False


def test_a_card_that_stops_firing_raises_the_alarm(store) -> None:
    _weekly(Cards(store), "elevated-cramp-risk", {**HISTORY, 24: 0})
    check = build_watch(store, RULESET).card("elevated-cramp-risk").firing
    assert check.alarm and check.value == 0 and check.week == W24
    assert check.p_value == pytest.approx(math.exp(-20))  # Poisson(20): P(X = 0)
    assert "stopped firing" in check.reason and "2026-W24" in check.reason and "median of 20" in check.reason


def test_a_card_that_triples_raises_the_alarm(store) -> None:
    _weekly(Cards(store), "elevated-cramp-risk", {**HISTORY, 24: 60})
    report = build_watch(store, RULESET)
    check = report.card("elevated-cramp-risk").firing
    assert check.alarm and "3.0 times its median" in check.reason
    assert check in report.alarms
    assert watch.alarm_states(report)[("elevated-cramp-risk", "firing")] is True
    assert watch.alarm_states(report)[("elevated-cramp-risk", "override")] is False
    light = build_watch(store, RULESET, details=False)  # what /metrics reads: the same alarms
    assert watch.alarm_states(light) == watch.alarm_states(report)


def test_a_new_version_in_the_alarm_week_is_named(store) -> None:
    cards = Cards(store)
    _weekly(cards, "elevated-cramp-risk", HISTORY)
    cards.show("elevated-cramp-risk", _monday_of(24), 60, version="2026.12.2")
    check = build_watch(store, RULESET).card("elevated-cramp-risk").firing
    assert check.alarm and "Rule-set version 2026.12.2 was first shown this week" in check.reason


def test_an_override_rate_jump_raises_the_alarm_and_a_steady_one_does_not(store) -> None:
    cards = Cards(store)
    history = {week: 20 for week in range(16, 24)}
    _weekly(cards, "venous-duplex-workup", {**history, 24: 20}, {**{w: 4 for w in history}, 24: 12})
    _weekly(cards, "conservative-care", {**history, 24: 20}, {**{w: 4 for w in history}, 24: 5})
    report = build_watch(store, RULESET)
    jump = report.card("venous-duplex-workup").override
    # history: 4 of 20 every week -> median 0.2, MAD 0; spread = sqrt(0.2 * 0.8 / 20) = 0.0894, band 0.2 +- 0.268
    # W24: 12 of 20 = 0.6, 0.4 from the median; binomial P(X >= 12 | 20, 0.2) = 0.000102
    assert jump.alarm and jump.value == 0.6 and jump.median == pytest.approx(0.2)
    assert jump.p_value == pytest.approx(watch.binomial_sf(12, 20, 0.2)) and jump.p_value < watch.ALPHA
    assert "12 of 20 overridden" in jump.reason
    steady = report.card("conservative-care").override
    assert steady.status == "ok"  # 5 of 20 = 0.25: inside the band
    assert not report.card("venous-duplex-workup").firing.alarm  # 20 a week throughout


def test_too_little_history_is_not_evaluated(store) -> None:
    _weekly(Cards(store), "elevated-cramp-risk", {21: 20, 22: 20, 23: 20, 24: 0})
    check = build_watch(store, RULESET).card("elevated-cramp-risk").firing
    assert check.status == "not_evaluated" and not check.alarm
    assert "3 complete week(s)" in check.reason


def test_exact_tails() -> None:
    assert watch.poisson_cdf(0, 20) == pytest.approx(math.exp(-20))
    assert watch.poisson_sf(0, 3) == 1.0
    assert watch.poisson_sf(2, 1) == pytest.approx(1 - 2 * math.exp(-1))
    assert watch.binomial_sf(2, 2, 0.5) == pytest.approx(0.25)
    assert watch.binomial_cdf(0, 3, 0.5) == pytest.approx(0.125)
    assert watch.binomial_sf(12, 20, 0.2) == pytest.approx(0.000102, rel=0.05)


def test_iso_weeks_cross_the_year() -> None:
    assert IsoWeek.of(datetime(2026, 1, 1).date()) == IsoWeek(2026, 1)
    assert IsoWeek(2026, 1).shifted(-1) == IsoWeek(2025, 52)
    assert IsoWeek(2026, 53).label == "2026-W53"  # 2026 has 53 ISO weeks
    assert IsoWeek(2026, 53).shifted(1) == IsoWeek(2027, 1)


@pytest.mark.postgres
def test_the_same_series_and_alarm_on_postgresql(monkeypatch) -> None:
    from support.feedback import fresh_postgres_database, postgres_url

    with fresh_postgres_database(monkeypatch) as (host, port, name):
        store = CardStore(postgres_url(host, port, name), "s" * 32, clock=lambda: NOW)
        _series_rows(store)
        _weekly(Cards(store), "elevated-cramp-risk", {**HISTORY, 24: 0})
        report = build_watch(store, RULESET)
        w24 = {w.week: w for w in report.card("conservative-care").weeks}[W24]
        assert (w24.shown, w24.accepted, w24.overridden) == (5, 1, 4)
        assert {w.week: w for w in report.card("conservative-care").weeks}[IsoWeek(2026, 23)].shown == 1
        assert report.card("elevated-cramp-risk").firing.alarm
        assert [c.text for c in comments(store)] == ["Already on magnesium"]
