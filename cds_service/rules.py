"""Rule evaluation for patient-view: RULES.md evaluations A (possible DVT), B (venous duplex workup) and
C (conservative care / elevated risk), as pure functions of ``PatientFacts`` and the ``RuleSet``.

No Flask, no HTTP, no database. ``evaluate(facts, ruleset)`` returns every evaluation's outcome and
the cards to show after precedence (A hides B and C; B hides C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .facts import ConditionRecord, Fact, MedicationRecord, PatientFacts, Provenance
# The item ids scored here are defined once, in ruleset.py (the validator rejects any other id in ``points``).
from .ruleset import CONTRIBUTOR_CONDITION_ITEMS, VENOUS_CONDITION_ITEMS, RuleSet

LAB_TESTS = ("potassium", "magnesium")


@dataclass(frozen=True)
class ScoredItem:
    item: str
    points: float
    sources: tuple[Provenance, ...]
    note: str | None = None


@dataclass(frozen=True)
class Outcome:
    card_id: str
    fired: bool
    score: float | None = None
    threshold: float | None = None
    items: tuple[ScoredItem, ...] = ()
    pathways: tuple[str, ...] = ()  # A: acute_dvt | two_signs | sign_plus_wells
    findings: tuple[ScoredItem, ...] = ()  # A: the signs and Wells items seen (points 0)
    side: str | None = None  # A: right | left | None (bilateral)
    missing_labs: tuple[str, ...] = ()  # C: potassium / magnesium without a usable result
    labs_not_checked: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    red_flag: Outcome
    venous: Outcome
    contributors: Outcome
    shown: tuple[Outcome, ...] = field(default=())

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        return (self.red_flag, self.venous, self.contributors)


# ---------------------------------------------------------------- A: possible DVT

def _recent(records: list[ConditionRecord], days: int) -> list[ConditionRecord]:
    return [r for r in records if r.age_days is not None and r.age_days <= days]


def _sign_records(facts: PatientFacts, ruleset: RuleSet) -> dict[str, list[ConditionRecord]]:
    recent = ruleset.spec.windows.recent_days
    swelling = [
        r for r in facts.active_conditions("leg_edema_one_side_by_code")
    ] + [
        r for r in facts.active_conditions("leg_edema_snomed_sided_by_body_site")
        if r.side in ("right", "left") and "leg_edema_one_side_by_code" not in r.concepts
    ]
    signs = {
        "one_sided_leg_swelling": _recent(swelling, recent),
        "leg_redness_cellulitis": _recent(facts.active_conditions("leg_redness_cellulitis"), recent),
        "leg_pain": _recent(facts.active_conditions("leg_pain"), recent),
    }
    return {name: records for name, records in signs.items() if records and name in ruleset.spec.red_flag.signs}


def _one_side(sides: set[str | None]) -> str | None:
    named = {s for s in sides if s}
    return named.pop() if len(named) == 1 and named <= {"right", "left"} else None


def evaluate_red_flag(facts: PatientFacts, ruleset: RuleSet) -> Outcome:
    spec = ruleset.spec.red_flag
    pathways: list[str] = []
    findings: list[ScoredItem] = []
    sides: set[str | None] = set()
    acute = facts.facts.get("recent_acute_dvt")
    anticoagulated = "anticoagulant" in facts.drug_classes()
    if acute is not None:
        findings.append(ScoredItem("recent_acute_dvt", 0, acute.sources, "on an anticoagulant" if anticoagulated else None))
        if not anticoagulated:
            pathways.append("acute_dvt")
            sides |= {r.side for r in facts.active_conditions("dvt_acute") if r.age_days is not None
                      and r.age_days <= ruleset.spec.windows.recent_days}
    signs = _sign_records(facts, ruleset)
    for name, records in signs.items():
        findings.append(ScoredItem(name, 0, tuple(r.source_for(_sign_concept(name, r)) for r in records)))
    wells = [facts.facts[item] for item in spec.wells_items if item in facts.facts]
    findings.extend(ScoredItem(f.name, 0, f.sources, f.note) for f in wells)
    if len(signs) >= spec.signs_needed_alone:
        pathways.append("two_signs")
    elif signs and wells:
        pathways.append("sign_plus_wells")
    if "two_signs" in pathways or "sign_plus_wells" in pathways:
        sides |= {r.side for records in signs.values() for r in records}
    return Outcome(
        card_id="possible-dvt",
        fired=bool(pathways),
        pathways=tuple(pathways),
        findings=tuple(findings),
        side=_one_side(sides),
    )


def _sign_concept(sign: str, record: ConditionRecord) -> str:
    if sign == "one_sided_leg_swelling":
        return "leg_edema_one_side_by_code" if "leg_edema_one_side_by_code" in record.concepts else "leg_edema"
    return sign


# ---------------------------------------------------------------- B: venous duplex workup

def _venous_condition_items(facts: PatientFacts, points: dict[str, float]) -> dict[str, list[Provenance]]:
    """Each active record scores only its highest venous item (RULES.md)."""
    has_venous_record = bool(
        facts.active_conditions("varicose_veins") or facts.active_conditions("venous_insufficiency")
    )
    found: dict[str, list[Provenance]] = {}
    for record in facts.conditions:
        if not (record.active and record.valid):
            continue
        matched = [item for item in VENOUS_CONDITION_ITEMS if item in record.concepts]
        concept_of = {item: item for item in matched}
        if has_venous_record and "leg_ulcer_needing_venous_record" in record.concepts and "venous_skin_changes" not in matched:
            matched.append("venous_skin_changes")
            concept_of["venous_skin_changes"] = "leg_ulcer_needing_venous_record"
        if not matched:
            continue
        best = max(matched, key=lambda item: points.get(item, 0))
        found.setdefault(best, []).append(record.source_for(concept_of[best]))
    return found


def evaluate_venous(facts: PatientFacts, ruleset: RuleSet) -> Outcome:
    spec = ruleset.spec.venous_index
    points = spec.points
    items: list[ScoredItem] = []
    for item, sources in _venous_condition_items(facts, points).items():
        items.append(ScoredItem(item, points[item], tuple(sources)))
    if "previous_dvt" in facts.facts:
        items.append(ScoredItem("previous_dvt", points["previous_dvt"], facts.facts["previous_dvt"].sources))
    chronic = [
        r for r in facts.active_conditions("leg_edema")
        if r.age_days is not None and r.age_days > ruleset.spec.windows.chronic_edema_min_days
    ]
    if chronic:
        heart_failure = "heart_failure" in facts.facts
        weight = spec.chronic_leg_edema_with_heart_failure if heart_failure else points["chronic_leg_edema"]
        note = "heart failure explains part of the oedema" if heart_failure else None
        items.append(ScoredItem("chronic_leg_edema", weight, tuple(r.source_for("leg_edema") for r in chronic), note))
    _add_fact_item(items, facts.facts.get("pregnancy"), "pregnancy", points)
    if facts.age_years is not None and facts.age_years >= spec.age_years:
        items.append(ScoredItem("age_50_or_over", points["age_50_or_over"], (facts.patient,), f"age {facts.age_years}"))
    bmi = facts.observations.get("bmi")
    if bmi is not None and bmi.value is not None and bmi.value >= spec.bmi_at_least:
        items.append(ScoredItem("bmi_30_or_over", points["bmi_30_or_over"], (bmi.provenance,), f"BMI {bmi.value}"))
    items = [i for i in items if i.item in points]
    score = sum(i.points for i in items)
    has_sign = any(i.item in spec.objective_signs for i in items)
    cramps = "documented_leg_cramps" in facts.facts
    notes = () if cramps else ("no documented leg cramps",)
    return Outcome(
        card_id="venous-duplex-workup",
        fired=cramps and has_sign and score >= spec.threshold,
        score=score,
        threshold=spec.threshold,
        items=tuple(items),
        notes=notes,
    )


def _add_fact_item(items: list[ScoredItem], fact: Fact | None, item: str, points: dict[str, float]) -> None:
    if fact is not None and item in points:
        items.append(ScoredItem(item, points[item], fact.sources, fact.note))


# ---------------------------------------------------------------- C: conservative care / elevated risk

CONDITION_CONTRIBUTORS = CONTRIBUTOR_CONDITION_ITEMS


def _drug_items(classes: dict[str, list[MedicationRecord]], ruleset: RuleSet) -> list[ScoredItem]:
    spec = ruleset.spec.contributors
    items = []
    for drug_class, item in spec.drug_classes.items():
        meds = classes.get(drug_class)
        if meds and item in spec.points:
            note = ", ".join(sorted({ing for m in meds for ing in m.ingredients})) or None
            items.append(ScoredItem(item, spec.points[item], tuple(m.provenance for m in meds), note))
    return items


def evaluate_contributors(facts: PatientFacts, ruleset: RuleSet) -> Outcome:
    spec = ruleset.spec.contributors
    classes = facts.drug_classes()
    items = _drug_items(classes, ruleset)
    for name in CONDITION_CONTRIBUTORS:
        _add_fact_item(items, facts.facts.get(name), name, spec.points)
    if facts.age_years is not None and facts.age_years >= spec.age_years and "age_65_or_over" in spec.points:
        items.append(ScoredItem("age_65_or_over", spec.points["age_65_or_over"], (facts.patient,), f"age {facts.age_years}"))
    score = sum(i.points for i in items)
    cramps = "documented_leg_cramps" in facts.facts
    card_id = "conservative-care" if cramps else "elevated-cramp-risk"
    missing, not_checked = _missing_labs(facts, ruleset, classes)
    return Outcome(
        card_id=card_id,
        fired=cramps or score >= spec.threshold,
        score=score,
        threshold=None if cramps else spec.threshold,
        items=tuple(items),
        missing_labs=missing,
        labs_not_checked=not_checked,
    )


def _missing_labs(
    facts: PatientFacts, ruleset: RuleSet, classes: dict[str, list[MedicationRecord]]
) -> tuple[tuple[str, ...], bool]:
    check = ruleset.spec.contributors.lab_check
    needs = any(c in classes for c in check.drug_classes) or any(
        facts.has(c) or facts.active_conditions(c) for c in check.conditions
    )
    if not needs:
        return (), False
    if "observations" in facts.not_checked:
        return (), True  # can't tell whether results exist: say so rather than order duplicates
    return tuple(test for test in LAB_TESTS if test not in facts.observations), False


# ---------------------------------------------------------------- precedence

def evaluate(facts: PatientFacts, ruleset: RuleSet) -> Evaluation:
    red_flag = evaluate_red_flag(facts, ruleset)
    venous = evaluate_venous(facts, ruleset)
    contributors = evaluate_contributors(facts, ruleset)
    return Evaluation(red_flag, venous, contributors, shown=choose_cards((red_flag, venous, contributors), ruleset))


def choose_cards(outcomes: tuple[Outcome, ...], ruleset: RuleSet) -> tuple[Outcome, ...]:
    """The first enabled outcome that fired, in the order A, B, C: it hides those below it."""
    for outcome in outcomes:
        if outcome.fired and ruleset.spec.cards[outcome.card_id].enabled:
            return (outcome,)
    return ()
