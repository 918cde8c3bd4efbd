"""Patient facts: the chart normalised into typed records and concept-level facts, each with provenance.

``extract_facts(chart, ruleset, drugs, now)`` is the only place that reads the chart's records
(``engine/projection.py``, or ``fhir.resources`` models from the order hooks' drafts: the same attribute
names); rule evaluation sees only the dataclasses defined here. The readings of RULES.md this module
implements (active records, record dates, latest usable observation, drug mapping, the Condition text
fallback, previous / recent acute DVT, recent surgery and a venous duplex on record from Procedures and
ServiceRequests) are spelled out in ``docs/clinical-interpretation.md``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Mapping
from weakref import WeakKeyDictionary

from cds_service.engine import gc_pause
from cds_service.engine.chart import Chart, SkippedRecord
from cds_service.engine.drugs import DrugTable
from cds_service.ruleset.loader import RuleSet, normalize_code

Coding = tuple[str | None, str | None, str | None]  # system, code, display

ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
INVALID_VERIFICATION = {"refuted", "entered-in-error"}
USABLE_OBSERVATION = {"final", "amended", "corrected"}
LOW_INTERPRETATIONS = {"L", "LL"}
SYSTEM_LABELS = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.ama-assn.org/go/cpt": "CPT",
}
_SIDE_WORDS = re.compile(r"\b(right|left|bilateral|both)\b", re.IGNORECASE)


# The records below are made anew for every call (tens per call) and never changed after: they are plain
# dataclasses hashed by value (``unsafe_hash``), not frozen ones, because a frozen dataclass's __init__ sets
# each field through object.__setattr__, five times the cost of a plain one: 14 % of a patient-view call.
# What is shared across calls (projection concepts, a rule set's readings, drug matches) stays frozen, and
# so do the call's finished facts (PatientRecords, PatientFacts: one each per call, handed to callers).
@dataclass(unsafe_hash=True)
class Provenance:
    """Where a fact came from: the record's type, id, the code that matched, and its date."""

    resource_type: str
    resource_id: str
    system: str | None = None
    code: str | None = None
    display: str | None = None
    date: date | None = None
    # Recognised by its name (RULES.md text fallback), not by a code: ``display`` is the text that matched.
    text_matched: bool = False
    status: str | None = None  # Procedure / ServiceRequest status (a duplex done, or ordered)

    def describe(self) -> str:
        when = self.date.isoformat() if self.date else "undated"
        label = self.display or "(no display)"
        if self.code:
            label += f" ({SYSTEM_LABELS.get(self.system or '', self.system or 'code')} {self.code})"
        if self.text_matched:
            label += " (recognised by its name)"
        if self.status:
            label += f" [{self.status}]"
        return f"{self.resource_type}/{self.resource_id}, {when}: {label}"


@dataclass(unsafe_hash=True)
class Fact:
    """A concept that holds for the patient, with the records that show it."""

    name: str
    sources: tuple[Provenance, ...]
    note: str | None = None  # e.g. "K 3.1 mmol/L", "age 67"


@dataclass(unsafe_hash=True)
class ConditionRecord:
    provenance: Provenance
    concepts: frozenset[str]
    matched: dict[str, Coding]  # concept -> the coding that matched it
    active: bool
    valid: bool  # not refuted / entered-in-error
    date: date | None
    age_days: int | None
    side: str | None
    method: str = "code"  # "text": no coding is in any value set, the concepts come from its text

    def source_for(self, concept: str) -> Provenance:
        system, code, display = self.matched.get(concept, (None, None, None))
        return Provenance(
            self.provenance.resource_type,
            self.provenance.resource_id,
            system or self.provenance.system,
            code or self.provenance.code,
            display or self.provenance.display,
            self.date,
            text_matched=self.method == "text",
        )


@dataclass(unsafe_hash=True)
class MedicationRecord:
    provenance: Provenance
    ingredients: frozenset[str]
    classes: frozenset[str]
    method: str | None  # "code", "text", or None when not mapped
    counted: bool  # status / intent / period make it a current medication
    # each ingredient with its own classes (drugs.DrugMatch.by_ingredient): Dyazide is
    # (("hydrochlorothiazide", {"thiazide"}), ("triamterene", {"potassium-sparing"}))
    by_ingredient: tuple[tuple[str, frozenset[str]], ...] = ()

    def ingredients_in(self, drug_class: str) -> tuple[str, ...]:
        """The ingredients that put this medication in ``drug_class``, sorted."""
        return tuple(name for name, classes in self.by_ingredient if drug_class in classes)


