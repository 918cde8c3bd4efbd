"""The rule set: a validated YAML file holding every clinical parameter (RULES.md), and its
compiled form (value sets as fast matchers).

The schema is strict: unknown keys, wrong types and negative weights are errors that name the path.
``load_ruleset(path)`` returns a ``RuleSet``; ``load_default_ruleset()`` the one shipped in the package.

Validation runs in two passes, and every problem is reported with its path and, where the file has it,
its YAML line (``RuleSetError.located``):

1. the pydantic schema (unknown keys, wrong types, ranges);
2. ``_semantic_problems``: code references (known system alias, ``alias|code`` form), negative weights,
   unknown item ids in ``points`` (the ids the rules know: ``VENOUS_INDEX_ITEMS``, ``CONTRIBUTOR_ITEMS``),
   value sets the rules read, value-set files (``file:``), thresholds no combination of items can reach,
   and the card text of every enabled card in the ``cards`` package (``card_text_problems``);
   ``order_rules`` (order hooks): known order classes, drug-table classes and order card ids (the former
   single ``cramp-associated-drug-order`` id named as split); ``procedures``: FHIR R4 statuses;
   ``condition_text``: terms only for value sets that exist and can never raise a critical card
   (``CRITICAL_VALUE_SETS``), no empty cue, no term holding a cue.

ICD-10-CM codes are normalised (``normalize_code``: no dot, upper case) when a value set is compiled and at
every lookup, so records match with or without the dot, in any case (RULES.md, Codes).

``docs/rule-set.md`` documents every key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cds_service.ruleset.card_ids import LEGACY_DRUG_ORDER, ORDER_CARD_IDS, PATIENT_VIEW_CARD_IDS, is_drug_order_card
from cds_service.ruleset.text_match import TextMatcher, text_problems

# The card ids are defined once, in card_ids.py; these names stay for the modules that import them here.
CARD_IDS = PATIENT_VIEW_CARD_IDS
# Cards of the order hooks (order-select, order-sign; engine/order_rules.py): settings in ``cards`` like the above.
# The order classes engine/order_rules.py and the order cards know (RULES.md, Order hooks: the classes with a clear
# association in Garrison 2012), and the drug-table classes (engine/drugs.py) they group.
ORDER_CLASSES = ("quinine", "potassium-sparing", "thiazide", "laba")
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
# Value sets whose concepts can raise a ``critical`` card (A: acute / previous DVT, the signs, the Wells
# items): the Condition text fallback may never yield them (RULES.md, Text fallback for Conditions).
CRITICAL_VALUE_SETS = ("dvt_acute", "dvt_history", "leg_edema_one_side_by_code", "leg_edema_snomed_sided_by_body_site",
                       "leg_redness_cellulitis", "leg_pain", "active_cancer", "paralysis")
# FHIR R4 status codes (Procedure.status, ServiceRequest.status), for the ``procedures`` section.
PROCEDURE_STATUSES = ("preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                      "entered-in-error", "unknown")
SERVICE_REQUEST_STATUSES = ("draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown")
DRUG_TABLE_CLASSES = ("loop", "thiazide", "potassium-sparing", "laba", "statin", "anticoagulant", "quinine",
                      "carbonic-anhydrase-inhibitor")
_CODE_REF = re.compile(r"^(?P<alias>[a-z0-9_]+)\|(?P<code>[^\s|]+)$")

# The item ids the rules score (engine/rules.py reads these; an id in ``points`` outside them is an error).
VENOUS_CONDITION_ITEMS = ("varicose_veins", "venous_insufficiency", "venous_skin_changes", "post_thrombotic_syndrome")
VENOUS_INDEX_ITEMS = (*VENOUS_CONDITION_ITEMS, "previous_dvt", "chronic_leg_edema", "pregnancy", "age_50_or_over",
                      "bmi_30_or_over")
CONTRIBUTOR_DRUG_ITEMS = ("potassium_sparing_diuretic", "thiazide_diuretic", "loop_diuretic",
                          "long_acting_beta_agonist", "statin")
CONTRIBUTOR_CONDITION_ITEMS = (
    "liver_disease", "dialysis_or_eskd", "ckd_stage_3_5", "diabetes", "pregnancy", "hypothyroidism",
    "peripheral_artery_disease", "low_potassium", "low_magnesium", "recent_dehydration", "current_smoker",
    "high_cholesterol",
)
CONTRIBUTOR_ITEMS = (*CONTRIBUTOR_DRUG_ITEMS, *CONTRIBUTOR_CONDITION_ITEMS, "age_65_or_over")
RED_FLAG_SIGNS = ("one_sided_leg_swelling", "leg_redness_cellulitis", "leg_pain")
WELLS_ITEMS = ("active_cancer", "recent_surgery", "paralysis", "previous_dvt")
# The value sets engine/facts.py and engine/rules.py read by name: a rule set must define every one of them.
REQUIRED_VALUE_SETS = (
    "leg_cramp", "pregnancy", "smoking_current", "smoking_former", "smoking_never", "ckd_stage_3_5",
    "ckd_unspecified", "ckd_any", "dialysis_or_eskd", "heart_failure", "dvt_acute", "dvt_history",
    "varicose_veins", "venous_insufficiency", "venous_skin_changes", "leg_ulcer_needing_venous_record",
    "post_thrombotic_syndrome", "leg_edema", "leg_edema_one_side_by_code", "leg_edema_snomed_sided_by_body_site",
    "leg_redness_cellulitis", "leg_pain", "active_cancer", "paralysis", "peripheral_artery_disease",
    "high_cholesterol", "diabetes", "liver_disease", "hypothyroidism", "hypokalemia", "hypomagnesemia",
    "dehydration", "surgical_procedure_category", "pregnancy_status_pregnant", "pregnancy_status_not_pregnant",
    "venous_duplex",
)
CARD_TEXT_KEYS = ("summary", "source_url")

Path_ = tuple[Any, ...]  # a path into the YAML document: keys and list indices


class RuleSetError(ValueError):
    """The rule-set file is invalid; ``problems`` lists (path, message) pairs and ``lines`` the YAML line
    of each (None where the file has no such place, e.g. a missing key's parent is not found)."""

    def __init__(self, source: str, problems: list[tuple[str, str]], lines: list[int | None] | None = None) -> None:
        self.source = source
        self.problems = problems
        self.lines = list(lines) if lines is not None else [None] * len(problems)
        listed = "\n".join(
            f"  {f'line {line}: ' if line else ''}{path}: {message}"
            for (path, message), line in zip(problems, self.lines)
        )
        super().__init__(f"{source}: invalid rule set\n{listed}")

    @property
    def located(self) -> list[tuple[int | None, str, str]]:
        """(line, path, message) for each problem."""
        return [(line, path, message) for (path, message), line in zip(self.problems, self.lines)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueSetSpec(_Strict):
    source: str = Field(min_length=1)
    file: str | None = None  # a FHIR ValueSet JSON: next to the rule-set file, or shipped in data/valuesets/
    codes: list[str] = []
    prefixes: list[str] = []
    ranges: list[str] = []
    exclude: list[str] = []


class Windows(_Strict):
    recent_days: int = Field(ge=0)
    chronic_edema_min_days: int = Field(ge=0)
    dehydration_days: int = Field(ge=0)
    recent_surgery_days: int = Field(ge=0)
    lab_lookback_days: int = Field(ge=0)


class LastCharacterSides(_Strict):
    prefix: str
    sides: dict[str, str]


class Laterality(_Strict):
    code_sides: dict[str, list[str]]
    last_character_sides: list[LastCharacterSides] = []
    body_site_sides: dict[str, list[str]]


class ObservationSpec(_Strict):
    codes: list[str] = Field(min_length=1)
    window_days: int = Field(ge=0)
    low_below: dict[str, float] = {}
    units: list[str] = []


class Observations(_Strict):
    pregnancy_status: ObservationSpec
    smoking_status: ObservationSpec
    potassium: ObservationSpec
    magnesium: ObservationSpec
    bmi: ObservationSpec


class MedicationSpec(_Strict):
    request_intents: list[str]
    request_statuses: list[str]
    statement_statuses: list[str]


class RedFlag(_Strict):
    signs: list[str]
    signs_needed_alone: int = Field(ge=1)
    wells_items: list[str]


class VenousIndex(_Strict):
    threshold: float = Field(gt=0)
    points: dict[str, float]
    chronic_leg_edema_with_heart_failure: float = Field(ge=0)
    objective_signs: list[str]
    age_years: int = Field(ge=0)
    bmi_at_least: float = Field(gt=0)


class LabCheck(_Strict):
    drug_classes: list[str]
    conditions: list[str]


class Contributors(_Strict):
    threshold: float = Field(gt=0)
    points: dict[str, float]
    age_years: int = Field(ge=0)
    drug_classes: dict[str, str]
    lab_check: LabCheck


class Procedures(_Strict):
    """RULES.md, Concept boundaries: recent surgery (a Wells item) and a venous duplex on record (stops B).
    The surgery window is ``windows.recent_surgery_days``; the codes are the value sets
    ``surgical_procedure_category`` (Procedure.category) and ``venous_duplex``."""

    source: str = Field(min_length=1)
    surgery_statuses: list[str] = Field(min_length=1)
    duplex_window_days: int = Field(ge=0)
    duplex_procedure_statuses: list[str] = Field(min_length=1)
    duplex_service_request_statuses: list[str] = Field(min_length=1)


class ConditionText(_Strict):
    """RULES.md, Text fallback for Conditions: value-set name -> terms matched in ``code.text`` and each
    ``coding.display`` when no coding is in any value set; a text holding a cue is not matched."""

    source: str = Field(min_length=1)
    terms: dict[str, list[str]]
    cues: list[str]


class OrderRules(_Strict):
    """RULES.md, Order hooks: which draft MedicationRequests are judged, and which order classes each order
    card judges (``quinine-for-cramps``: for anyone; ``cramp-associated-drug-order-<class>``: with documented
    cramps, one card per drug class)."""

    statuses: list[str] = Field(min_length=1)
    order_classes: dict[str, list[str]]  # order class -> drug-table classes
    cards: dict[str, list[str]]  # order card id -> the order classes it judges


class CardSettings(_Strict):
    enabled: bool = True
    indicator: str
    suppress_days: int = Field(ge=0)

    @field_validator("indicator")
    @classmethod
    def _known_indicator(cls, value: str) -> str:
        if value not in {"info", "warning", "critical"}:
            raise ValueError("must be one of info, warning, critical")
        return value


class RuleSetSpec(_Strict):
    version: str = Field(min_length=1)
    title: str
    code_systems: dict[str, str]
    windows: Windows
    value_sets: dict[str, ValueSetSpec]
    laterality: Laterality
    observations: Observations
    medications: MedicationSpec
    red_flag: RedFlag
    venous_index: VenousIndex
    contributors: Contributors
    procedures: Procedures
    condition_text: ConditionText
    order_rules: OrderRules
    cards: dict[str, CardSettings]


def _check_code_ref(entry: str, systems: dict[str, str]) -> str | None:
    match = _CODE_REF.match(entry)
    if not match:
        return f"{entry!r} is not of the form '<system alias>|<code>'"
    if match["alias"] not in systems:
        return f"{entry!r} uses an unknown code system {match['alias']!r} (known: {', '.join(sorted(systems))})"
    return None


def normalize_code(system: str | None, code: str) -> str:
    """A code as the value sets hold it: ICD-10-CM without its dot, in upper case (RULES.md, Codes: ``R252``,
    ``r25.2`` and ``R25.2`` are one code); other systems exactly as given."""
    if system == ICD10CM:
        return code.replace(".", "").strip().upper()
    return code


@dataclass(frozen=True)
class ValueSet:
    """A compiled value set: exact codes, prefixes and category ranges per system URI (codes normalised by
    ``normalize_code``, here and at lookup)."""

    name: str
    codes: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    ranges: tuple[tuple[str, str, str], ...]
    excludes: tuple[tuple[str, str], ...]

    def contains(self, system: str | None, code: str | None) -> bool:
        if not system or not code:
            return False
        code = normalize_code(system, code)
        if any(system == ex_system and code.startswith(ex_code) for ex_system, ex_code in self.excludes):
            return False
        if (system, code) in self.codes:
            return True
        if any(system == p_system and code.startswith(prefix) for p_system, prefix in self.prefixes):
            return True
        category = code[:3]
        return any(
            system == r_system and low <= category <= high and len(code) >= 3
            for r_system, low, high in self.ranges
        )

    def first_match(self, codings: Iterable[tuple[str | None, str | None, str | None]]):
        for coding in codings:
            if self.contains(coding[0], coding[1]):
                return coding
        return None


class ConceptIndex:
    """All value sets compiled into one lookup: which of them hold a (system, code).

    The same answers as asking every ``ValueSet.contains`` in turn, for a fraction of the cost: engine/facts.py asks
    it for every Condition coding and engine/chart.py for every Condition it receives, where looping over 35 value
    sets and each of their prefixes was ~10 % of a call. Exact codes are one dict probe; prefixes (and
    exclusions) one probe per distinct prefix length, ``code[:length]`` against a dict of prefixes.
    """

    def __init__(self, value_sets: dict[str, ValueSet]) -> None:
        self._order = {name: index for index, name in enumerate(value_sets)}
        exact: dict[tuple[str, str], set[str]] = {}
        prefixes: dict[tuple[str, str], set[str]] = {}
        excludes: dict[tuple[str, str], set[str]] = {}
        self._ranges: list[tuple[str, str, str, str]] = []  # system, low, high, value set
        for name, value_set in value_sets.items():
            for pair in value_set.codes:
                exact.setdefault(pair, set()).add(name)
            for pair in value_set.prefixes:
                prefixes.setdefault(pair, set()).add(name)
            for pair in value_set.excludes:
                excludes.setdefault(pair, set()).add(name)
            self._ranges += [(system, low, high, name) for system, low, high in value_set.ranges]
        self._exact = {pair: frozenset(names) for pair, names in exact.items()}
        self._prefixes = {pair: frozenset(names) for pair, names in prefixes.items()}
        self._excludes = {pair: frozenset(names) for pair, names in excludes.items()}
        # A hit on code[:n] means the code starts with that prefix, also when the code is shorter than n.
        self._prefix_lengths = sorted({len(prefix) for _, prefix in prefixes})
        self._exclude_lengths = sorted({len(prefix) for _, prefix in excludes})

    def names(self, system: str | None, code: str | None) -> frozenset[str]:
        """The value sets that hold this coding (``ValueSet.contains``)."""
        if not system or not code:
            return frozenset()
        code = normalize_code(system, code)
        found = set(self._exact.get((system, code), ()))
        for length in self._prefix_lengths:
            found.update(self._prefixes.get((system, code[:length]), ()))
        if len(code) >= 3:
            category = code[:3]
            found.update(name for r_system, low, high, name in self._ranges
                         if system == r_system and low <= category <= high)
        if found:
            for length in self._exclude_lengths:
                found.difference_update(self._excludes.get((system, code[:length]), ()))
        return frozenset(found)

    def holds(self, system: str | None, code: str | None) -> bool:
        """Whether any value set holds this coding."""
        return bool(self.names(system, code))

    def first_matches(self, codings: Iterable[tuple[str | None, str | None, str | None]]) -> dict[str, Any]:
        """Value set name -> the first of ``codings`` it holds (``ValueSet.first_match`` for each value set),
        in the rule set's order of value sets."""
        hits: dict[str, Any] = {}
        for coding in codings:
            for name in self.names(coding[0], coding[1]):
                hits.setdefault(name, coding)
        return {name: hits[name] for name in sorted(hits, key=self._order.__getitem__)}


@dataclass(frozen=True)
class CompiledLaterality:
    """``laterality`` of the rule set as (side, resolved (system, code) pairs), in the file's order."""

    code_sides: tuple[tuple[str, frozenset[tuple[str, str]]], ...]
    last_character_sides: tuple[tuple[str, str, dict[str, str]], ...]  # system, prefix, last char -> side
    body_site_sides: tuple[tuple[str, frozenset[tuple[str, str]]], ...]


class RuleSet:
    """A validated rule set with compiled value sets."""

    def __init__(self, spec: RuleSetSpec, source: str,
                 file_codes: dict[str, frozenset[tuple[str, str]]] | None = None) -> None:
        self.spec = spec
        self.source = source
        file_codes = file_codes or {}
        self.value_sets = {
            name: _compile(name, vs, spec.code_systems, file_codes.get(name, frozenset()))
            for name, vs in spec.value_sets.items()
        }
        self.concepts = ConceptIndex(self.value_sets)

    @property
    def version(self) -> str:
        return self.spec.version

    def value_set(self, name: str) -> ValueSet:
        return self.value_sets[name]

    def system(self, alias: str) -> str:
        return self.spec.code_systems[alias]

    def resolve(self, ref: str) -> tuple[str, str]:
        """``alias|code`` as (system URI, code normalised as the value sets hold it)."""
        return _resolved(ref, self.spec.code_systems)

    @cached_property
    def condition_text(self) -> TextMatcher:
        """The Condition text fallback (RULES.md): terms per value set and the negation / uncertainty cues."""
        spec = self.spec.condition_text
        return TextMatcher(spec.terms, spec.cues)

    @cached_property
    def laterality(self) -> "CompiledLaterality":
        """The laterality tables with their code references resolved once (engine/facts.py reads them per record)."""
        spec = self.spec.laterality

        def resolved(sides: dict[str, list[str]]) -> tuple[tuple[str, frozenset[tuple[str, str]]], ...]:
            return tuple((side, frozenset(self.resolve(ref) for ref in refs)) for side, refs in sides.items())

        return CompiledLaterality(
            code_sides=resolved(spec.code_sides),
            last_character_sides=tuple((*self.resolve(rule.prefix), rule.sides) for rule in spec.last_character_sides),
            body_site_sides=resolved(spec.body_site_sides),
        )

    @cached_property
    def procedure_codes(self) -> frozenset[tuple[str, str]] | None:
        """The (system, code) pairs that make a Procedure or ServiceRequest readable by a rule (surgical
        category, venous duplex), for engine/chart.py to skip validating the rest; None when one of those value sets
        uses prefixes or ranges (then every record is read)."""
        sets = [self.value_sets[name] for name in ("surgical_procedure_category", "venous_duplex")]
        if any(vs.prefixes or vs.ranges for vs in sets):
            return None
        return frozenset().union(*(vs.codes for vs in sets))

    @cached_property
    def observation_codes(self) -> dict[tuple[str, str], str]:
        """(system, code) -> observation kind (pregnancy_status, potassium, ...)."""
        table: dict[tuple[str, str], str] = {}
        for kind, spec in self.spec.observations:
            for ref in spec.codes:
                table[self.resolve(ref)] = kind
        return table


def _resolved(ref: str, systems: dict[str, str]) -> tuple[str, str]:
    """``alias|code`` as (system URI, normalised code)."""
    alias, code = ref.split("|", 1)
    system = systems[alias]
    return system, normalize_code(system, code)


def _compile(name: str, spec: ValueSetSpec, systems: dict[str, str],
             file_codes: frozenset[tuple[str, str]] = frozenset()) -> ValueSet:
    def pairs(entries: list[str]) -> list[tuple[str, str]]:
        return [_resolved(e, systems) for e in entries]

    ranges = []
    for system, span in pairs(spec.ranges):
        low, _, high = span.partition("-")
        ranges.append((system, low, high or low))
    return ValueSet(
        name=name,
        codes=frozenset(pairs(spec.codes)) | {(system, normalize_code(system, code)) for system, code in file_codes},
        prefixes=tuple(pairs(spec.prefixes)),
        ranges=tuple(ranges),
        excludes=tuple(pairs(spec.exclude)),
    )


# ---------------------------------------------------------------- semantic checks

def _semantic_problems(spec: RuleSetSpec) -> list[tuple[Path_, str]]:
    """Cross-field checks on a schema-valid rule set; each problem with the path it is about."""
    problems: list[tuple[Path_, str]] = []
    systems = spec.code_systems
    for name, value_set in spec.value_sets.items():
        for kind in ("codes", "prefixes", "ranges", "exclude"):
            for index, entry in enumerate(getattr(value_set, kind)):
                problem = _check_code_ref(entry, systems)
                if problem:
                    problems.append((("value_sets", name, kind, index), problem))
    missing_sets = [name for name in REQUIRED_VALUE_SETS if name not in spec.value_sets]
    if missing_sets:
        problems.append((("value_sets",), f"missing value sets the rules read: {', '.join(missing_sets)}"))
    for spec_name, observation in spec.observations:
        for index, entry in enumerate(observation.codes):
            problem = _check_code_ref(entry, systems)
            if problem:
                problems.append((("observations", spec_name, "codes", index), problem))
    for side, refs in spec.laterality.code_sides.items():
        problems += [(("laterality", "code_sides", side, i), p) for i, r in enumerate(refs)
                     if (p := _check_code_ref(r, systems))]
    for side, refs in spec.laterality.body_site_sides.items():
        problems += [(("laterality", "body_site_sides", side, i), p) for i, r in enumerate(refs)
                     if (p := _check_code_ref(r, systems))]
    for index, rule in enumerate(spec.laterality.last_character_sides):
        if problem := _check_code_ref(rule.prefix, systems):
            problems.append((("laterality", "last_character_sides", index, "prefix"), problem))
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


def _procedure_problems(spec: RuleSetSpec) -> list[tuple[Path_, str]]:
    rules = spec.procedures
    problems: list[tuple[Path_, str]] = []
    for key, known in (("surgery_statuses", PROCEDURE_STATUSES), ("duplex_procedure_statuses", PROCEDURE_STATUSES),
                       ("duplex_service_request_statuses", SERVICE_REQUEST_STATUSES)):
        for index, status in enumerate(getattr(rules, key)):
            if status not in known:
                problems.append((("procedures", key, index),
                                 f"unknown status {status!r} (FHIR R4: {', '.join(known)})"))
    return problems


def _condition_text_problems(spec: RuleSetSpec) -> list[tuple[Path_, str]]:
    text = spec.condition_text
    problems: list[tuple[Path_, str]] = [(("condition_text", *path), message)
                                         for path, message in text_problems(text.terms, text.cues)]
    for name in text.terms:
        where = ("condition_text", "terms", name)
        if name not in spec.value_sets:
            problems.append((where, f"no value set named {name!r}"))
        elif name in CRITICAL_VALUE_SETS:
            problems.append((where, f"{name} can raise a critical card: free text may never yield it "
                             f"(not allowed: {', '.join(CRITICAL_VALUE_SETS)})"))
    return problems


def _order_rule_problems(rules: OrderRules) -> list[tuple[Path_, str]]:
    problems: list[tuple[Path_, str]] = []
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
                       card_ids: tuple[str, ...] = CARD_IDS) -> list[tuple[Path_, str]]:
    """Every enabled card needs its wording: ``cards/<card id>.yaml`` in the ``cards`` package, a mapping with
    at least ``summary`` and ``source_url``; a drug-order card's file also needs an ``order_classes`` entry
    for each order class the card judges (``order_rules.cards``). Used by ``rules validate``, at service start and on reload (``parse_ruleset`` runs
    it, for ``CARD_IDS`` and for ``ORDER_CARD_IDS``)."""
    folder = folder if folder is not None else resources.files("cards")
    problems: list[tuple[Path_, str]] = []
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
            classes = text.get("order_classes") if isinstance(text.get("order_classes"), dict) else {}
            absent += [f"order_classes.{c}" for c in spec.order_rules.cards.get(card_id, []) if c not in classes]
        if absent:
            problems.append((where, f"card text cards/{name}.yaml lacks {', '.join(absent)}"))
    return problems


# ---------------------------------------------------------------- value-set files

def _shipped_valuesets() -> Any:
    return resources.files("cds_service").joinpath("data")


def _resolve_valueset_file(name: str, base_dir: Path | None) -> Any | None:
    """``file:`` relative to the rule-set file's folder, else to the package's ``data/`` folder (for
    ``valuesets/<name>.json`` shipped with the package)."""
    candidates: list[Any] = []
    if base_dir is not None:
        candidates.append(base_dir / name)
    candidates.append(_shipped_valuesets().joinpath(name))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def read_valueset_codes(text: str) -> list[tuple[str, str]]:
    """(system, code) pairs of a FHIR ValueSet: ``expansion.contains`` (nested ``contains`` too), else
    ``compose.include[].concept``. Raises ValueError with what is wrong."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("resourceType") != "ValueSet":
        raise ValueError("not a FHIR ValueSet (resourceType must be ValueSet)")
    pairs: list[tuple[str, str]] = []

    def walk(entries: Any) -> None:
        for entry in entries or []:
            if not isinstance(entry, dict):
                raise ValueError("expansion.contains holds a non-object")
            if entry.get("code") and not entry.get("abstract"):
                if not entry.get("system"):
                    raise ValueError(f"expansion code {entry['code']!r} has no system")
                pairs.append((str(entry["system"]), str(entry["code"])))
            walk(entry.get("contains"))

    expansion = data.get("expansion")
    if isinstance(expansion, dict) and expansion.get("contains"):
        walk(expansion["contains"])
        return pairs
    for index, include in enumerate((data.get("compose") or {}).get("include") or []):
        if include.get("filter") or include.get("valueSet"):
            raise ValueError(f"compose.include[{index}] uses filter/valueSet: only explicit codes are supported "
                             "(ship an expansion)")
        system = include.get("system")
        concepts = include.get("concept") or []
        if concepts and not system:
            raise ValueError(f"compose.include[{index}] has concepts but no system")
        pairs += [(system, str(c["code"])) for c in concepts if isinstance(c, dict) and c.get("code")]
    if not pairs:
        raise ValueError("holds no codes (expected expansion.contains or compose.include.concept)")
    return pairs


def _valueset_file_codes(spec: RuleSetSpec, base_dir: Path | None,
                         problems: list[tuple[Path_, str]]) -> dict[str, frozenset[tuple[str, str]]]:
    known_systems = set(spec.code_systems.values())
    codes: dict[str, frozenset[tuple[str, str]]] = {}
    for name, value_set in spec.value_sets.items():
        if not value_set.file:
            continue
        where = ("value_sets", name, "file")
        found = _resolve_valueset_file(value_set.file, base_dir)
        if found is None:
            looked = [str(base_dir / value_set.file)] if base_dir is not None else []
            looked.append(f"cds_service/data/{value_set.file} (shipped)")
            problems.append((where, f"value-set file {value_set.file!r} not found (looked in {', '.join(looked)})"))
            continue
        try:
            pairs = read_valueset_codes(found.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((where, f"value-set file {value_set.file!r} cannot be read: {exc}"))
            continue
        except ValueError as exc:
            problems.append((where, f"value-set file {value_set.file!r}: {exc}"))
            continue
        unknown = sorted({system for system, _ in pairs} - known_systems)
        if unknown:
            problems.append((where, f"value-set file {value_set.file!r} uses code systems not in code_systems: "
                             f"{', '.join(unknown)}"))
            continue
        codes[name] = frozenset(pairs)
    return codes


# ---------------------------------------------------------------- YAML lines

def _line_index(text: str) -> dict[Path_, int]:
    """Path (keys and list indices) -> 1-based line of that node (a mapping entry: its key's line)."""
    index: dict[Path_, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for position, item in enumerate(node.value):
                child = (*path, position)
                index[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        index[()] = root.start_mark.line + 1
        walk(root, ())
    return index


def line_of(index: dict[Path_, int], path: Path_) -> int | None:
    """The line of ``path``, or of its nearest ancestor present in the file (a missing key: its parent)."""
    for end in range(len(path), -1, -1):
        line = index.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


def _format_path(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _raise(source: str, text: str, problems: list[tuple[Path_, str]]) -> None:
    index = _line_index(text)
    raise RuleSetError(
        source,
        [(_format_path(path), message) for path, message in problems],
        [line_of(index, path) for path, _ in problems],
    )


# ---------------------------------------------------------------- entry points

def parse_ruleset(text: str, source: str, base_dir: Path | None = None) -> RuleSet:
    """Validate and compile a rule set; ``base_dir`` is the folder ``value_sets.*.file`` are relative to."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise RuleSetError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")],
                           [mark.line + 1 if mark else None]) from None
    if not isinstance(data, dict):
        raise RuleSetError(source, [("(top)", "expected a mapping of rule-set keys")], [1])
    try:
        spec = RuleSetSpec.model_validate(data)
    except ValidationError as exc:
        _raise(source, text, [(tuple(error["loc"]), _message(error)) for error in exc.errors()])
        raise  # unreachable: _raise always raises
    problems = _semantic_problems(spec)
    file_codes = _valueset_file_codes(spec, base_dir, problems)
    if problems:
        _raise(source, text, problems)
    return RuleSet(spec, source, file_codes)


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def load_ruleset(path: Path | str) -> RuleSet:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise RuleSetError(str(path), [("(file)", f"cannot be read: {reason}")]) from None
    return parse_ruleset(text, str(path), base_dir=path.resolve().parent)


def load_default_ruleset() -> RuleSet:
    text = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")
    return parse_ruleset(text, "cds_service/data/ruleset.yaml")
