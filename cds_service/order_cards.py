"""Card rendering for the order hooks: ``OrderOutcome`` -> CDS Hooks card, with the wording of
``cards/quinine-for-cramps.yaml`` and ``cards/cramp-associated-drug-order.yaml``.

The shared pieces come from ``CardRenderer`` (cards.py): override reasons, links, the notes on data that
could not be checked or was skipped, the footer with the rule-set version, and the explanation in
``extension`` (``org.leg-cramp-cds.explanation``: rule, order class, the drug classes and the records).
The source topic code is the card's stable id. The quinine card suggests removing the draft order(s)
(a ``delete`` action per order with an id; ``selectionBehavior: at-most-one``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable

import yaml

from .card_model import Action, Card, Coding, Source, Suggestion
from .cards import EXPLANATION_EXTENSION, CardContent, CardRenderer, _escape
from .facts import SYSTEM_LABELS, PatientFacts, Provenance
from .order_rules import QUININE_CARD, OrderOutcome
from .orders import DraftOrder
from .ruleset import ORDER_CARD_IDS, RuleSet


def load_order_card_content() -> dict[str, dict[str, Any]]:
    folder = resources.files("cards")
    return {card_id: yaml.safe_load(folder.joinpath(f"{card_id}.yaml").read_text(encoding="utf-8"))
            for card_id in ORDER_CARD_IDS}


class OrderCardRenderer(CardRenderer):
    def __init__(self, content: CardContent, ruleset: RuleSet, order_texts: dict[str, dict[str, Any]] | None = None,
                 new_uuid: Callable[[], str] | None = None) -> None:
        super().__init__(content, ruleset, new_uuid)
        self.order_texts = order_texts or load_order_card_content()

    def render(self, outcome: OrderOutcome, facts: PatientFacts) -> Card:  # type: ignore[override]
        text = self.order_texts[outcome.card_id]
        if outcome.card_id == QUININE_CARD:
            fields: dict[str, str] = {}
            body, suggestions = self._quinine_body(outcome, text)
        else:
            wording = text["classes"][outcome.order_class]
            fields = {"class_label": wording["label"], "class_name": wording["name"], "class_plural": wording["plural"]}
            body, suggestions = self._drug_order_body(outcome, text, fields)
        summary = text["summary"].format(**fields)
        detail = "\n\n".join(filter(None, [body, self._data_notes(facts), self._footer()]))
        return Card(
            uuid=self.new_uuid(),
            summary=summary,
            detail=detail,
            indicator=self.ruleset.spec.cards[outcome.card_id].indicator,
            source=Source(
                label=f"{self.content.common['source_label']} (rules {self.ruleset.version})",
                url=text["source_url"],
                topic=Coding(system=self.content.common["topic_system"], code=outcome.card_id, display=summary),
            ),
            suggestions=suggestions or None,
            selectionBehavior="at-most-one" if suggestions else None,
            overrideReasons=self._override_reasons(),
            links=[self._link(name) for name in text.get("links", [])] or None,
            extension={EXPLANATION_EXTENSION: _explanation(outcome, self.ruleset.version)},
        )

    # ------------------------------------------------------------ bodies

    def _quinine_body(self, outcome: OrderOutcome, text: dict[str, Any]) -> tuple[str, list[Suggestion]]:
        lines = [text["intro"], *(f"- {_escape(_describe_order(order))}" for order in outcome.orders), "",
                 text["advice"].strip(), "", self._cramp_line(outcome.cramps, text["cramps_known"], text["cramps_none"])]
        remove = text["suggestions"]["remove"]
        actions = [Action(type="delete", description=remove["description"].format(reference=order.reference),
                          resourceId=order.reference)
                   for order in outcome.orders if order.resource_id]
        suggestions = [Suggestion(label=remove["label"], uuid=self.new_uuid(), actions=actions)] if actions else []
        return "\n".join(lines), suggestions

    def _drug_order_body(self, outcome: OrderOutcome, text: dict[str, Any],
                         fields: dict[str, str]) -> tuple[str, list[Suggestion]]:
        names = text["drug_classes"]
        rows = [
            f"| {_escape(_describe_order(order))} | "
            f"{', '.join(names.get(c, c) for c in sorted(order.record.classes & set(outcome.drug_classes)))} | "
            f"{_matched_by(order)} |"
            for order in outcome.orders
        ]
        lines = [
            text["intro"].format(**fields), "",
            "| Draft order | Drug class | Recognised by |\n|---|---|---|", *rows, "",
            text["classes"][outcome.order_class]["association"].strip(), "",
            self._cramp_line(outcome.cramps, text["cramps"], ""), "",
            text["advice"].format(**fields).strip(),
        ]
        return "\n".join(lines), []

    @staticmethod
    def _cramp_line(cramps: tuple[Provenance, ...], known: str, none: str) -> str:
        if not cramps:
            return none
        return known.format(records=_escape("; ".join(source.describe() for source in cramps)))


def _describe_order(order: DraftOrder) -> str:
    """``MedicationRequest/<id> (draft): <display> (RxNorm <code>)``: the reference, status and drug."""
    source = order.record.provenance
    label = source.display or "(no display)"
    if source.code:
        label += f" ({SYSTEM_LABELS.get(source.system or '', source.system or 'code')} {source.code})"
    return f"{order.reference} ({order.status}): {label}"


def _matched_by(order: DraftOrder) -> str:
    return {"code": "code", "text": "name in the text (no known code)"}.get(order.record.method or "", "-")


def _explanation(outcome: OrderOutcome, version: str) -> dict[str, Any]:
    return {
        "ruleSetVersion": version,
        "rule": outcome.card_id,
        "orderClass": outcome.order_class,
        "items": [{
            "item": outcome.order_class,
            "drugClasses": list(outcome.drug_classes),
            "records": [order.reference for order in outcome.orders],
        }],
        "cramps": [f"{s.resource_type}/{s.resource_id}" for s in outcome.cramps],
    }