@dataclass(unsafe_hash=True)
class ObservationValue:
    kind: str
    provenance: Provenance
    value: Decimal | None
    unit: str | None
    answer: str | None  # coded answers: "pregnant", "not-pregnant"; smoking "current", "former", "never"
    is_low: bool | None


@dataclass(frozen=True)
class PatientRecords:
    """The chart's records, typed and normalised: what the concept facts are read from."""

    patient: Provenance
    age_years: int | None
    conditions: tuple[ConditionRecord, ...]
    medications: tuple[MedicationRecord, ...]
    observations: Mapping[str, ObservationValue]  # latest usable value per kind, inside its window

    def active_conditions(self, concept: str) -> list[ConditionRecord]:
        return list(self._active_by_concept.get(concept, ()))

    @cached_property
    def _active_by_concept(self) -> dict[str, list[ConditionRecord]]:
        """Concept -> the active, valid records that show it, in the chart's order: the rules ask ~30 times."""
        index: dict[str, list[ConditionRecord]] = {}
        for record in self.conditions:
            if record.active and record.valid:
                for concept in record.concepts:
                    index.setdefault(concept, []).append(record)
        return index


@dataclass(frozen=True)
class PatientFacts(PatientRecords):
    """Everything the rules read about one patient, made once by ``extract_facts`` and never changed after."""

    evaluated_at: datetime
    today: date
    facts: Mapping[str, Fact]
    # A list, as the chart gives it; nothing adds to it (an order hook's invalid drafts are its own result's).
    skipped: list[SkippedRecord] = field(default_factory=list)
    passed_over: tuple[str, ...] = ()  # observations with an unknown unit
    not_checked: tuple[str, ...] = ()
    incomplete: tuple[str, ...] = ()
    medication_mapping: Counter = field(default_factory=Counter)
    # concepts and drug classes recorded at any time, whatever the status or window (for history checks)
    ever_recorded: frozenset[str] = frozenset()

    def has(self, name: str) -> bool:
        return name in self.facts

    def drug_classes(self) -> dict[str, list[MedicationRecord]]:
        """Drug class -> the current medication records in it (made once: not to be changed)."""
        return self._drug_classes

    @cached_property
    def _drug_classes(self) -> dict[str, list[MedicationRecord]]:
        classes: dict[str, list[MedicationRecord]] = {}
        for med in self.medications:
            if med.counted:
                for drug_class in med.classes:
                    classes.setdefault(drug_class, []).append(med)
        return classes


# ---------------------------------------------------------------- dates

def to_date(value: Any) -> date | None:
    """A FHIR date/dateTime (object or partial string) as a UTC calendar date."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        parts = value.split("T", 1)[0].split("-")
        try:
            return date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, int(parts[2]) if len(parts) > 2 else 1)
        except (ValueError, IndexError):
            return None
    return None


def _period_start(period: Any) -> Any:
    return getattr(period, "start", None) if period is not None else None


def record_date(resource: Any) -> date | None:
    """The record's date, in the order RULES.md (Time) gives for each type."""
    kind = resource.get_resource_type()
    if kind == "Condition":
        candidates = [resource.onsetDateTime, _period_start(resource.onsetPeriod), resource.recordedDate]
    elif kind == "Observation":
        candidates = [resource.effectiveDateTime, _period_start(resource.effectivePeriod), resource.issued]
    elif kind == "MedicationRequest":
        candidates = [resource.authoredOn]
    elif kind == "MedicationStatement":
        candidates = [resource.effectiveDateTime, _period_start(resource.effectivePeriod), resource.dateAsserted]
    elif kind == "Procedure":
        period = resource.performedPeriod
        candidates = [resource.performedDateTime, getattr(period, "end", None) if period is not None else None,
                      _period_start(period)]
    elif kind == "ServiceRequest":
        candidates = [resource.authoredOn]
    else:
        candidates = []
    for candidate in candidates:
        parsed = to_date(candidate)
        if parsed is not None:
            return parsed
    return None


