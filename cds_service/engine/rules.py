"""Rule evaluation for patient-view: RULES.md evaluations A (A.1 untreated DVT; A.2/A.3 possible DVT),
B (venous duplex workup) and C (conservative care / elevated risk), as pure functions of ``PatientFacts``
and the ``RuleSet``.

No Flask, no HTTP, no database. ``evaluate(facts, ruleset)`` returns every evaluation's outcome and
the cards to show after precedence (A hides B and C; B hides C; A.1 wins over A.2/A.3).

Each outcome also carries what the card needs to say about data it lacked (RULES.md, Every card):
``not_checked`` (only the prefetch keys its rule reads) and ``missing`` (absent data that could have
raised its score or changed which card fires).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypedDict

from cds_service.engine.facts import (ConditionRecord, Fact, MedicationRecord, PatientFacts, Provenance,
                                      is_recent_acute_dvt)
from cds_service.ruleset.card_ids import (CONSERVATIVE_CARE, ELEVATED_CRAMP_RISK, POSSIBLE_DVT, UNTREATED_DVT,
                                          VENOUS_DUPLEX_WORKUP)
# The item ids scored here are defined once, in ruleset/loader.py (the validator rejects any other id in ``points``).
from cds_service.ruleset.loader import (CONTRIBUTOR_CONDITION_ITEMS, CONTRIBUTOR_DRUG_ITEMS, VENOUS_CONDITION_ITEMS,
                                        RuleSet)

LAB_TESTS = ("potassium", "magnesium")
MEDICATION_KEYS = ("medicationRequests", "medicationStatements")
DUPLEX_KEYS = ("procedures", "serviceRequests")
# The prefetch keys each card's rule reads: "what could not be checked" names only these (RULES.md).
KEYS_READ: dict[str, tuple[str, ...]] = {
    UNTREATED_DVT: ("conditions", *MEDICATION_KEYS),
    POSSIBLE_DVT: ("conditions", "procedures"),
    VENOUS_DUPLEX_WORKUP: ("patient", "conditions", "observations", *DUPLEX_KEYS),
    CONSERVATIVE_CARE: ("patient", "conditions", *MEDICATION_KEYS, "observations"),
    ELEVATED_CRAMP_RISK: ("patient", "conditions", *MEDICATION_KEYS, "observations"),
}


# Made anew for every call and never changed after: plain dataclasses hashed by value, not frozen ones (a
# frozen dataclass costs five times as much to make: engine/facts.py, Provenance).
@dataclass(unsafe_hash=True)
class MissingData:
    """Data the chart lacks that could have raised the card's score or changed which card fires.

    ``reason`` (what the card says; cards/common.yaml ``missing``): ``bmi_absent`` / ``bmi_not_checked``,
    ``birth_date_absent``, ``lab_absent`` (``test``) / ``lab_not_checked``, ``medications_not_checked``,
    ``surgery_not_checked``, ``duplex_not_checked``, ``venous_would_fire`` (with the missing data above it,
    B's index would reach ``score`` of ``threshold``). ``card_id``: the card it could raise or bring (its own,
    or one that takes precedence).
    """

    reason: str
    card_id: str
    item: str | None = None  # the item it would score
    points: float | None = None  # what it would add (for several items: the most they could add together)
    keys: tuple[str, ...] = ()  # the prefetch keys that could not be checked
    test: str | None = None  # lab_absent: potassium | magnesium
    window_days: int | None = None  # the window the data was looked for in
    score: float | None = None  # venous_would_fire
    threshold: float | None = None


@dataclass(unsafe_hash=True)
class ScoredItem:
    item: str
    points: float
    sources: tuple[Provenance, ...]
    note: str | None = None


@dataclass(unsafe_hash=True)
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
    not_checked: tuple[str, ...] = ()  # prefetch keys this rule reads that could not be checked
    missing: tuple[MissingData, ...] = ()
    # A.1 (untreated-dvt): every medication record read (none is an active anticoagulant), and the medication
    # keys that could not be checked, or were not read in full ("anticoagulant not checked")
    medications_read: tuple[Provenance, ...] = ()
    anticoagulant_not_checked: tuple[str, ...] = ()
    # B: a venous duplex on record stopped it (B's criteria were met); C: the same records, for its line
    duplex_on_record: tuple[Provenance, ...] = ()
    duplex_not_checked: tuple[str, ...] = ()  # B fired, no duplex found, and these keys could not be checked


@dataclass(unsafe_hash=True)
class Evaluation:
    red_flag: Outcome  # A: untreated-dvt when A.1 fires, else possible-dvt
    venous: Outcome
    contributors: Outcome
    shown: tuple[Outcome, ...] = field(default=())

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        return (self.red_flag, self.venous, self.contributors)


# ---------------------------------------------------------------- A: untreated DVT (A.1), possible DVT (A.2, A.3)

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


def _unchecked_keys(facts: PatientFacts, card_id: str) -> tuple[str, ...]:
    """The keys the card's rule reads that could not be checked (RULES.md: only those are named)."""
    if not facts.not_checked:
        return ()  # most calls
    return tuple(key for key in KEYS_READ.get(card_id, ()) if key in facts.not_checked)


