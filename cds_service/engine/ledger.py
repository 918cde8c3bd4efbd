"""The card ledger as the engine sees it: the cards it issued (``ShownCard``) and the ``CardLedger``
protocol that remembers them and their feedback. Storage implements the protocol (``CardStore``), so it
imports this module, never the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


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

    def overridden_since(self, patient_key: str, rule: str, since: datetime) -> bool:
        """Was a card of this rule overridden for this patient at or after ``since`` (any clinician)?"""
        ...

    def record_shown(self, cards: list[ShownCard]) -> None: ...