def age_in_days(record: date | None, today: date) -> int | None:
    if record is None:
        return None
    return max((today - record).days, 0)


def age_in_years(birth: date | None, today: date) -> int | None:
    if birth is None:
        return None
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


# ---------------------------------------------------------------- codings

def codings_of(concept: Any) -> list[Coding]:
    if concept is None:
        return []
    return [(c.system, c.code, c.display) for c in (concept.coding or [])]


def _codes(concept: Any) -> set[str]:
    return {code for _, code, _ in codings_of(concept) if code}


def _first_display(concept: Any) -> tuple[str | None, str | None, str | None]:
    codings = codings_of(concept)
    if codings:
        system, code, display = codings[0]
        return system, code, display or getattr(concept, "text", None)
    return None, None, getattr(concept, "text", None) if concept is not None else None


# ---------------------------------------------------------------- conditions

def _code_concepts(concept: Any, ruleset: RuleSet) -> tuple[dict[str, Coding], str]:
    """The concepts a Condition's code shows (concept -> the coding that matched it), and how: "code", or
    "text" (RULES.md's fallback when no coding is in any value set)."""
    codings = codings_of(concept)
    # One index probe per coding instead of asking every value set (ruleset.ConceptIndex): same answers.
    matched: dict[str, Coding] = ruleset.concepts.first_matches(codings)
    if not matched and not any(ruleset.concepts.holds(system, code) for system, code, _ in codings):
        matched = _text_matches(concept, ruleset)
        return matched, "text" if matched else "code"
    return matched, "code"


@dataclass(frozen=True)
class _CodeReading:
    """What a rule set reads from a Condition's code alone (remembered per concept: ``_remembered``)."""

    matched: dict[str, Coding]
    method: str
    side_by_code: tuple[bool, str | None]  # (decided by the code, the side)
    first_display: tuple[str | None, str | None, str | None]


def _code_reading(concept: Any, ruleset: RuleSet) -> _CodeReading:
    matched, method = _code_concepts(concept, ruleset)
    return _CodeReading(matched, method, _code_side(codings_of(concept), ruleset), _first_display(concept))


class _Readings:
    """One kind of reading of a concept (what a Condition code shows, which answers a coded value is...)
    by an owner (a RuleSet or a DrugTable), remembered per owner: chart records' concepts are values
    (engine/projection.py: frozen, hashable, their hash computed once), and the same ones come chart after
    chart (text matching is most of a Condition's cost, drug matching of a medication's). A reloaded rule
    set reads afresh (its own memo, dropped with it); the last owner asked is kept at hand, so a call costs
    one dict probe. At most ``_READINGS_KEPT`` concepts each (emptied when full), none over
    ``_CONCEPT_CHARACTERS`` characters; a concept that is not a value (a fhir.resources model, as orders.py
    and tests pass) is read every time."""

    def __init__(self, read: Callable[[Any, Any], Any]) -> None:
        self._read = read  # read(owner, concept)
        self._by_owner: WeakKeyDictionary[Any, dict[Any, Any]] = WeakKeyDictionary()
        self._last: tuple[Any, dict[Any, Any]] = (None, {})  # one tuple: swapped whole, safe across threads

    def __call__(self, owner: Any, concept: Any) -> Any:
        last = self._last
        memo = last[1] if last[0] is owner else self._memo_of(owner)
        try:
            return memo[concept]
        except KeyError:
            pass
        except TypeError:  # not a value
            return self._read(owner, concept)
        known = self._read(owner, concept)
        if _characters(concept) <= _CONCEPT_CHARACTERS:  # a memo of many small concepts, never of huge texts
            if len(memo) >= _READINGS_KEPT:
                memo.clear()
            memo[concept] = known
        return known

    def _memo_of(self, owner: Any) -> dict[Any, Any]:
        memo = self._by_owner.get(owner)
        if memo is None:
            memo = self._by_owner.setdefault(owner, {})
        self._last = (owner, memo)
        return memo


_READINGS_KEPT = 20_000
_CONCEPT_CHARACTERS = 2048


