"""The patient's chart as read from resolved prefetch data: each resource of a type the rules read as a
small typed record (``engine/projection.py``: only the elements ``facts.py`` reads), grouped by type, with
every record that was skipped and why.

``fhir.resources`` (R4B) is the reader of record. The fast reader (``projection.read``) vouches only for
records whose read elements are certainly valid; anything else is validated by fhir.resources, whose
verdict stands: a record it refuses is skipped with its reason, exactly as when every record went through
it. One invalid resource is skipped and counted, never fatal; only an invalid Patient is (400). Skipped
records are logged once per request, as counts by resource type and reason (``log_skipped``), never a line
per record. The cost is linear in the number of resources, and a request may carry at most
``CRAMP_MAX_RESOURCES`` of them (``check_resource_count``, 413 before any validation).

What no rule can use is not validated at all (STATUS.md rev: a record no rule could use need not be fully
validated): Observations of codes no rule reads, Procedures and ServiceRequests that are neither a surgery
nor a venous duplex, quantity Observations older than their window. Of the rest, only the elements
``facts.py`` reads (``READ_ELEMENTS``) are looked at: an element outside that list is neither validated nor
read; add it there (and to projection.py) when ``facts.py`` starts reading it.
tests/unit/test_chart_projection.py checks that the answers are those of whole fhir.resources models
(``FULL_MODELS``), tests/unit/test_projection.py that the fast reader agrees with fhir.resources.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable, Mapping, Sequence

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cds_service.engine import gc_pause, projection
from cds_service.errors import InvalidPatient, PayloadTooLarge

log = logging.getLogger(__name__)

READ_TYPES = (
    "Patient",
    "Condition",
    "MedicationRequest",
    "MedicationStatement",
    "Medication",
    "Observation",
    "Procedure",
    "ServiceRequest",
)


# Per resource type, the elements facts.py reads, and those FHIR requires (subject): the rest of a resource
# is dropped before validation.
READ_ELEMENTS: dict[str, frozenset[str]] = {
    name: frozenset({"resourceType", "id", "subject", *elements})
    for name, elements in {
        # Its extensions too: a malformed (e.g. absurdly deep) Patient stays a 400, not a silent 200.
        "Patient": ("birthDate", "extension"),
        "Condition": ("code", "clinicalStatus", "verificationStatus", "bodySite", "onsetDateTime", "onsetPeriod",
                      "recordedDate", "abatementDateTime", "abatementPeriod", "abatementAge", "abatementRange",
                      "abatementString"),
        "Observation": ("status", "code", "effectiveDateTime", "effectivePeriod", "issued", "valueQuantity",
                        "valueCodeableConcept", "interpretation"),
        "MedicationRequest": ("status", "intent", "medicationCodeableConcept", "medicationReference", "contained",
                              "authoredOn"),
        "MedicationStatement": ("status", "medicationCodeableConcept", "medicationReference", "contained",
                                "effectiveDateTime", "effectivePeriod", "dateAsserted"),
        "Medication": ("code",),
        "Procedure": ("status", "category", "code", "performedDateTime", "performedPeriod"),
        "ServiceRequest": ("status", "intent", "code", "authoredOn"),
    }.items()
}
# True: the reader of record alone, as before projections: every resource of a read type validated whole
# by fhir.resources and kept as its model, none left out unvalidated (tests compare the answers).
FULL_MODELS = False


# get_fhir_model_class imports the model's module on every call (~4 % of a call): look each up once.
_MODEL_CLASSES = {name: get_fhir_model_class(name) for name in READ_TYPES}


# Date, dateTime and instant elements the rules read (and a Period's bounds): FHIR JSON writes them as
# strings, but pydantic's lax mode would read a number as seconds since 1970 (birthDate 0 -> 1970-01-01).
_DATE_ELEMENTS = frozenset({"birthDate", "onsetDateTime", "recordedDate", "abatementDateTime", "effectiveDateTime",
                            "issued", "authoredOn", "dateAsserted", "performedDateTime"})
_PERIOD_ELEMENTS = frozenset({"onsetPeriod", "abatementPeriod", "effectivePeriod", "performedPeriod"})


class NotAString(ValueError):
    """A date element sent as another JSON type; ``str()`` is its location, never its value."""


# What validating a client's resource may raise: each means "skip this record, say why" (never a 500).
INVALID_RESOURCE = (ValidationError, ValueError, TypeError, RecursionError)


def validate_resource(resource_type: str, raw: dict[str, Any]) -> Any:
    """``raw`` as a fhir.resources model, validating only the elements that facts.py reads; raises one of
    ``INVALID_RESOURCE`` (``invalid_reason`` says it without the value)."""
    if not FULL_MODELS:
        raw = _pruned(resource_type, raw)
    _check_dates_are_strings(raw)
    return _MODEL_CLASSES[resource_type].model_validate(raw)


def read_resource(resource_type: str, raw: dict[str, Any]) -> Any:
    """``raw`` as its ``projection`` record: read by the fast reader when it can vouch for it, else validated
    by fhir.resources (raising one of ``INVALID_RESOURCE``, as ``validate_resource``)."""
    if FULL_MODELS:
        return validate_resource(resource_type, raw)
    record = projection.read(raw)
    if record is not None:
        return record
    pruned = _pruned(resource_type, raw)
    _check_dates_are_strings(pruned)
    return projection.from_model(_MODEL_CLASSES[resource_type].model_validate(pruned))


def _pruned(resource_type: str, raw: dict[str, Any]) -> dict[str, Any]:
    keep = READ_ELEMENTS[resource_type]
    return {key: value for key, value in raw.items() if key in keep}


def _check_dates_are_strings(raw: dict[str, Any]) -> None:
    for key in _DATE_ELEMENTS.intersection(raw):
        if not isinstance(raw[key], (str, type(None))):
            raise NotAString(key)
    for key in _PERIOD_ELEMENTS.intersection(raw):
        period = raw[key]
        for bound in ("start", "end"):
            if isinstance(period, dict) and not isinstance(period.get(bound), (str, type(None))):
                raise NotAString(f"{key}.{bound}")


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR R4 id syntax: a longer or odd one is never echoed


def record_id(raw: dict[str, Any]) -> str:
    """A resource's id as the service repeats it (skipped records, cards, logs): "?" unless a valid FHIR id."""
    value = raw.get("id")
    return value if isinstance(value, str) and _FHIR_ID.match(value) else "?"


