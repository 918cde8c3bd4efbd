"""The rule set's semantic checks, after the schema: code references (the ``alias|code`` form, a known system,
and a code that fits its system's format: ``code_formats.py``), weights, item ids, the value sets the
rules read, reachable thresholds, order rules, procedure statuses, the Condition text fallback, and the card
text of every enabled card (``card_text_problems``). Each problem is (path into the document, message).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import yaml

from cds_service.ruleset.card_ids import LEGACY_DRUG_ORDER, ORDER_CARD_IDS, is_drug_order_card
from cds_service.ruleset.code_formats import CODE, PREFIX, RANGE, code_format_problem
from cds_service.ruleset.schema import (CARD_IDS, CARD_TEXT_KEYS, CONTRIBUTOR_DRUG_ITEMS, CONTRIBUTOR_ITEMS,
                                        CRITICAL_VALUE_SETS, DRUG_TABLE_CLASSES, ORDER_CLASSES, PROCEDURE_STATUSES,
                                        RED_FLAG_SIGNS, REQUIRED_VALUE_SETS, SERVICE_REQUEST_STATUSES,
                                        VENOUS_INDEX_ITEMS, WELLS_ITEMS, DocumentPath, OrderRules, RuleSetSpec)
from cds_service.ruleset.text_match import text_problems

_CODE_REF = re.compile(r"^(?P<alias>[a-z0-9_]+)\|(?P<code>[^\s|]+)$")


def check_code_ref(entry: str, systems: dict[str, str]) -> str | None:
    match = _CODE_REF.match(entry)
    if not match:
        return f"{entry!r} is not of the form '<system alias>|<code>'"
    if match["alias"] not in systems:
        return f"{entry!r} uses an unknown code system {match['alias']!r} (known: {', '.join(sorted(systems))})"
    return None


def check_code(entry: str, systems: dict[str, str], kind: str = CODE) -> str | None:
    """``check_code_ref``, then whether the code fits its system's format (an exact code, a prefix or a range:
    ``kind``); a system with no known format is not checked."""
    problem = check_code_ref(entry, systems)
    if problem:
        return problem
    alias, code = entry.split("|", 1)
    return code_format_problem(systems[alias], code, kind)


# The kind of code each value-set list holds (``exclude``: codes or prefixes, so checked as prefixes).
_VALUE_SET_KINDS = {"codes": CODE, "prefixes": PREFIX, "ranges": RANGE, "exclude": PREFIX}


def semantic_problems(spec: RuleSetSpec) -> list[tuple[DocumentPath, str]]:
    """Cross-field checks on a schema-valid rule set; each problem with the path it is about."""
    problems: list[tuple[DocumentPath, str]] = []
    systems = spec.code_systems
    for name, value_set in spec.value_sets.items():
        for key, kind in _VALUE_SET_KINDS.items():
            for index, entry in enumerate(getattr(value_set, key)):
                problem = check_code(entry, systems, kind)
                if problem:
                    problems.append((("value_sets", name, key, index), problem))
    missing_sets = [name for name in REQUIRED_VALUE_SETS if name not in spec.value_sets]
    if missing_sets:
        problems.append((("value_sets",), f"missing value sets the rules read: {', '.join(missing_sets)}"))
    for spec_name, observation in spec.observations:
        for index, entry in enumerate(observation.codes):
            problem = check_code(entry, systems)
            if problem:
                problems.append((("observations", spec_name, "codes", index), problem))
    for side, refs in spec.laterality.code_sides.items():
        problems += [(("laterality", "code_sides", side, i), p) for i, r in enumerate(refs)
                     if (p := check_code(r, systems))]
    for side, refs in spec.laterality.body_site_sides.items():
        problems += [(("laterality", "body_site_sides", side, i), p) for i, r in enumerate(refs)
                     if (p := check_code(r, systems))]
    for index, rule in enumerate(spec.laterality.last_character_sides):
        if problem := check_code(rule.prefix, systems, PREFIX):
            problems.append((("laterality", "last_character_sides", index, "prefix"), problem))
    known: tuple[str, ...]  # reused below for item lists of other lengths
    for section, known in (("venous_index", VENOUS_INDEX_ITEMS), ("contributors", CONTRIBUTOR_ITEMS)):
        for item, points in getattr(spec, section).points.items():
            if item not in known:
                problems.append(((section, "points", item),
                                 f"unknown item {item!r} (the rules score: {', '.join(known)})"))
            elif points < 0:
                problems.append(((section, "points", item),
                                 f"negative points for {item} ({points:g}); expected a number >= 0"))
    for index, sign in enumerate(spec.venous_index.objective_signs):
        if sign not in spec.venous_index.points:
            problems.append((("venous_index", "objective_signs", index), f"{sign} has no points"))
    for drug_class, item in spec.contributors.drug_classes.items():
        if item not in CONTRIBUTOR_DRUG_ITEMS:
            problems.append((("contributors", "drug_classes", drug_class),
                             f"unknown drug item {item!r} (expected one of {', '.join(CONTRIBUTOR_DRUG_ITEMS)})"))
    for index, name in enumerate(spec.contributors.lab_check.conditions):
        if name not in spec.value_sets:
            problems.append((("contributors", "lab_check", "conditions", index), f"no value set named {name!r}"))
    for key, known in (("signs", RED_FLAG_SIGNS), ("wells_items", WELLS_ITEMS)):
        for index, item in enumerate(getattr(spec.red_flag, key)):
            if item not in known:
                problems.append((("red_flag", key, index), f"unknown item {item!r} (expected one of {', '.join(known)})"))
    for section in ("venous_index", "contributors"):
        block = getattr(spec, section)
        reachable = sum(points for points in block.points.values() if points > 0)
        if reachable < block.threshold:
            problems.append(((section, "threshold"), f"no combination of items can reach it "
                             f"(threshold {block.threshold:g}, all items together score {reachable:g})"))
    problems += _procedure_problems(spec)
    problems += _condition_text_problems(spec)
    known_cards = (*CARD_IDS, *ORDER_CARD_IDS)
    missing_cards = [card for card in known_cards if card not in spec.cards]
    if missing_cards:
        problems.append((("cards",), f"missing settings for {', '.join(missing_cards)}"))
    for card in sorted(set(spec.cards) - set(known_cards)):
        problems.append((("cards", card), _unknown_card_message(card, known_cards)))
    problems += _order_rule_problems(spec.order_rules)
    problems += card_text_problems(spec)
    problems += card_text_problems(spec, card_ids=ORDER_CARD_IDS)
    return problems


def _unknown_card_message(card: str, known: tuple[str, ...]) -> str:
    if card == LEGACY_DRUG_ORDER:
        split = ", ".join(c for c in ORDER_CARD_IDS if c.startswith(LEGACY_DRUG_ORDER))
        return f"{card} is now one card per drug class: set {split} instead (Revision 2026-12)"
    return f"unknown card id (expected one of {', '.join(known)})"


def _procedure_problems(spec: RuleSetSpec) -> list[tuple[DocumentPath, str]]:
    rules = spec.procedures
    problems: list[tuple[DocumentPath, str]] = []
    for key, known in (("surgery_statuses", PROCEDURE_STATUSES), ("duplex_procedure_statuses", PROCEDURE_STATUSES),
                       ("duplex_service_request_statuses", SERVICE_REQUEST_STATUSES)):
        for index, status in enumerate(getattr(rules, key)):
            if status not in known:
                problems.append((("procedures", key, index),
                                 f"unknown status {status!r} (FHIR R4: {', '.join(known)})"))
    return problems


def _condition_text_problems(spec: RuleSetSpec) -> list[tuple[DocumentPath, str]]:
    text = spec.condition_text
    problems: list[tuple[DocumentPath, str]] = [(("condition_text", *path), message)
                                         for path, message in text_problems(text.terms, text.cues)]
    for name in text.terms:
        where = ("condition_text", "terms", name)
        if name not in spec.value_sets:
            problems.append((where, f"no value set named {name!r}"))
        elif name in CRITICAL_VALUE_SETS:
            problems.append((where, f"{name} can raise a critical card: free text may never yield it "
                             f"(not allowed: {', '.join(CRITICAL_VALUE_SETS)})"))
    return problems


def _order_rule_problems(rules: OrderRules) -> list[tuple[DocumentPath, str]]:
    problems: list[tuple[DocumentPath, str]] = []
    where: DocumentPath  # the paths below differ in length
    for order_class, drug_classes in rules.order_classes.items():
        where = ("order_rules", "order_classes", order_class)
        if order_class not in ORDER_CLASSES:
            problems.append((where, f"unknown order class {order_class!r} (expected one of {', '.join(ORDER_CLASSES)})"))
        if not drug_classes:
            problems.append((where, "lists no drug class"))
        for index, drug_class in enumerate(drug_classes):
            if drug_class not in DRUG_TABLE_CLASSES:
                problems.append(((*where, index), f"unknown drug class {drug_class!r} "
                                 f"(the drug table knows: {', '.join(DRUG_TABLE_CLASSES)})"))
    missing = [card for card in ORDER_CARD_IDS if card not in rules.cards]
    if missing:
        problems.append((("order_rules", "cards"), f"missing order classes for {', '.join(missing)}"))
    judged: dict[str, str] = {}
    for card, order_classes in rules.cards.items():
        if card not in ORDER_CARD_IDS:
            problems.append((("order_rules", "cards", card), _unknown_card_message(card, ORDER_CARD_IDS)))
            continue
        for index, order_class in enumerate(order_classes):
            where = ("order_rules", "cards", card, index)
            if order_class not in rules.order_classes:
                problems.append((where, f"{order_class!r} is not in order_rules.order_classes"))
            elif order_class in judged:
                problems.append((where, f"{order_class!r} is already judged by {judged[order_class]}"))
            else:
                judged[order_class] = card
    return problems


def card_text_problems(spec: RuleSetSpec, folder: Any = None,
                       card_ids: tuple[str, ...] = CARD_IDS) -> list[tuple[DocumentPath, str]]:
    """Every enabled card needs its wording: ``cards/<card id>.yaml`` in the ``cards`` package, a mapping with
    at least ``summary`` and ``source_url``; a drug-order card's file also needs an ``order_classes`` entry
    for each order class the card judges (``order_rules.cards``). Used by ``rules validate``, at service start and on reload (``parse_ruleset`` runs
    it, for ``CARD_IDS`` and for ``ORDER_CARD_IDS``)."""
    folder = folder if folder is not None else resources.files("cards")
    problems: list[tuple[DocumentPath, str]] = []
    for card_id, settings in spec.cards.items():
        if not settings.enabled or card_id not in card_ids:
            continue
        name = card_id
        entry = folder.joinpath(f"{name}.yaml")
        where = ("cards", card_id)
        try:
            text = yaml.safe_load(entry.read_text(encoding="utf-8"))
        except (OSError, FileNotFoundError):
            problems.append((where, f"card text missing: no cards/{name}.yaml in the cards package"))
            continue
        except yaml.YAMLError:
            problems.append((where, f"card text cards/{name}.yaml is not valid YAML"))
            continue
        if not isinstance(text, dict):
            problems.append((where, f"card text cards/{name}.yaml is not a mapping"))
            continue
        absent = [key for key in CARD_TEXT_KEYS if not text.get(key)]
        if is_drug_order_card(card_id):
            classes = text["order_classes"] if isinstance(text.get("order_classes"), dict) else {}
            absent += [f"order_classes.{c}" for c in spec.order_rules.cards.get(card_id, []) if c not in classes]
        if absent:
            problems.append((where, f"card text cards/{name}.yaml lacks {', '.join(absent)}"))
    return problems