def _characters(concept: Any) -> int:
    if concept is None:
        return 0
    return len(concept.text or "") + sum(len(c.system or "") + len(c.code or "") + len(c.display or "")
                                         for c in concept.coding or ())


_condition_code = _Readings(lambda ruleset, concept: _code_reading(concept, ruleset))
# A clinicalStatus / verificationStatus: its codes (a handful of concepts, in every Condition).
_status_codes = _Readings(lambda owner, concept: frozenset(_codes(concept)))
_medication_match = _Readings(lambda drugs, concept: drugs.match_medication(
    codings_of(concept), getattr(concept, "text", None) if concept else None))


def _condition_record(resource: Any, ruleset: RuleSet, today: date) -> ConditionRecord:
    reading: _CodeReading = _condition_code(ruleset, resource.code)
    matched = dict(reading.matched)  # each record its own
    clinical = _status_codes(ruleset, resource.clinicalStatus)
    verification = _status_codes(ruleset, resource.verificationStatus)
    if clinical:
        active = bool(clinical & ACTIVE_CLINICAL)
    else:
        active = resource.abatementDateTime is None and resource.abatementPeriod is None and \
            resource.abatementAge is None and resource.abatementRange is None and resource.abatementString is None
    when = record_date(resource)
    system, code, display = reading.first_display
    provenance = Provenance("Condition", str(resource.id), system, code, display, when)
    decided, side = reading.side_by_code
    return ConditionRecord(
        provenance=provenance,
        concepts=frozenset(matched),
        matched=matched,
        active=active,
        valid=not (verification & INVALID_VERIFICATION),
        date=when,
        age_days=age_in_days(when, today),
        side=side if decided else _body_site_side(resource.bodySite, ruleset),
        method=reading.method,
    )


def _text_matches(concept: Any, ruleset: RuleSet) -> dict[str, Coding]:
    """RULES.md, Text fallback for Conditions: concept -> (no system, no code, the text that matched), from
    ``code.text`` and each ``coding.display``, each text on its own. The rule set's validation keeps every
    concept that can raise a critical card out of the terms."""
    if concept is None:
        return {}
    texts = [getattr(concept, "text", None), *(display for _, _, display in codings_of(concept))]
    return {name: (None, None, text) for name, text in ruleset.condition_text.match(texts).items()}


def _code_side(codings: list[Coding], ruleset: RuleSet) -> tuple[bool, str | None]:
    """(True, side) when the codes alone settle the side (a lateral code, or one whose last character
    says it, None when that character names no side); (False, None) when the body sites must."""
    laterality = ruleset.laterality
    coded = [(system, normalize_code(system, code), display) for system, code, display in codings if code]
    for side, pairs in laterality.code_sides:
        if any((system, code) in pairs for system, code, _ in coded):
            return True, side
    for system, prefix, sides in laterality.last_character_sides:
        for c_system, code, _ in coded:
            if c_system == system and code.startswith(prefix) and len(code) > len(prefix):
                return True, sides.get(code[-1])
    return False, None


def _body_site_side(body_sites: Any, ruleset: RuleSet) -> str | None:
    laterality = ruleset.laterality
    for site in body_sites or []:
        site_codings = codings_of(site)
        for side, pairs in laterality.body_site_sides:
            if any((system, code) in pairs for system, code, _ in site_codings):
                return side
        words = " ".join(filter(None, [site.text, *(d for _, _, d in site_codings)]))
        found = {w.lower() for w in _SIDE_WORDS.findall(words)}
        if found & {"bilateral", "both"} or {"right", "left"} <= found:
            return "bilateral"
        if found:
            return found.pop()
    return None


# ---------------------------------------------------------------- medications

def _medication_concept(resource: Any, chart: Chart) -> Any:
    if resource.medicationCodeableConcept is not None:
        return resource.medicationCodeableConcept
    reference = getattr(resource.medicationReference, "reference", None)
    if not reference:
        return None
    if reference.startswith("#"):
        for contained in resource.contained or []:
            if getattr(contained, "id", None) == reference[1:]:
                return getattr(contained, "code", None)
        return None
    medication = chart.medications.get(reference) or chart.medications.get(
        "Medication/" + reference.rsplit("/", 1)[-1]
    )
    return getattr(medication, "code", None) if medication is not None else None