def count_resources(resources_by_key: Mapping[str, list[Any]], draft_orders: Mapping[str, Any] | None = None) -> int:
    """Resources one request brings: every prefetch key's (sent and fetched) and the draft orders."""
    entries = (draft_orders or {}).get("entry")
    return sum(len(raws) for raws in resources_by_key.values()) + (len(entries) if isinstance(entries, list) else 0)


def check_resource_count(count: int, limit: int) -> None:
    """413 naming the cap when a request brings more resources than ``limit`` (CRAMP_MAX_RESOURCES)."""
    if count > limit:
        raise PayloadTooLarge(
            f"The request carries {count:,} FHIR resources, more than the limit of {limit:,} per request "
            "(CRAMP_MAX_RESOURCES)."
        )


@dataclass(frozen=True)
class SkippedRecord:
    resource_type: str
    resource_id: str
    reason: str


@dataclass
class Chart:
    patient: Any
    conditions: list[Any] = field(default_factory=list)
    medication_requests: list[Any] = field(default_factory=list)
    medication_statements: list[Any] = field(default_factory=list)
    medications: dict[str, Any] = field(default_factory=dict)  # "Medication/<id>" -> Medication
    observations: list[Any] = field(default_factory=list)
    procedures: list[Any] = field(default_factory=list)
    service_requests: list[Any] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    not_checked: tuple[str, ...] = ()  # optional prefetch keys whose data could not be had
    incomplete: tuple[str, ...] = ()  # keys whose Bundle had more pages that were not read


_LISTS = {
    "Condition": "conditions",
    "MedicationRequest": "medication_requests",
    "MedicationStatement": "medication_statements",
    "Observation": "observations",
    "Procedure": "procedures",
    "ServiceRequest": "service_requests",
}
_LISTS_AND_MEDICATIONS = frozenset({*_LISTS, "Medication"})  # every read type but the Patient