def evaluate_untreated_dvt(facts: PatientFacts, ruleset: RuleSet) -> Outcome:
    """A.1: an active acute DVT dated within the recent window, and no active anticoagulant."""
    acute = facts.facts.get("recent_acute_dvt")
    anticoagulated = "anticoagulant" in facts.drug_classes()
    fired = acute is not None and not anticoagulated
    recent = ruleset.spec.windows.recent_days
    sides = {r.side for r in facts.conditions if is_recent_acute_dvt(r, recent)}
    unread = tuple(key for key in MEDICATION_KEYS if key in facts.not_checked or key in facts.incomplete)
    return Outcome(
        card_id=UNTREATED_DVT,
        fired=fired,
        pathways=("acute_dvt",) if fired else (),
        findings=(ScoredItem("recent_acute_dvt", 0, acute.sources),) if acute is not None else (),
        side=_one_side(sides) if acute is not None else None,
        not_checked=_unchecked_keys(facts, UNTREATED_DVT),
        medications_read=tuple(m.provenance for m in facts.medications),
        anticoagulant_not_checked=unread if fired else (),
    )


def evaluate_possible_dvt(facts: PatientFacts, ruleset: RuleSet) -> Outcome:
    """A.2: two different recent signs; A.3: one recent sign and a Wells item."""
    spec = ruleset.spec.red_flag
    pathways: list[str] = []
    findings: list[ScoredItem] = []
    acute = facts.facts.get("recent_acute_dvt")
    if acute is not None and "anticoagulant" in facts.drug_classes():
        findings.append(ScoredItem("recent_acute_dvt", 0, acute.sources, "on an anticoagulant"))
    signs = _sign_records(facts, ruleset)
    for name, records in signs.items():
        findings.append(ScoredItem(name, 0, tuple(r.source_for(_sign_concept(name, r)) for r in records)))
    wells = [facts.facts[item] for item in spec.wells_items if item in facts.facts]
    findings.extend(ScoredItem(f.name, 0, f.sources, f.note) for f in wells)
    if len(signs) >= spec.signs_needed_alone:
        pathways.append("two_signs")
    elif signs and wells:
        pathways.append("sign_plus_wells")
    sides = {r.side for records in signs.values() for r in records} if pathways else set()
    return Outcome(
        card_id=POSSIBLE_DVT,
        fired=bool(pathways),
        pathways=tuple(pathways),
        findings=tuple(findings),
        side=_one_side(sides),
        not_checked=_unchecked_keys(facts, POSSIBLE_DVT),
    )


def evaluate_red_flag(facts: PatientFacts, ruleset: RuleSet) -> Outcome:
    """A: one card at most; A.1 (untreated-dvt) wins over A.2/A.3 (possible-dvt)."""
    untreated = evaluate_untreated_dvt(facts, ruleset)
    if untreated.fired and ruleset.spec.cards[UNTREATED_DVT].enabled:
        return untreated
    return evaluate_possible_dvt(facts, ruleset)


def _surgery_unknown(facts: PatientFacts, ruleset: RuleSet) -> MissingData | None:
    """One recent sign, no Wells item, and Procedures not checked: a recent surgery would make A.3 fire."""
    spec = ruleset.spec.red_flag
    if "recent_surgery" not in spec.wells_items or "procedures" not in facts.not_checked:
        return None
    signs = _sign_records(facts, ruleset)
    if not signs or len(signs) >= spec.signs_needed_alone or any(i in facts.facts for i in spec.wells_items):
        return None
    return MissingData("surgery_not_checked", POSSIBLE_DVT, item="recent_surgery", keys=("procedures",),
                       window_days=ruleset.spec.windows.recent_surgery_days)


