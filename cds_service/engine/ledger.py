"""The card ledger as the engine sees it: the cards it issued (``ShownCard``), the ``CardLedger``
protocol that remembers them and their feedback, and ``overridden_cards``, the suppression question of one
call. Storage implements the protocol (``CardStore``), so it imports this module, never the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Protocol

from cds_service.ruleset.card_ids import legacy_ids


@dataclass(frozen=True)
class ShownCard:
    """A card as issued, for the ledger: never the patient's id, only its keyed hash."""

    card_uuid: str
    suggestion_uuids: tuple[str, ...]
    service_id: str
    rule: str  # the card's stable id, e.g. venous-duplex-workup
    ruleset_version: str
    indicator: str
    hook_instance: str
    patient_key: str
    issued_at: datetime


class CardLedger(Protocol):
    """Remembers cards shown and their feedback; answers which cards are suppressed (issue: feedback)."""

    def patient_key(self, patient_id: str) -> str: ...

    def overridden_rules(self, patient_key: str, windows: Mapping[str, datetime]) -> set[str]:
        """The rules of ``windows`` (rule -> since) whose cards were overridden for this patient at or after
        that rule's since (by any clinician). One question for all of a call's candidate cards."""
        ...

    def record_shown(self, cards: list[ShownCard]) -> None: ...


def overridden_cards(ledger: CardLedger, patient_key: str, windows: Mapping[str, datetime]) -> set[str]:
    """The card ids of ``windows`` (card id -> since) overridden within their window, an override recorded
    under an id the card had before it was split (card_ids.legacy_ids) included.

    One ledger question, unless two cards share a former id with different windows (their suppress_days
    differ): a former id can be asked with one since per question, so such a card waits for a second one.
    """
    questions: list[dict[str, datetime]] = []
    for card_id, since in windows.items():
        for recorded in (card_id, *legacy_ids(card_id)):
            question = next((q for q in questions if q.get(recorded, since) == since), None)
            if question is None:
                questions.append(question := {})
            question[recorded] = since
    found = {(recorded, question[recorded]) for question in questions
             for recorded in ledger.overridden_rules(patient_key, question)}
    return {card_id for card_id, since in windows.items()
            if any((recorded, since) in found for recorded in (card_id, *legacy_ids(card_id)))}
