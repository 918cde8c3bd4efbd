"""The active rule set as a person reads it: for each card its criteria, weights, thresholds, windows, value
sets (each code with its system and display), suppression, enabled state and wording (docs/admin-rules.md).

Built from a validated ``RuleSet`` (and the card wording of the ``cards`` package); pure, no Flask. Every
number or list shown carries its ``field``: the dotted path into the YAML the validator names in its
problems and the console's form edits (``ruleset_edit.apply_changes``), so an error lands next to its field.
Code displays come from a value-set file's own displays, else from ``data/code_displays.yaml`` (copied
from ../shared/clinical/codes.json and the VSAC expansions), else from the value-set files shipped in
``data/valuesets/``; a code without one says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from cds_service.engine.card_text import CardContent, load_card_content
from cds_service.ruleset import card_ids
from cds_service.ruleset.index import normalize_code
from cds_service.ruleset.loader import RuleSet
from cds_service.ruleset.schema import RuleSetSpec

SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.ama-assn.org/go/cpt": "CPT",
}
ENTRY_KINDS = ("codes", "prefixes", "ranges", "exclude")
# What each kind of value-set entry means, in words (the Rules page's column "matches").
ENTRY_KIND_LABELS = {"codes": "code", "prefixes": "codes starting with", "ranges": "categories",
                     "exclude": "never matches", "file": "from the value-set file"}


# ---------------------------------------------------------------- the display model

@dataclass(frozen=True)
class Code:
    """One entry of a value set, as a person reads it."""

    ref: str  # "icd10cm|R25.2" (as written in the rule set; a file's codes: "<system URI>|<code>")
    kind: str  # codes | prefixes | ranges | exclude | file
    system: str  # the system URI
    system_name: str  # "ICD-10-CM"
    code: str
    display: str | None  # None: no display on file
    verification: str | None = None  # codes.json's status (verified, partial, unverified, do_not_use)

    @property
    def kind_label(self) -> str:
        return ENTRY_KIND_LABELS[self.kind]


@dataclass(frozen=True)
class ValueSetView:
    name: str
    source: str
    file: str | None
    codes: tuple[Code, ...]

    @property
    def field(self) -> str:
        return f"value_sets.{self.name}"

    def entries(self, kind: str) -> tuple[Code, ...]:
        return tuple(code for code in self.codes if code.kind == kind)

    def refs(self, kind: str) -> list[str]:
        """The entries of one kind as the YAML lists them (the form's value for that list)."""
        return [code.ref for code in self.entries(kind)]


@dataclass(frozen=True)
class Setting:
    """One number, list or string of the rule set, as the form shows and edits it."""

    field: str  # dotted path into the YAML: "venous_index.threshold"
    label: str
    value: Any
    kind: str  # integer | number | list | text | boolean | choice
    unit: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def form_value(self) -> str:
        """The value as the form's input holds it (lists one entry a line)."""
        if self.kind == "list":
            return "\n".join(str(entry) for entry in self.value)
        if self.kind == "boolean":
            return "true" if self.value else "false"
        if isinstance(self.value, float) and self.value.is_integer():
            return str(int(self.value))
        return str(self.value)


@dataclass(frozen=True)
class CardView:
    card_id: str
    summary: str  # the card's headline (cards/<id>.yaml)
    hook: str  # patient-view | order-select, order-sign
    evaluation: str  # "A.1", "B", ... (RULES.md)
    enabled: Setting
    indicator: Setting
    suppress_days: Setting
    suppression: str  # the suppression rule in words
    criteria: tuple[str, ...]  # when the card fires, in words, with this rule set's numbers
    thresholds: tuple[Setting, ...] = ()
    weights: tuple[Setting, ...] = ()
    windows: tuple[Setting, ...] = ()
    lists: tuple[Setting, ...] = ()  # signs, Wells items, objective signs, order classes ...
    value_sets: tuple[ValueSetView, ...] = ()
    wording: tuple[tuple[str, str], ...] = ()  # (key, text) from cards/<id>.yaml, read-only here

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Every editable setting of this card, in the order the form shows them."""
        return (self.enabled, self.indicator, self.suppress_days, *self.thresholds, *self.weights,
                *self.windows, *self.lists)


@dataclass(frozen=True)
class RuleSetView:
    version: str
    title: str
    source: str
    cards: tuple[CardView, ...]
    value_sets: tuple[ValueSetView, ...]  # every value set, in the file's order
    windows: tuple[Setting, ...]
    observations: tuple[Setting, ...]
    code_systems: tuple[tuple[str, str], ...]  # (alias, URI)
    general: tuple[Setting, ...] = field(default=())  # version, title

    def card(self, card_id: str) -> CardView:
        return next(card for card in self.cards if card.card_id == card_id)

    def value_set(self, name: str) -> ValueSetView:
        return next(vs for vs in self.value_sets if vs.name == name)

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Every setting the form edits, cards first (a field shared by two cards appears once)."""
        seen: dict[str, Setting] = {}
        for setting in (*self.general, *(s for card in self.cards for s in card.settings), *self.windows,
                        *self.observations):
            seen.setdefault(setting.field, setting)
        return tuple(seen.values())


# ---------------------------------------------------------------- code displays

@cache
def _display_table() -> dict[tuple[str, str], tuple[str, str | None]]:
    """(system URI, normalised code) -> (display, verification) from data/code_displays.yaml."""
    text = resources.files("cds_service").joinpath("data/code_displays.yaml").read_text(encoding="utf-8")
    table: dict[tuple[str, str], tuple[str, str | None]] = {}
    for system, codes in (yaml.safe_load(text) or {}).items():
        for code, entry in codes.items():
            table[(system, normalize_code(system, str(code)))] = (entry["display"], entry.get("verification"))
    # then the displays of the value-set files shipped in data/valuesets/ (VSAC expansions)
    for entry in sorted(resources.files("cds_service").joinpath("data/valuesets").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            try:
                data = json.loads(entry.read_text(encoding="utf-8"))
            except ValueError:
                continue
            for system, code, display in _walk_contains(data):
                if display:
                    table.setdefault((system, normalize_code(system, code)), (display, None))
    return table


def display_of(system: str, code: str) -> tuple[str | None, str | None]:
    """(display, verification) of a code from the shipped table, or (None, None)."""
    return _display_table().get((system, normalize_code(system, code)), (None, None))


def _file_entries(ruleset: RuleSet, file_name: str) -> list[tuple[str, str, str | None]]:
    """(system, code, display) of a value-set file, found as the loader finds it (beside the rule-set file,
    else shipped in data/); [] when it cannot be read (the loader has refused such a rule set already)."""
    candidates: list[Any] = []
    source = Path(ruleset.source)
    if source.is_file():
        candidates.append(source.resolve().parent / file_name)
    candidates.append(resources.files("cds_service").joinpath("data").joinpath(file_name))
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return []
            return list(_walk_contains(data))
    return []


def _walk_contains(data: Any) -> Iterable[tuple[str, str, str | None]]:
    def walk(entries: Any) -> Iterable[tuple[str, str, str | None]]:
        for entry in entries or []:
            if isinstance(entry, dict):
                if entry.get("code") and entry.get("system") and not entry.get("abstract"):
                    yield str(entry["system"]), str(entry["code"]), entry.get("display")
                yield from walk(entry.get("contains"))

    expansion = data.get("expansion") if isinstance(data, dict) else None
    if isinstance(expansion, dict) and expansion.get("contains"):
        yield from walk(expansion["contains"])
        return
    for include in ((data.get("compose") or {}).get("include") or []) if isinstance(data, dict) else []:
        for concept in include.get("concept") or []:
            if isinstance(concept, dict) and concept.get("code"):
                yield str(include.get("system")), str(concept["code"]), concept.get("display")


def _value_set_view(ruleset: RuleSet, name: str) -> ValueSetView:
    spec = ruleset.spec.value_sets[name]
    codes: list[Code] = []
    for kind in ENTRY_KINDS:
        for ref in getattr(spec, kind):
            alias, _, code = ref.partition("|")
            system = ruleset.spec.code_systems.get(alias, alias)
            display, verification = display_of(system, code) if kind != "ranges" else (None, None)
            codes.append(Code(ref, kind, system, SYSTEM_NAMES.get(system, alias), code, display, verification))
    if spec.file:
        for system, code, display in _file_entries(ruleset, spec.file):
            table_display, verification = display_of(system, code)
            codes.append(Code(f"{system}|{code}", "file", system, SYSTEM_NAMES.get(system, system), code,
                              display or table_display, verification))
    return ValueSetView(name, spec.source, spec.file, tuple(codes))


# ---------------------------------------------------------------- which card reads what

# The value sets each card's rule reads (engine/facts.py, engine/rules.py, engine/order_rules.py), in the order
# the Rules page lists them.
_CONTRIBUTOR_SETS = ("leg_cramp", "liver_disease", "dialysis_or_eskd", "ckd_stage_3_5", "ckd_any", "diabetes",
                     "pregnancy", "hypothyroidism", "peripheral_artery_disease", "hypokalemia", "hypomagnesemia",
                     "dehydration", "smoking_current", "high_cholesterol")
CARD_VALUE_SETS: dict[str, tuple[str, ...]] = {
    card_ids.UNTREATED_DVT: ("dvt_acute",),
    card_ids.POSSIBLE_DVT: ("leg_edema_one_side_by_code", "leg_edema_snomed_sided_by_body_site",
                            "leg_redness_cellulitis", "leg_pain", "active_cancer", "paralysis", "dvt_history",
                            "dvt_acute", "surgical_procedure_category"),
    card_ids.VENOUS_DUPLEX_WORKUP: ("leg_cramp", "varicose_veins", "venous_insufficiency", "venous_skin_changes",
                                    "leg_ulcer_needing_venous_record", "post_thrombotic_syndrome", "dvt_history",
                                    "leg_edema", "heart_failure", "pregnancy", "venous_duplex"),
    card_ids.CONSERVATIVE_CARE: _CONTRIBUTOR_SETS,
    card_ids.ELEVATED_CRAMP_RISK: _CONTRIBUTOR_SETS,
    card_ids.QUININE_FOR_CRAMPS: (),
    **{card_id: ("leg_cramp",) for card_id in card_ids.DRUG_ORDER_CARD_IDS},
}
_C_CARDS = (card_ids.CONSERVATIVE_CARE, card_ids.ELEVATED_CRAMP_RISK)
# Section (or field) of the rule set -> the cards whose rule reads it; the longest matching prefix wins.
_FIELD_CARDS: dict[str, tuple[str, ...]] = {
    "windows.recent_days": (card_ids.UNTREATED_DVT, card_ids.POSSIBLE_DVT),
    "windows.recent_surgery_days": (card_ids.POSSIBLE_DVT,),
    "windows.chronic_edema_min_days": (card_ids.VENOUS_DUPLEX_WORKUP,),
    "windows.dehydration_days": _C_CARDS,
    "windows.lab_lookback_days": _C_CARDS,
    "red_flag": (card_ids.POSSIBLE_DVT,),
    "venous_index": (card_ids.VENOUS_DUPLEX_WORKUP,),
    "contributors": _C_CARDS,
    "procedures.surgery_statuses": (card_ids.POSSIBLE_DVT,),
    "procedures.duplex_window_days": (card_ids.VENOUS_DUPLEX_WORKUP, card_ids.CONSERVATIVE_CARE),
    "procedures.duplex_procedure_statuses": (card_ids.VENOUS_DUPLEX_WORKUP, card_ids.CONSERVATIVE_CARE),
    "procedures.duplex_service_request_statuses": (card_ids.VENOUS_DUPLEX_WORKUP, card_ids.CONSERVATIVE_CARE),
    "observations.pregnancy_status": (card_ids.VENOUS_DUPLEX_WORKUP, *_C_CARDS),
    "observations.smoking_status": _C_CARDS,
    "observations.potassium": _C_CARDS,
    "observations.magnesium": _C_CARDS,
    "observations.bmi": (card_ids.VENOUS_DUPLEX_WORKUP,),
    "order_rules": card_ids.ORDER_CARD_IDS,
}


def cards_reading(field: str) -> tuple[str, ...]:
    """The cards whose rule reads the rule-set field ``field`` (dotted path); () for a field every card
    shares (version, code systems, laterality, medications, the text fallback)."""
    parts = field.split(".")
    if parts[0] == "cards" and len(parts) > 1:
        return (parts[1],)
    if parts[:2] == ["order_rules", "cards"] and len(parts) > 2:
        return (parts[2],)
    if parts[0] == "value_sets" and len(parts) > 1:
        return tuple(card for card, names in CARD_VALUE_SETS.items() if parts[1] in names)
    for end in range(len(parts), 0, -1):
        cards = _FIELD_CARDS.get(".".join(parts[:end]))
        if cards is not None:
            return cards
    return ()


# ---------------------------------------------------------------- the cards

def _label(content: CardContent, item: str) -> str:
    return content.common.label(item)


def _words(content: CardContent, items: Iterable[str]) -> str:
    return ", ".join(_label(content, item).lower() for item in items) or "none"


def _num(value: float) -> str:
    return f"{value:g}"


def _points(spec_block: Any, section: str, content: CardContent) -> tuple[Setting, ...]:
    return tuple(Setting(f"{section}.points.{item}", _label(content, item), points, "number", "points")
                 for item, points in spec_block.points.items())


def _window(spec: RuleSetSpec, key: str, label: str) -> Setting:
    return Setting(f"windows.{key}", label, getattr(spec.windows, key), "integer", "days")


def _card_settings(spec: RuleSetSpec, card_id: str) -> tuple[Setting, Setting, Setting]:
    settings = spec.cards[card_id]
    base = f"cards.{card_id}"
    return (
        Setting(f"{base}.enabled", "Shown", settings.enabled, "boolean"),
        Setting(f"{base}.indicator", "Indicator", settings.indicator, "choice", choices=("info", "warning", "critical")),
        Setting(f"{base}.suppress_days", "Not shown again after an override for", settings.suppress_days,
                "integer", "days", help="0: never suppressed; a critical card is never suppressed"),
    )


def _suppression(spec: RuleSetSpec, card_id: str) -> str:
    settings = spec.cards[card_id]
    if settings.indicator == "critical":
        return "Critical: never suppressed, whatever suppress_days says."
    if settings.suppress_days == 0:
        return "Never suppressed: shown again even after an override."
    text = (f"After an override, not shown again for the same patient, by any clinician, for "
            f"{settings.suppress_days} days.")
    if card_ids.legacy_ids(card_id):
        text += f" Overrides recorded under the former id {', '.join(card_ids.legacy_ids(card_id))} count too."
    return text


def _wording(content: CardContent, card_id: str) -> tuple[tuple[str, str], ...]:
    if card_id not in content.cards:
        return ()
    flat: list[tuple[str, str]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            if path != "kind":
                flat.append((path, value))
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (list, tuple)):
            for index, inner in enumerate(value):
                walk(inner, f"{path}[{index}]")

    walk(content.card(card_id).model_dump(), "")
    return tuple(flat)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _summary(content: CardContent, card_id: str, spec: RuleSetSpec) -> str:
    """The card's headline as a person reads it: a drug-order card's class wording filled in, any other
    placeholder (a score) shown as [score]."""
    if card_id not in content.cards:
        return card_id
    text = content.card(card_id)
    values: dict[str, str] = {}
    classes = getattr(text, "order_classes", None) or {}
    judged = [classes[c] for c in spec.order_rules.cards.get(card_id, []) if c in classes]
    if judged:
        values = {"class_label": judged[0].label, "class_plural": judged[0].plural, "class_name": judged[0].name}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), f"[{m.group(1)}]"), text.summary)