def _sign_concept(sign: str, record: ConditionRecord) -> str:
    if sign == "one_sided_leg_swelling":
        return "leg_edema_one_side_by_code" if "leg_edema_one_side_by_code" in record.concepts else "leg_edema"
    return sign


# ---------------------------------------------------------------- B: venous duplex workup

_VENOUS_CONCEPTS = frozenset({*VENOUS_CONDITION_ITEMS, "leg_ulcer_needing_venous_record"})


def _venous_condition_items(facts: PatientFacts, points: dict[str, float]) -> dict[str, list[Provenance]]:
    """Each active record scores only its highest venous item (RULES.md)."""
    has_venous_record = bool(
        facts.active_conditions("varicose_veins") or facts.active_conditions("venous_insufficiency")
    )
    found: dict[str, list[Provenance]] = {}
    for record in facts.conditions:
        if not (record.active and record.valid) or record.concepts.isdisjoint(_VENOUS_CONCEPTS):
            continue  # most records show no venous concept
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


def _venous_items(facts: PatientFacts, ruleset: RuleSet) -> list[ScoredItem]:
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
    return [i for i in items if i.item in points]


def evaluate_venous(facts: PatientFacts, ruleset: RuleSet) -> Outcome:
    """B: documented cramps and a venous index at the threshold with an objective sign, unless a venous
    duplex is on record (then C shows, naming it)."""
    spec = ruleset.spec.venous_index
    items = _venous_items(facts, ruleset)
    score = sum(i.points for i in items)
    has_sign = any(i.item in spec.objective_signs for i in items)
    cramps = "documented_leg_cramps" in facts.facts
    notes = [] if cramps else ["no documented leg cramps"]
    met = cramps and has_sign and score >= spec.threshold
    duplex = facts.facts.get("venous_duplex_on_record")
    missing = _venous_missing(facts, ruleset, {i.item for i in items})
    if not met and cramps and has_sign:
        could_add = sum(m.points or 0 for m in missing)
        if missing and score + could_add >= spec.threshold:
            missing.append(MissingData("venous_would_fire", VENOUS_DUPLEX_WORKUP, points=could_add,
                                       score=score + could_add, threshold=spec.threshold))
    unread = tuple(key for key in DUPLEX_KEYS if key in facts.not_checked or key in facts.incomplete)
    if met and duplex is not None:
        notes.append("venous duplex on record")  # B does not apply: C shows, naming the duplex
    elif met and unread:
        missing.append(MissingData("duplex_not_checked", VENOUS_DUPLEX_WORKUP, keys=unread,
                                   window_days=ruleset.spec.procedures.duplex_window_days))
    return Outcome(
        card_id=VENOUS_DUPLEX_WORKUP,
        fired=met and duplex is None,
        score=score,
        threshold=spec.threshold,
        items=tuple(items),
        notes=tuple(notes),
        not_checked=_unchecked_keys(facts, VENOUS_DUPLEX_WORKUP),
        missing=tuple(missing),
        duplex_on_record=duplex.sources if met and duplex is not None else (),
        duplex_not_checked=unread if met and duplex is None else (),
    )


def _bmi_missing(facts: PatientFacts, ruleset: RuleSet, points: float, card_id: str) -> MissingData | None:
    if "observations" in facts.not_checked:
        return MissingData("bmi_not_checked", card_id, item="bmi_30_or_over", points=points, keys=("observations",))
    if "bmi" not in facts.observations:
        return MissingData("bmi_absent", card_id, item="bmi_30_or_over", points=points,
                           window_days=ruleset.spec.observations.bmi.window_days)
    return None  # a BMI under 30 is on record: nothing is missing


