"""engine/ledger.overridden_cards: a call's suppression question, with overrides recorded under a card's
former id (card_ids.legacy_ids), against a ledger that answers from a list of overrides."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Mapping

from cds_service.engine.ledger import ShownCard, overridden_cards
from cds_service.ruleset.card_ids import (CONSERVATIVE_CARE, DRUG_ORDER_LABA, DRUG_ORDER_THIAZIDE, LEGACY_DRUG_ORDER,
                                          QUININE_FOR_CRAMPS)

NOW = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)


class Ledger:
    """Overrides as (patient key, rule, when); answers ``overridden_rules`` as the store does."""

    def __init__(self, *overrides: tuple[str, str, datetime]) -> None:
        self.overrides = overrides
        self.questions: list[dict[str, datetime]] = []

    def patient_key(self, patient_id: str) -> str:
        return patient_id

    def overridden_rules(self, patient_key: str, windows: Mapping[str, datetime]) -> set[str]:
        self.questions.append(dict(windows))
        return {rule for key, rule, when in self.overrides
                if key == patient_key and rule in windows and when >= windows[rule]}

    def record_shown(self, cards: list[ShownCard]) -> None:
        pass


def days_ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def test_one_question_for_every_card_and_its_former_id() -> None:
    ledger = Ledger(("p", LEGACY_DRUG_ORDER, days_ago(10)), ("p", QUININE_FOR_CRAMPS, days_ago(40)))
    windows = {QUININE_FOR_CRAMPS: days_ago(30), DRUG_ORDER_THIAZIDE: days_ago(90), DRUG_ORDER_LABA: days_ago(90),
               CONSERVATIVE_CARE: days_ago(90)}
    # the override under the former single id suppresses every class card; quinine's is older than its 30 days
    assert overridden_cards(ledger, "p", windows) == {DRUG_ORDER_THIAZIDE, DRUG_ORDER_LABA}
    assert ledger.questions == [{**windows, LEGACY_DRUG_ORDER: days_ago(90)}]
    assert overridden_cards(ledger, "someone-else", windows) == set()


def test_cards_sharing_a_former_id_with_different_windows_are_each_judged_in_their_own() -> None:
    """LABA suppressed for 30 days, thiazides for 90 (a rule set may say so): an override recorded under the
    former id 60 days ago suppresses the thiazide card only."""
    ledger = Ledger(("p", LEGACY_DRUG_ORDER, days_ago(60)))
    windows = {DRUG_ORDER_THIAZIDE: days_ago(90), DRUG_ORDER_LABA: days_ago(30)}
    assert overridden_cards(ledger, "p", windows) == {DRUG_ORDER_THIAZIDE}
    assert len(ledger.questions) == 2  # the former id once per window
    assert sorted(question[LEGACY_DRUG_ORDER] for question in ledger.questions) == [days_ago(90), days_ago(30)]


def test_a_card_overridden_under_its_own_id_only() -> None:
    ledger = Ledger(("p", DRUG_ORDER_LABA, days_ago(5)))
    windows = {DRUG_ORDER_THIAZIDE: days_ago(90), DRUG_ORDER_LABA: days_ago(90)}
    assert overridden_cards(ledger, "p", windows) == {DRUG_ORDER_LABA}
    assert len(ledger.questions) == 1
