"""The order hooks' card bodies: ``OrderOutcome`` -> summary, detail lines and suggestions, with the
wording of ``cards/quinine-for-cramps.yaml`` and ``cards/cramp-associated-drug-order*.yaml``.

cards.py assembles the card around them (``CardRenderer.render``, the one path for every hook): source,
override reasons, links, data notes, rule-set version and the explanation in ``extension``
(``org.leg-cramp-cds.explanation``: rule, order class, drug classes and the records by reference).
A draft order is named by its drug (display and RxNorm code), never by its resource id; each ingredient is
listed under its own class (Dyazide: hydrochlorothiazide under thiazide, triamterene under potassium-sparing).
The quinine card suggests removing the draft order(s): a ``delete`` action per order with an id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from cds_service.engine.card_phrases import Phrasing, escape
from cds_service.engine.card_text import DrugOrderText, QuinineText
from cds_service.engine.drugs import DrugTable
from cds_service.engine.order_rules import OrderOutcome
from cds_service.engine.orders import DraftOrder
from cds_service.hooks.cards import Action, Suggestion


@dataclass
class OrderBody:
    summary: str
    lines: list[str]
    suggestions: list[Suggestion] = field(default_factory=list)


def order_body(outcome: OrderOutcome, text: Any, phrasing: Phrasing, drugs: DrugTable,
               new_uuid: Callable[[], str]) -> OrderBody:
    if isinstance(text, QuinineText):
        return _quinine_body(outcome, text, phrasing, new_uuid)
    if isinstance(text, DrugOrderText):
        return _drug_order_body(outcome, text, phrasing, drugs)
    raise LookupError(f"no order card body for {outcome.card_id}")


def describe_order(order: DraftOrder, phrasing: Phrasing) -> str:
    """``Quinine Sulfate 260 MG Oral Tablet (RxNorm 997157), draft order``: the drug, as the clinician chose it."""
    return phrasing.record(order.record.provenance, text_matched=order.record.method == "text",
                           undated=f"{order.status or 'draft'} order")


def _cramp_line(outcome: OrderOutcome, known: str, none: str, phrasing: Phrasing) -> str:
    if not outcome.cramps:
        return none
    return known.format(records=escape(phrasing.records(outcome.cramps)))


def _quinine_body(outcome: OrderOutcome, text: QuinineText, phrasing: Phrasing,
                  new_uuid: Callable[[], str]) -> OrderBody:
    rows = [f"| {escape(describe_order(order, phrasing))} |" for order in outcome.orders]
    lines = [text.intro, "", "| Draft order |", "|---|", *rows, "", text.advice.strip(), "",
             _cramp_line(outcome, text.cramps_known, text.cramps_none, phrasing)]
    actions = [Action(type="delete", resourceId=order.reference,
                      description=text.remove_description.format(order=_drug_name(order)))
               for order in outcome.orders if order.resource_id]
    suggestions = [Suggestion(label=text.remove_label, uuid=new_uuid(), actions=actions)] if actions else []
    return OrderBody(text.summary, lines, suggestions)


def _drug_name(order: DraftOrder) -> str:
    return order.record.provenance.display or "the quinine order"


def _drug_order_body(outcome: OrderOutcome, text: DrugOrderText, phrasing: Phrasing, drugs: DrugTable) -> OrderBody:
    wording = text.order_classes[outcome.order_class]
    fields = {"class_label": wording.label, "class_name": wording.name, "class_plural": wording.plural}
    rows = [f"| {escape(describe_order(order, phrasing))} | {escape(_ingredients_by_class(order, outcome, text, drugs))} |"
            for order in outcome.orders]
    lines = [
        text.intro.format(**fields), "",
        "| Draft order | Ingredient and its class |", "|---|---|", *rows, "",
        wording.association.strip(), "",
        _cramp_line(outcome, text.cramps, "", phrasing), "",
        text.advice.format(**fields).strip(),
    ]
    return OrderBody(text.summary.format(**fields), lines)


def _ingredients_by_class(order: DraftOrder, outcome: OrderOutcome, text: DrugOrderText, drugs: DrugTable) -> str:
    """Each ingredient of this card's classes under its own class: ``hydrochlorothiazide (thiazide ...)``;
    Dyazide on the thiazide card names hydrochlorothiazide, not triamterene."""
    record = order.record
    by_ingredient = dict(record.by_ingredient) or {name: drugs.classes_of(name) for name in record.ingredients}
    wanted = set(outcome.drug_classes) & record.classes
    shown = []
    for ingredient, classes in sorted(by_ingredient.items()):
        own = sorted(classes & wanted)
        if own:
            shown.append(f"{ingredient} ({', '.join(text.drug_classes.get(c, c) for c in own)})")
    if not shown:  # ingredients unknown to the table: name the classes the order was put in
        shown = [text.drug_classes.get(c, c) for c in sorted(wanted)]
    return "; ".join(shown)


def order_explanation(outcome: OrderOutcome, version: str) -> dict[str, Any]:
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