class _Builder:
    """Builds the CardView of each card from one rule set and the card wording."""

    def __init__(self, ruleset: RuleSet, content: CardContent) -> None:
        self.ruleset = ruleset
        self.spec = ruleset.spec
        self.content = content
        self._value_sets = {name: _value_set_view(ruleset, name) for name in self.spec.value_sets}

    def value_sets(self, *names: str) -> tuple[ValueSetView, ...]:
        return tuple(self._value_sets[name] for name in names if name in self._value_sets)

    def card(self, card_id: str, hook: str, evaluation: str, criteria: Iterable[str], **parts: Any) -> CardView:
        enabled, indicator, suppress = _card_settings(self.spec, card_id)
        return CardView(card_id, _summary(self.content, card_id, self.spec), hook, evaluation, enabled, indicator, suppress,
                        _suppression(self.spec, card_id), tuple(criteria), wording=_wording(self.content, card_id),
                        **parts)

    def untreated_dvt(self) -> CardView:
        days = self.spec.windows.recent_days
        return self.card(
            card_ids.UNTREATED_DVT, "patient-view", "A.1",
            [f"An acute DVT (value set dvt_acute) recorded in the last {days} days, and no active anticoagulant.",
             "Wins over possible-dvt; when it fires, the venous and cramp cards show nothing."],
            windows=(_window(self.spec, "recent_days", "Recent window"),),
            value_sets=self.value_sets(*CARD_VALUE_SETS[card_ids.UNTREATED_DVT]),
        )

    def possible_dvt(self) -> CardView:
        red = self.spec.red_flag
        days = self.spec.windows.recent_days
        return self.card(
            card_ids.POSSIBLE_DVT, "patient-view", "A.2 / A.3",
            [f"{red.signs_needed_alone} of the signs ({_words(self.content, red.signs)}), each recorded in the "
             f"last {days} days; or",
             f"one of those signs plus a Wells item ({_words(self.content, red.wells_items)}).",
             f"Recent surgery: a Procedure ({', '.join(self.spec.procedures.surgery_statuses)}) of category "
             f"surgical_procedure_category in the last {self.spec.windows.recent_surgery_days} days."],
            thresholds=(Setting("red_flag.signs_needed_alone", "Signs that fire on their own", red.signs_needed_alone,
                                "integer", "signs"),),
            windows=(_window(self.spec, "recent_days", "Recent window"),
                     _window(self.spec, "recent_surgery_days", "Recent surgery window")),
            lists=(Setting("red_flag.signs", "Signs", red.signs, "list"),
                   Setting("red_flag.wells_items", "Wells items", red.wells_items, "list"),
                   Setting("procedures.surgery_statuses", "Procedure statuses that count as surgery",
                           self.spec.procedures.surgery_statuses, "list")),
            value_sets=self.value_sets(*CARD_VALUE_SETS[card_ids.POSSIBLE_DVT]),
        )

    def venous(self) -> CardView:
        venous = self.spec.venous_index
        procedures = self.spec.procedures
        return self.card(
            card_ids.VENOUS_DUPLEX_WORKUP, "patient-view", "B",
            ["Documented leg cramps (value set leg_cramp), and",
             f"a venous index of at least {_num(venous.threshold)} points with at least one objective sign "
             f"({_words(self.content, venous.objective_signs)}).",
             f"Chronic leg oedema: an active leg_edema record dated more than "
             f"{self.spec.windows.chronic_edema_min_days} days before; it scores "
             f"{_num(venous.chronic_leg_edema_with_heart_failure)} when heart failure is active.",
             f"Not shown when a venous duplex is on record in the last {procedures.duplex_window_days} days."],
            thresholds=(
                Setting("venous_index.threshold", "Venous index needed", venous.threshold, "number", "points"),
                Setting("venous_index.age_years", "Age item from", venous.age_years, "integer", "years"),
                Setting("venous_index.bmi_at_least", "BMI item from", venous.bmi_at_least, "number", "kg/m²"),
                Setting("venous_index.chronic_leg_edema_with_heart_failure",
                        "Chronic oedema points with heart failure", venous.chronic_leg_edema_with_heart_failure,
                        "number", "points"),
            ),
            weights=_points(venous, "venous_index", self.content),
            windows=(_window(self.spec, "chronic_edema_min_days", "Oedema counts as chronic after"),
                     Setting("procedures.duplex_window_days", "A venous duplex counts as on record for",
                             procedures.duplex_window_days, "integer", "days")),
            lists=(Setting("venous_index.objective_signs", "Objective signs (at least one needed)",
                           venous.objective_signs, "list"),),
            value_sets=self.value_sets(*CARD_VALUE_SETS[card_ids.VENOUS_DUPLEX_WORKUP]),
        )

    def _contributor_parts(self) -> dict[str, Any]:
        contributors = self.spec.contributors
        return dict(
            weights=_points(contributors, "contributors", self.content),
            windows=(_window(self.spec, "dehydration_days", "Dehydration counts for"),
                     _window(self.spec, "lab_lookback_days", "A potassium or magnesium result counts for")),
            lists=(Setting("contributors.lab_check.drug_classes", "Drug classes that call for the lab suggestion",
                           contributors.lab_check.drug_classes, "list"),
                   Setting("contributors.lab_check.conditions", "Value sets that call for the lab suggestion",
                           contributors.lab_check.conditions, "list")),
            value_sets=self.value_sets(*_CONTRIBUTOR_SETS),
        )

    def conservative(self) -> CardView:
        return self.card(
            card_ids.CONSERVATIVE_CARE, "patient-view", "C",
            ["Documented leg cramps (value set leg_cramp), and neither a DVT card nor the venous card fires.",
             "Shown too, with a line naming it, when a venous duplex on record stops the venous card.",
             "The advice is tailored to the contributors found (points below)."],
            thresholds=(Setting("contributors.age_years", "Age item from", self.spec.contributors.age_years,
                                "integer", "years"),),
            **self._contributor_parts(),
        )

    def risk(self) -> CardView:
        contributors = self.spec.contributors
        return self.card(
            card_ids.ELEVATED_CRAMP_RISK, "patient-view", "C",
            ["No documented leg cramps, and",
             f"a contributor score of at least {_num(contributors.threshold)} points."],
            thresholds=(Setting("contributors.threshold", "Contributor score needed", contributors.threshold,
                                "number", "points"),
                        Setting("contributors.age_years", "Age item from", contributors.age_years, "integer", "years")),
            **self._contributor_parts(),
        )

    def order_card(self, card_id: str) -> CardView:
        rules = self.spec.order_rules
        classes = rules.cards.get(card_id, [])
        drug_classes = sorted({drug for order_class in classes for drug in rules.order_classes.get(order_class, [])})
        statuses = ", ".join(rules.statuses)
        if card_id == card_ids.QUININE_FOR_CRAMPS:
            criteria = [f"A draft order ({statuses}) in the order class quinine, for anyone."]
        else:
            criteria = [f"A draft order ({statuses}) in the order class {', '.join(classes)} (drug-table classes "
                        f"{', '.join(drug_classes)}), for a patient with documented leg cramps (value set leg_cramp)."]
        lists = [Setting(f"order_rules.cards.{card_id}", "Order classes judged", classes, "list")]
        lists += [Setting(f"order_rules.order_classes.{order_class}", f"Drug-table classes of {order_class}",
                          rules.order_classes[order_class], "list")
                  for order_class in classes if order_class in rules.order_classes]
        lists.append(Setting("order_rules.statuses", "Order statuses judged", rules.statuses, "list"))
        value_sets = self.value_sets(*CARD_VALUE_SETS[card_id])
        return self.card(card_id, "order-select, order-sign", "Order", criteria, lists=tuple(lists),
                         value_sets=value_sets)

    def cards(self) -> tuple[CardView, ...]:
        return (self.untreated_dvt(), self.possible_dvt(), self.venous(), self.conservative(), self.risk(),
                *(self.order_card(card_id) for card_id in card_ids.ORDER_CARD_IDS))

    def all_value_sets(self) -> tuple[ValueSetView, ...]:
        return tuple(self._value_sets.values())


