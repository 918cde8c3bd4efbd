"""The cards' stable ids (RULES.md, "stable id"), defined once: the rules, the rule set's validation, the
card texts, the ledger's suppression check and the tests all name cards through these constants.

A card id is also its ``source.topic`` code and the ``rule`` the ledger records feedback under, so an id
never changes meaning. When one card was split in several (Revision 2026-12: the cramp-associated drug card
became one card per drug class), ``legacy_ids`` names the id feedback was recorded under before, and the
suppression check honours an override recorded under it.
"""

from __future__ import annotations

# Patient-view (RULES.md evaluations A, B, C), in the order they take precedence.
UNTREATED_DVT = "untreated-dvt"  # A.1: recent DVT on record, no anticoagulant
POSSIBLE_DVT = "possible-dvt"  # A.2 / A.3
VENOUS_DUPLEX_WORKUP = "venous-duplex-workup"  # B
CONSERVATIVE_CARE = "conservative-care"  # C, documented cramps
ELEVATED_CRAMP_RISK = "elevated-cramp-risk"  # C, no documented cramps
PATIENT_VIEW_CARD_IDS = (UNTREATED_DVT, POSSIBLE_DVT, VENOUS_DUPLEX_WORKUP, CONSERVATIVE_CARE, ELEVATED_CRAMP_RISK)

# Order hooks (order-select, order-sign).
QUININE_FOR_CRAMPS = "quinine-for-cramps"
LEGACY_DRUG_ORDER = "cramp-associated-drug-order"  # before 2026-12: one card for every drug class
DRUG_ORDER_POTASSIUM_SPARING = f"{LEGACY_DRUG_ORDER}-potassium-sparing"
DRUG_ORDER_THIAZIDE = f"{LEGACY_DRUG_ORDER}-thiazide"
DRUG_ORDER_LABA = f"{LEGACY_DRUG_ORDER}-laba"
DRUG_ORDER_CARD_IDS = (DRUG_ORDER_POTASSIUM_SPARING, DRUG_ORDER_THIAZIDE, DRUG_ORDER_LABA)
ORDER_CARD_IDS = (QUININE_FOR_CRAMPS, *DRUG_ORDER_CARD_IDS)

ALL_CARD_IDS = (*PATIENT_VIEW_CARD_IDS, *ORDER_CARD_IDS)

# New id -> the ids feedback about the same advice was recorded under before.
_LEGACY = {card_id: (LEGACY_DRUG_ORDER,) for card_id in DRUG_ORDER_CARD_IDS}


def legacy_ids(card_id: str) -> tuple[str, ...]:
    """The ids an override of this card may have been recorded under before (none for most cards)."""
    return _LEGACY.get(card_id, ())


def is_drug_order_card(card_id: str) -> bool:
    """A per-class cramp-associated drug card: shown only for a patient with documented leg cramps."""
    return card_id in DRUG_ORDER_CARD_IDS