def _venous_missing(facts: PatientFacts, ruleset: RuleSet, scored: set[str]) -> list[MissingData]:
    """B's items whose data is absent: BMI (none usable in 12 months, or observations not checked) and age
    (no birth date). Pregnancy status is not named: the rules do not read the patient's sex."""
    points = ruleset.spec.venous_index.points
    missing: list[MissingData] = []
    if "bmi_30_or_over" in points and "bmi_30_or_over" not in scored:
        bmi = _bmi_missing(facts, ruleset, points["bmi_30_or_over"], VENOUS_DUPLEX_WORKUP)
        missing += [bmi] if bmi else []
    if facts.age_years is None and "age_50_or_over" in points:
        missing.append(MissingData("birth_date_absent", VENOUS_DUPLEX_WORKUP, item="age_50_or_over",
                                   points=points["age_50_or_over"]))
    return missing


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
            # each ingredient under its own class: Dyazide's triamterene is not a thiazide
            note = ", ".join(sorted({ing for m in meds for ing in m.ingredients_in(drug_class)})) or None
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
    card_id = CONSERVATIVE_CARE if cramps else ELEVATED_CRAMP_RISK
    missing_labs, labs_not_checked = _missing_labs(facts, ruleset, classes)
    return Outcome(
        card_id=card_id,
        fired=cramps or score >= spec.threshold,
        score=score,
        threshold=None if cramps else spec.threshold,
        items=tuple(items),
        missing_labs=missing_labs,
        labs_not_checked=labs_not_checked,
        not_checked=_unchecked_keys(facts, card_id),
        missing=tuple(_contributor_missing(facts, ruleset, {i.item for i in items}, card_id)),
    )


def _contributor_missing(facts: PatientFacts, ruleset: RuleSet, scored: set[str], card_id: str) -> list[MissingData]:
    """C's items whose data is absent: a low potassium / magnesium (no usable result in the window, or
    observations not checked), age 65 or over (no birth date), the drug items (a medication key not checked)."""
    spec = ruleset.spec.contributors
    points = spec.points
    missing: list[MissingData] = []
    labs = [(test, f"low_{test}") for test in LAB_TESTS if f"low_{test}" in points and f"low_{test}" not in scored]
    if labs and "observations" in facts.not_checked:
        missing.append(MissingData("lab_not_checked", card_id, points=max(points[item] for _, item in labs),
                                   keys=("observations",)))
    elif labs:
        for test, item in labs:
            if test not in facts.observations:
                missing.append(MissingData("lab_absent", card_id, item=item, points=points[item], test=test,
                                           window_days=getattr(ruleset.spec.observations, test).window_days))
    if facts.age_years is None and "age_65_or_over" in points:
        missing.append(MissingData("birth_date_absent", card_id, item="age_65_or_over", points=points["age_65_or_over"]))
    unread = tuple(key for key in MEDICATION_KEYS if key in facts.not_checked)
    drug_points = sum(points.get(item, 0) for item in set(spec.drug_classes.values())
                      if item in CONTRIBUTOR_DRUG_ITEMS and item not in scored)
    if unread and drug_points:
        missing.append(MissingData("medications_not_checked", card_id, points=drug_points, keys=unread))
    return missing


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
    venous, contributors = _with_what_could_change_the_card(facts, ruleset, venous, contributors)
    return Evaluation(red_flag, venous, contributors, shown=choose_cards((red_flag, venous, contributors), ruleset))


class _Additions(TypedDict, total=False):
    """The Outcome fields ``_with_what_could_change_the_card`` may add to."""

    missing: tuple[MissingData, ...]
    duplex_on_record: tuple[Provenance, ...]


def _with_what_could_change_the_card(facts: PatientFacts, ruleset: RuleSet, venous: Outcome,
                                     contributors: Outcome) -> tuple[Outcome, Outcome]:
    """B and C also name the missing data that could have brought a card above them: an unchecked recent
    surgery (A.3), and for C the data that would take B's index to its threshold. C's conservative-care card
    names the venous duplex that stopped B."""
    surgery = _surgery_unknown(facts, ruleset)
    above_b = (surgery,) if surgery else ()
    if above_b:
        venous = replace(venous, missing=(*venous.missing, *above_b))
    from_b = venous.missing if any(m.reason == "venous_would_fire" for m in venous.missing) else ()
    extra: _Additions = {}
    if above_b or from_b:
        extra["missing"] = (*contributors.missing, *above_b, *(m for m in from_b if m not in above_b))
    if venous.duplex_on_record and contributors.card_id == CONSERVATIVE_CARE:
        extra["duplex_on_record"] = venous.duplex_on_record
    # An outcome is rebuilt only when something is added to it (most calls add nothing).
    return venous, replace(contributors, **extra) if extra else contributors


def choose_cards(outcomes: tuple[Outcome, ...], ruleset: RuleSet) -> tuple[Outcome, ...]:
    """The first enabled outcome that fired, in the order A, B, C: it hides those below it."""
    for outcome in outcomes:
        if outcome.fired and ruleset.spec.cards[outcome.card_id].enabled:
            return (outcome,)
    return ()