def medication_record(resource: Any, chart: Chart, ruleset: RuleSet, drugs: DrugTable, today: date) -> MedicationRecord:
    """One MedicationRequest or MedicationStatement as a ``MedicationRecord`` (``chart`` resolves a
    ``medicationReference``); orders.py reads the order hooks' draft orders with it."""
    concept = _medication_concept(resource, chart)
    match = _medication_match(drugs, concept)
    system, code, display = _first_display(concept)
    when = record_date(resource)
    provenance = Provenance(resource.get_resource_type(), str(resource.id), system, code, display, when)
    return MedicationRecord(
        provenance=provenance,
        ingredients=match.ingredients if match else frozenset(),
        classes=match.classes if match else frozenset(),
        method=match.method if match else None,
        counted=_is_current_medication(resource, ruleset, today),
        by_ingredient=match.by_ingredient if match else (),
    )


def _is_current_medication(resource: Any, ruleset: RuleSet, today: date) -> bool:
    spec = ruleset.spec.medications
    if resource.get_resource_type() == "MedicationRequest":
        return resource.status in spec.request_statuses and resource.intent in spec.request_intents
    if resource.status not in spec.statement_statuses:
        return False
    end = to_date(getattr(resource.effectivePeriod, "end", None)) if resource.effectivePeriod else None
    return end is None or end >= today


# ---------------------------------------------------------------- observations

def _observation_values(chart: Chart, ruleset: RuleSet, today: date) -> tuple[dict[str, ObservationValue], tuple[str, ...]]:
    """The latest usable value of each kind, and the observations passed over for an unusable value or unit."""
    passed_over: list[str] = []
    candidates: dict[str, list[tuple[date, int, Any]]] = {}
    for order, resource in enumerate(chart.observations):
        if resource.status not in USABLE_OBSERVATION:
            continue
        kind = _observation_kind(ruleset, resource.code)
        if kind is None:
            continue
        when = record_date(resource)
        window = getattr(ruleset.spec.observations, kind).window_days
        days = age_in_days(when, today)
        if days is None or days > window:
            continue
        assert when is not None  # age_in_days gives a number only for a date
        candidates.setdefault(kind, []).append((when, order, resource))
    latest: dict[str, ObservationValue] = {}
    for kind, entries in candidates.items():
        for when, _, resource in sorted(entries, reverse=True):  # latest first; (date, order) never ties
            value = _read_observation(kind, resource, ruleset, when)
            if value is not None:
                latest[kind] = value
                break
            # named as a clinician reads it (cards show this line): the test and its date, never the id
            _, code, display = _first_display(resource.code)
            passed_over.append(f"{display or kind} ({code or 'no code'}), {when.isoformat()}: value or unit not usable")
    return latest, tuple(passed_over)


# The kind of observation a code is (ruleset.observation_codes: potassium, bmi...), None when no rule reads it.
_observation_kind = _Readings(lambda ruleset, concept: next(
    (ruleset.observation_codes[(s, c)] for s, c, _ in codings_of(concept) if (s, c) in ruleset.observation_codes), None))


def _read_observation(kind: str, resource: Any, ruleset: RuleSet, when: date) -> ObservationValue | None:
    system, code, display = _first_display(resource.code)
    provenance = Provenance("Observation", str(resource.id), system, code, display, when)
    if kind in ("pregnancy_status", "smoking_status"):
        return _coded_answer(kind, resource, ruleset, provenance)
    spec = getattr(ruleset.spec.observations, kind)
    quantity = resource.valueQuantity
    if quantity is None or quantity.value is None:
        interpretations = {c for i in (resource.interpretation or []) for c in _codes(i)}
        if kind in ("potassium", "magnesium") and interpretations:
            return ObservationValue(kind, provenance, None, None, None, bool(interpretations & LOW_INTERPRETATIONS))
        return None
    unit = quantity.code or quantity.unit
    if kind == "bmi":
        if unit not in spec.units:
            return None
        return ObservationValue(kind, provenance, Decimal(quantity.value), unit, None, None)
    cutoff = spec.low_below.get(unit or "")
    if cutoff is None:
        return None
    value = Decimal(quantity.value)
    limit = Decimal(str(cutoff))
    comparator = quantity.comparator
    if comparator in ("<", "<="):
        is_low: bool | None = value <= limit
        if not is_low:
            return None  # "< 5" says nothing about a 3.5 cut-off
    elif comparator in (">", ">="):
        if value < limit:
            return None
        is_low = False
    else:
        is_low = value < limit
    return ObservationValue(kind, provenance, value, unit, None, is_low)