def build_chart(
    patient_id: str,
    resources_by_key: Mapping[str, list[dict[str, Any]]],
    *,
    observation_codes: frozenset[tuple[str, str]],
    not_checked: Iterable[str] = (),
    incomplete: Iterable[str] = (),
    stale_before: Mapping[tuple[str, str], date] | None = None,
    procedure_codes: frozenset[tuple[str, str]] | None = None,
) -> Chart:
    """Validate and group raw resources. ``resources_by_key['patient']`` must hold the Patient.

    ``procedure_codes``: the (system, code) pairs a Procedure or ServiceRequest must carry in ``code`` or
    ``category`` for a rule to read it (recent surgery, venous duplex); others are left out unvalidated,
    like Observations of codes no rule reads. None: every one is read.

    ``stale_before``: (system, code) of a quantity observation -> the date before which facts.py cannot
    use it (outside its window; ``Engine`` passes it with a day's margin). Such an Observation with a
    ``valueQuantity`` and a readable date before that is left out without being validated.
    """
    patient = _parse_patient(patient_id, resources_by_key.get("patient", []))
    chart = Chart(
        patient=patient,
        not_checked=tuple(not_checked),
        incomplete=tuple(incomplete),
    )
    seen: set[tuple[str, str]] = set()
    # A large chart is read with the cyclic collector held off: its full collections would walk the whole
    # parsed body again and again (engine/gc_pause.py).
    with gc_pause.held_for(sum(len(raws) for raws in resources_by_key.values())):
        for key, raws in resources_by_key.items():
            if key == "patient":
                continue
            for raw in raws:
                _add_resource(chart, raw, patient_id, observation_codes, seen, stale_before, procedure_codes)
    return chart


def _parse_patient(patient_id: str, raws: list[dict[str, Any]]) -> Any:
    candidates = [raw for raw in raws if isinstance(raw, dict) and raw.get("resourceType") == "Patient"]
    if not candidates:
        raise InvalidPatient("prefetch.patient holds no Patient resource.", expression="prefetch.patient")
    raw = next((c for c in candidates if c.get("id") == patient_id), candidates[0])
    if raw.get("id") not in (None, patient_id):
        raise InvalidPatient(
            "prefetch.patient is a different patient than context.patientId.", expression="prefetch.patient"
        )
    try:
        return read_resource("Patient", raw)
    except INVALID_RESOURCE as exc:
        raise InvalidPatient(
            f"prefetch.patient is not a valid FHIR R4 Patient ({_field_of(exc)}).", expression="prefetch.patient"
        ) from None


def _add_resource(
    chart: Chart,
    raw: Any,
    patient_id: str,
    observation_codes: frozenset[tuple[str, str]],
    seen: set[tuple[str, str]],
    stale_before: Mapping[tuple[str, str], date] | None = None,
    procedure_codes: frozenset[tuple[str, str]] | None = None,
) -> None:
    if not isinstance(raw, dict):
        chart.skipped.append(SkippedRecord("?", "?", "not a JSON object"))
        return
    resource_type = raw.get("resourceType")
    if type(resource_type) is not str or resource_type not in _LISTS_AND_MEDICATIONS:
        return
    if resource_type == "Observation" and "code" not in raw and not FULL_MODELS:
        # invalid, and no rule could read it: said so without validating it (a Bundle of 200,000 of them)
        chart.skipped.append(SkippedRecord(resource_type, record_id(raw), "invalid FHIR R4 (code: missing)"))
        return
    if not FULL_MODELS and _unusable(raw, resource_type, observation_codes, stale_before, procedure_codes):
        return
    resource_id = record_id(raw)
    identity = (resource_type, resource_id)
    if resource_id != "?" and identity in seen:
        return  # the same record sent under two keys counts once
    seen.add(identity)
    if is_other_patient(raw, patient_id):
        chart.skipped.append(SkippedRecord(resource_type, resource_id, "refers to another patient"))
        return
    try:
        resource = read_resource(resource_type, raw)
    except INVALID_RESOURCE as exc:
        chart.skipped.append(SkippedRecord(resource_type, resource_id, invalid_reason(exc)))
        return
    if resource_type == "Medication":
        chart.medications[f"Medication/{resource_id}"] = resource
        return
    getattr(chart, _LISTS[resource_type]).append(resource)


def _unusable(raw: dict[str, Any], resource_type: str, observation_codes: frozenset[tuple[str, str]],
              stale_before: Mapping[tuple[str, str], date] | None,
              procedure_codes: frozenset[tuple[str, str]] | None) -> bool:
    """A record no rule could use, left out unvalidated: an Observation of a code no rule reads, or a
    quantity older than its window; a Procedure / ServiceRequest that is neither a surgery nor a duplex.
    A malformed code is never a reason to leave a record out: it is validated, so that it is reported."""
    if resource_type == "Observation":
        code = raw.get("code")
        pairs = _coded_pairs(code) if isinstance(code, dict) and "coding" in code else None
        if pairs is None:
            return False
        if observation_codes.isdisjoint(pairs):
            return True
        if not stale_before:
            return False
        return _is_stale_quantity(raw, pairs, stale_before)
    if resource_type in ("Procedure", "ServiceRequest"):
        return procedure_codes is not None and not _has_procedure_code(raw, procedure_codes)
    return False


