"""Rule evaluation for the order hooks (RULES.md, Order hooks), as pure functions of the draft orders,
the patient's facts and the ``RuleSet``. No Flask, no HTTP, no database; patient-view's A/B/C never run here.

- ``quinine-for-cramps`` (warning): a judged draft order in an order class of that card (quinine), for anyone.
- ``cramp-associated-drug-order-potassium-sparing``, ``-thiazide``, ``-laba`` (info): a judged draft order in
  that card's order class, for a patient with documented leg cramps (coded or recognised by its text): one
  outcome per order class, however many orders; a combination counts each of its classes (hydrochlorothiazide
  + triamterene gives the thiazide card and the potassium-sparing card). Loop diuretics, statins and
  acetazolamide are in no order class (RULES.md: no clear association).

Judged orders: on order-select the selected ones, on order-sign every draft order (``DraftOrder.selected``).
The order classes of a drug come from ``order_rules.order_classes`` (order class -> drug-table classes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from cds_service.engine.chart import SkippedRecord
from cds_service.engine.facts import PatientFacts, Provenance
from cds_service.engine.orders import DraftOrder, DraftOrders
from cds_service.ruleset.card_ids import is_drug_order_card
from cds_service.ruleset.loader import RuleSet

ORDER_KEYS_READ = ("conditions",)  # the order rules read the chart only for the cramp record


@dataclass(frozen=True)
class OrderOutcome:
    card_id: str
    order_class: str  # quinine | potassium-sparing | thiazide | laba (order_rules.order_classes)
    orders: tuple[DraftOrder, ...]  # the judged orders in that class
    drug_classes: tuple[str, ...]  # the drug-table classes seen in them (loop, thiazide, ...), sorted
    cramps: tuple[Provenance, ...] = ()  # the patient's documented leg cramps (records)
    not_checked: tuple[str, ...] = ()  # keys this rule reads (conditions: the cramp record) not checked


@dataclass(frozen=True)
class OrderEvaluation:
    judged: tuple[DraftOrder, ...]
    outcomes: tuple[OrderOutcome, ...]  # every card that fired, in card order then order-class order
    shown: tuple[OrderOutcome, ...] = field(default=())  # those whose card is enabled
    not_judged: tuple[DraftOrder, ...] = ()  # draft orders outside the selections (order-select)
    # The draft orders' own data, beside the chart's facts (which they never change): the invalid or
    # another patient's drafts, reported with the chart's skipped records; how the judged ones were mapped.
    skipped: tuple[SkippedRecord, ...] = ()
    medication_mapping: Counter = field(default_factory=Counter)


def order_classes_of(order: DraftOrder, ruleset: RuleSet) -> dict[str, frozenset[str]]:
    """Order class -> the drug-table classes of this order that put it there."""
    found: dict[str, frozenset[str]] = {}
    for order_class, drug_classes in ruleset.spec.order_rules.order_classes.items():
        hit = order.record.classes & set(drug_classes)
        if hit:
            found[order_class] = frozenset(hit)
    return found


def evaluate_orders(drafts: DraftOrders, facts: PatientFacts, ruleset: RuleSet) -> OrderEvaluation:
    judged = tuple(order for order in drafts.orders if order.selected)
    unread = tuple(key for key in ORDER_KEYS_READ if key in facts.not_checked)
    cramps = facts.facts.get("documented_leg_cramps")
    cramp_sources = cramps.sources if cramps is not None else ()
    outcomes: list[OrderOutcome] = []
    for card_id, card_classes in ruleset.spec.order_rules.cards.items():
        if is_drug_order_card(card_id) and not cramp_sources:
            continue  # only for a patient with documented leg cramps
        for order_class in card_classes:
            outcome = _class_outcome(card_id, order_class, judged, ruleset, cramp_sources)
            if outcome is not None:
                outcomes.append(replace(outcome, not_checked=unread))
    shown = tuple(o for o in outcomes if ruleset.spec.cards[o.card_id].enabled)
    not_judged = tuple(order for order in drafts.orders if not order.selected)
    return OrderEvaluation(judged=judged, outcomes=tuple(outcomes), shown=shown, not_judged=not_judged,
                           skipped=tuple(drafts.skipped), medication_mapping=drafts.mapping)


def _class_outcome(card_id: str, order_class: str, judged: tuple[DraftOrder, ...], ruleset: RuleSet,
                   cramps: tuple[Provenance, ...]) -> OrderOutcome | None:
    orders: list[DraftOrder] = []
    drug_classes: set[str] = set()
    for order in judged:
        hit = order_classes_of(order, ruleset).get(order_class)
        if hit:
            orders.append(order)
            drug_classes |= hit
    if not orders:
        return None
    return OrderOutcome(card_id, order_class, tuple(orders), tuple(sorted(drug_classes)), cramps)