def _coded_answer(kind: str, resource: Any, ruleset: RuleSet, provenance: Provenance) -> ObservationValue | None:
    codings = codings_of(resource.valueCodeableConcept)
    sets = (
        [("pregnant", "pregnancy_status_pregnant"), ("not-pregnant", "pregnancy_status_not_pregnant")]
        if kind == "pregnancy_status"
        else [("current", "smoking_current"), ("former", "smoking_former"), ("never", "smoking_never")]
    )
    for answer, value_set in sets:
        hit = ruleset.value_set(value_set).first_match(codings)
        if hit is not None:
            answered = Provenance(
                provenance.resource_type, provenance.resource_id, hit[0], hit[1], hit[2] or provenance.display,
                provenance.date,
            )
            return ObservationValue(kind, answered, None, None, answer, None)
    return None


# ---------------------------------------------------------------- concept facts

# A fact from the active records of one concept: fact name -> concept.
_SIMPLE_FACTS = {
    "documented_leg_cramps": "leg_cramp",
    "heart_failure": "heart_failure",
    "diabetes": "diabetes",
    "liver_disease": "liver_disease",
    "hypothyroidism": "hypothyroidism",
    "peripheral_artery_disease": "peripheral_artery_disease",
    "high_cholesterol": "high_cholesterol",
    "active_cancer": "active_cancer",
    "paralysis": "paralysis",
    "ckd_unspecified": "ckd_unspecified",
}


def _concept_facts(f: PatientRecords, ruleset: RuleSet) -> dict[str, Fact]:
    facts: dict[str, Fact] = {}

    def add(name: str, records: list[ConditionRecord], concept: str, note: str | None = None) -> None:
        if records:
            facts[name] = Fact(name, tuple(r.source_for(concept) for r in records), note)

    for name, concept in _SIMPLE_FACTS.items():
        add(name, f.active_conditions(concept), concept)
    add("dialysis_or_eskd", f.active_conditions("dialysis_or_eskd"), "dialysis_or_eskd")
    if "dialysis_or_eskd" not in facts:
        add("ckd_stage_3_5", f.active_conditions("ckd_stage_3_5"), "ckd_stage_3_5")
    windows = ruleset.spec.windows
    add(
        "recent_dehydration",
        [c for c in f.active_conditions("dehydration") if c.age_days is not None and c.age_days <= windows.dehydration_days],
        "dehydration",
    )
    _add_lab_fact(facts, f, "low_potassium", "potassium", "hypokalemia")
    _add_lab_fact(facts, f, "low_magnesium", "magnesium", "hypomagnesemia")
    _add_pregnancy(facts, f)
    _add_smoking(facts, f)
    _add_dvt_facts(facts, f, ruleset)
    if f.age_years is not None:
        facts["age"] = Fact("age", (f.patient,), f"age {f.age_years}")
    bmi = f.observations.get("bmi")
    if bmi is not None:
        facts["bmi"] = Fact("bmi", (bmi.provenance,), f"BMI {bmi.value} {bmi.unit}")
    return facts


def _add_lab_fact(facts: dict[str, Fact], f: PatientRecords, name: str, kind: str, diagnosis: str) -> None:
    records = f.active_conditions(diagnosis)
    if records:
        facts[name] = Fact(name, tuple(r.source_for(diagnosis) for r in records), "diagnosis")
        return
    latest = f.observations.get(kind)
    if latest is not None and latest.is_low:
        shown = f"{latest.value} {latest.unit}" if latest.value is not None else "flagged low"
        facts[name] = Fact(name, (latest.provenance,), f"latest {kind} {shown}")