def _coded_pairs(concept: Any) -> set[tuple[Any, Any]] | None:
    """The (system, code) of each coding (an object) of a raw CodeableConcept; None when it is malformed: not
    an object, ``coding`` not an array, or a system or code that cannot be looked up (an array, an object)."""
    if not isinstance(concept, dict) or not isinstance(codings := concept.get("coding", []), list):
        return None
    try:
        return {(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)}
    except TypeError:  # unhashable
        return None


def _has_procedure_code(raw: dict[str, Any], codes: frozenset[tuple[str, str]]) -> bool:
    """Whether a raw Procedure / ServiceRequest has a ``code`` or ``category`` coding in ``codes``; a
    malformed one is validated, so that it is reported rather than silently dropped."""
    concepts: list[Any] = []
    for element in ("code", "category"):
        value = raw.get(element)
        concepts += value if isinstance(value, list) else [value] if value is not None else []
    for concept in concepts:
        pairs = _coded_pairs(concept)
        if pairs is None or not codes.isdisjoint(pairs):
            return True
        if isinstance(concept, dict) and any(not isinstance(c, dict) for c in concept.get("coding", [])):
            return True
    return False


def _raw_date(raw: dict[str, Any]) -> date | None:
    """An Observation's date as facts.record_date reads it (effective, period start, issued: the first one
    given), from the raw strings: the calendar date as written, None when absent or unreadable."""
    value = raw.get("effectiveDateTime")
    if value is None:
        period = raw.get("effectivePeriod")
        value = period.get("start") if isinstance(period, dict) else None
        if value is None:
            value = raw.get("issued")
    if isinstance(value, str) and len(value) >= 10:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _is_stale_quantity(raw: dict[str, Any], pairs: set[tuple[Any, Any]],
                       stale_before: Mapping[tuple[str, str], date]) -> bool:
    if "valueQuantity" not in raw or "valueCodeableConcept" in raw:
        return False  # coded answers count at any age (facts: ever recorded)
    cutoffs = [stale_before[pair] for pair in pairs if pair in stale_before]
    if not cutoffs:
        return False
    when = _raw_date(raw)
    return when is not None and when < min(cutoffs)  # older than every window its codes have


def is_other_patient(raw: dict[str, Any], patient_id: str) -> bool:
    """The resource's subject or patient reference names another patient than ``patient_id``."""
    for field_name in ("subject", "patient"):
        ref = raw.get(field_name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            reference = ref["reference"]
            if reference == "Patient/" + patient_id:
                return False  # the usual case, told without splitting
            if "Patient/" in reference:
                return reference.rsplit("Patient/", 1)[1].split("/", 1)[0] != patient_id
    return False


def skipped_counts(skipped: Iterable[SkippedRecord]) -> dict[str, dict[str, int]]:
    """Skipped records counted by resource type, then reason: what the request's one log line carries."""
    counts: dict[str, dict[str, int]] = {}
    for (kind, reason), count in Counter((r.resource_type, r.reason) for r in skipped).items():
        counts.setdefault(kind, {})[reason] = count
    return counts


def log_skipped(skipped: Sequence[SkippedRecord], **context: Any) -> None:
    """One WARNING line per request for all its skipped records (never a line per record), no ids."""
    if skipped:
        log.warning("records skipped", extra={**context, "skipped_records": len(skipped),
                                              "skipped_by_type_and_reason": skipped_counts(skipped)})


def invalid_reason(exc: Exception) -> str:
    """A skipped record's reason: ``invalid FHIR R4 (<first failing field>: <error type>)``."""
    return f"invalid FHIR R4 ({_field_of(exc)})"


def _field_of(exc: Exception) -> str:
    """Name the first failing field without echoing its value (which may be PHI), and without list
    positions, so that one mistake repeated in many records is one reason."""
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if errors:
            loc = ".".join(str(part) for part in errors[0]["loc"] if not isinstance(part, int))
            return f"{loc}: {errors[0]['type']}" if loc else errors[0]["type"]
    if isinstance(exc, NotAString):
        return f"{exc}: string_type"
    return type(exc).__name__