def _observations(spec: RuleSetSpec) -> tuple[Setting, ...]:
    settings: list[Setting] = []
    for kind, observation in spec.observations:
        base = f"observations.{kind}"
        label = kind.replace("_", " ")
        settings.append(Setting(f"{base}.codes", f"{label.capitalize()}: codes", observation.codes, "list"))
        settings.append(Setting(f"{base}.window_days", f"{label.capitalize()}: a result counts for",
                                observation.window_days, "integer", "days"))
        settings += [Setting(f"{base}.low_below.{unit}", f"{label.capitalize()}: low below", cutoff, "number", unit)
                     for unit, cutoff in observation.low_below.items()]
    return tuple(settings)


def build_view(ruleset: RuleSet, content: CardContent | None = None) -> RuleSetView:
    """The display model of ``ruleset`` (with the shipped card wording unless ``content`` is given)."""
    content = content if content is not None else load_card_content()
    builder = _Builder(ruleset, content)
    spec = ruleset.spec
    windows = tuple(Setting(f"windows.{key}", key.replace("_", " ").capitalize(), value, "integer", "days")
                    for key, value in spec.windows)
    general = (Setting("version", "Version", spec.version, "text",
                       help="Every card and the record of cards shown carry it; change it with every edit"),
               Setting("title", "Title", spec.title, "text"))
    return RuleSetView(
        version=spec.version, title=spec.title, source=ruleset.source, cards=builder.cards(),
        value_sets=builder.all_value_sets(), windows=windows, observations=_observations(spec),
        code_systems=tuple(spec.code_systems.items()), general=general,
    )