def _add_pregnancy(facts: dict[str, Fact], f: PatientRecords) -> None:
    status = f.observations.get("pregnancy_status")
    if status is not None and status.answer == "pregnant":
        facts["pregnancy"] = Fact("pregnancy", (status.provenance,), "pregnancy status: pregnant")
        return
    records = f.active_conditions("pregnancy")
    if status is not None and status.answer == "not-pregnant":
        not_pregnant_on = status.provenance.date
        records = [r for r in records if r.date is not None and not_pregnant_on is not None and r.date > not_pregnant_on]
    if records:
        facts["pregnancy"] = Fact("pregnancy", tuple(r.source_for("pregnancy") for r in records))


def _add_smoking(facts: dict[str, Fact], f: PatientRecords) -> None:
    timeline: list[tuple[date, int, bool, Provenance]] = []
    for order, record in enumerate(f.conditions):
        if not (record.active and record.valid):
            continue
        for concept, current in (("smoking_current", True), ("smoking_former", False), ("smoking_never", False)):
            if concept in record.concepts:
                timeline.append((record.date or date.min, order, current, record.source_for(concept)))
    status = f.observations.get("smoking_status")
    if status is not None and status.provenance.date is not None:
        timeline.append((status.provenance.date, len(f.conditions), status.answer == "current", status.provenance))
    if timeline:
        _, _, current, source = max(timeline, key=lambda entry: (entry[0], entry[1]))
        if current:
            facts["current_smoker"] = Fact("current_smoker", (source,))


def is_recent_acute_dvt(record: ConditionRecord, recent_days: int) -> bool:
    """An active acute-DVT record dated within the recent window (RULES.md A.1)."""
    return ("dvt_acute" in record.concepts and record.active and record.valid
            and record.age_days is not None and record.age_days <= recent_days)


def _add_dvt_facts(facts: dict[str, Fact], f: PatientRecords, ruleset: RuleSet) -> None:
    """Previous DVT: a chronic / history code whatever its clinicalStatus, or an acute DVT that is not a
    recent active one (dated before the window, undated, or not active: Revision 2026-12 point 1)."""
    recent = ruleset.spec.windows.recent_days
    previous: list[Provenance] = []
    acute: list[Provenance] = []
    for record in f.conditions:
        if not record.valid:
            continue
        if "dvt_history" in record.concepts:
            previous.append(record.source_for("dvt_history"))
        elif is_recent_acute_dvt(record, recent):
            acute.append(record.source_for("dvt_acute"))
        elif "dvt_acute" in record.concepts:
            previous.append(record.source_for("dvt_acute"))
    if previous:
        facts["previous_dvt"] = Fact("previous_dvt", tuple(previous))
    if acute:
        facts["recent_acute_dvt"] = Fact("recent_acute_dvt", tuple(acute))


# ---------------------------------------------------------------- entry point

def extract_facts(chart: Chart, ruleset: RuleSet, drugs: DrugTable, now: datetime) -> PatientFacts:
    size = len(chart.conditions) + len(chart.observations) + len(chart.medication_requests) + \
        len(chart.medication_statements) + len(chart.procedures) + len(chart.service_requests)
    with gc_pause.held_for(size):  # as chart.build_chart: a large chart's body is still alive
        return _extract_facts(chart, ruleset, drugs, now)


def _extract_facts(chart: Chart, ruleset: RuleSet, drugs: DrugTable, now: datetime) -> PatientFacts:
    today = now.astimezone(timezone.utc).date()
    observations, passed_over = _observation_values(chart, ruleset, today)
    records = _patient_records(chart, ruleset, drugs, today, observations)
    return PatientFacts(
        patient=records.patient,
        age_years=records.age_years,
        conditions=records.conditions,
        medications=records.medications,
        observations=records.observations,
        evaluated_at=now,
        today=today,
        facts=_all_facts(records, chart, ruleset, today),
        skipped=list(chart.skipped),
        passed_over=passed_over,
        not_checked=chart.not_checked,
        incomplete=chart.incomplete,
        medication_mapping=Counter(m.method or "unmapped" for m in records.medications),
        ever_recorded=_ever_recorded(records, chart, ruleset),
    )


