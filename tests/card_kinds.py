"""Read back what the tests compare: a card's stable id, explanation and suggestion kinds."""

from __future__ import annotations

from typing import Any

from cds_service.cards import EXPLANATION_EXTENSION

SUGGESTION_KINDS = {
    "48691-0": "duplex-right",
    "48692-8": "duplex-left",
    "46364-6": "duplex-bilateral",
    "48065-7": "d-dimer",
    "51990-0": "lab-bmp",
    "2601-3": "lab-magnesium",
}


def card_id(card: dict[str, Any]) -> str:
    return card["source"]["topic"]["code"]


def explanation(card: dict[str, Any]) -> dict[str, Any]:
    return card["extension"][EXPLANATION_EXTENSION]


def suggestion_kinds(card: dict[str, Any]) -> list[str]:
    kinds = []
    for suggestion in card.get("suggestions", []):
        for action in suggestion.get("actions", []):
            codes = [c["code"] for c in action["resource"]["code"]["coding"]]
            kinds += [SUGGESTION_KINDS[c] for c in codes if c in SUGGESTION_KINDS]
    return sorted(kinds)