def _patient_records(chart: Chart, ruleset: RuleSet, drugs: DrugTable, today: date,
                     observations: Mapping[str, ObservationValue]) -> PatientRecords:
    patient = chart.patient
    birth = to_date(patient.birthDate)
    return PatientRecords(
        patient=Provenance("Patient", str(patient.id), display="birth date" if birth else None, date=birth),
        age_years=age_in_years(birth, today),
        conditions=tuple(_condition_record(c, ruleset, today) for c in chart.conditions),
        medications=tuple(
            medication_record(m, chart, ruleset, drugs, today)
            for m in [*chart.medication_requests, *chart.medication_statements]
        ),
        observations=observations,
    )


def _all_facts(records: PatientRecords, chart: Chart, ruleset: RuleSet, today: date) -> dict[str, Fact]:
    facts = _concept_facts(records, ruleset)
    _add_recent_surgery(facts, chart, ruleset, today)
    _add_duplex_on_record(facts, chart, ruleset, today)
    return facts


def _ever_recorded(facts: PatientRecords, chart: Chart, ruleset: RuleSet) -> frozenset[str]:
    """Concepts on any valid Condition, classes of any medication record, answers of any observation."""
    ever: set[str] = set()
    for record in facts.conditions:
        if record.valid:
            ever |= record.concepts
    for med in facts.medications:
        ever |= med.classes
    for observation in chart.observations:
        concept = observation.valueCodeableConcept
        if concept is not None:  # most are quantities
            ever |= _answers_ever(ruleset, concept)
    if "pregnancy_status_pregnant" in ever:
        ever.add("pregnancy")
    return frozenset(ever)


_ANSWER_SETS = ("pregnancy_status_pregnant", "smoking_current", "smoking_former", "smoking_never")
# The answer sets a coded value is in (a handful of concepts: smoking status, pregnancy status...).
_answers_ever = _Readings(lambda ruleset, concept: frozenset(
    name for name in _ANSWER_SETS if ruleset.value_set(name).first_match(codings_of(concept))))


def _dated_within(resource: Any, today: date, window: int) -> date | None:
    when = record_date(resource)
    days = age_in_days(when, today)
    return when if days is not None and days <= window else None


def _add_recent_surgery(facts: dict[str, Fact], chart: Chart, ruleset: RuleSet, today: date) -> None:
    """RULES.md Recent surgery: a completed Procedure, category surgical, in the last 28 days."""
    category = ruleset.value_set("surgical_procedure_category")
    window = ruleset.spec.windows.recent_surgery_days
    statuses = ruleset.spec.procedures.surgery_statuses
    sources = []
    for procedure in chart.procedures:
        if procedure.status not in statuses or category.first_match(codings_of(procedure.category)) is None:
            continue
        when = _dated_within(procedure, today, window)
        if when is not None:
            system, code, display = _first_display(procedure.code)
            sources.append(Provenance("Procedure", str(procedure.id), system, code, display, when,
                                      status=procedure.status))
    if sources:
        facts["recent_surgery"] = Fact("recent_surgery", tuple(sources))


def _add_duplex_on_record(facts: dict[str, Fact], chart: Chart, ruleset: RuleSet, today: date) -> None:
    """RULES.md Venous duplex on record: a completed Procedure, or an active / on-hold / completed
    ServiceRequest, coded in ``venous_duplex``, dated within 180 days. Latest first."""
    spec = ruleset.spec.procedures
    duplex = ruleset.value_set("venous_duplex")
    sources = []
    candidates = [(r, spec.duplex_procedure_statuses) for r in chart.procedures] + \
        [(r, spec.duplex_service_request_statuses) for r in chart.service_requests]
    for resource, statuses in candidates:
        hit = duplex.first_match(codings_of(resource.code))
        if resource.status not in statuses or hit is None:
            continue
        when = _dated_within(resource, today, spec.duplex_window_days)
        if when is not None:
            system, code, display = hit
            sources.append(Provenance(resource.get_resource_type(), str(resource.id), system, code,
                                      display or getattr(resource.code, "text", None), when, status=resource.status))
    if sources:
        sources.sort(key=lambda source: source.date or date.min, reverse=True)
        facts["venous_duplex_on_record"] = Fact("venous_duplex_on_record", tuple(sources))
