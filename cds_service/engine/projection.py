"""The elements of a FHIR R4B resource that the rules read, as small typed records: what a chart holds and
what ``engine/facts.py`` reads (the same attribute names as the ``fhir.resources`` models).

    read(raw)          the record, when every element it keeps is certainly valid FHIR R4B; else None
    from_model(model)  the same record from a validated fhir.resources model

``fhir.resources`` stays the reader of record: ``read`` accepts only a strict subset of what it accepts
(no nulls or empty elements, no element it does not know, dates it parses the same way) and
answers None for anything else, and the chart then asks fhir.resources, whose verdict and reason stand.
So ``read`` may doubt a valid record (it costs time, never an answer) but never vouches for one that
fhir.resources refuses; and what it reads equals ``from_model`` of the model
(tests/unit/test_projection.py checks both on every Synthea record, the fixtures, and mutations of them).
Building a full model costs 50-300 us a resource (Python validators on every element); this costs 2-10 us.

Like chart.py's pruning, only the elements in ``chart.READ_ELEMENTS`` are looked at; a Patient's
extensions are checked (a malformed one stays a 400) but not kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable, Mapping, cast

import orjson
from fhir_core.types import Date as _FhirDate, DateTime as _FhirDateTime, Decimal as _FhirDecimal, \
    Instant as _FhirInstant


class Doubt(Exception):
    """The fast reader cannot vouch for this value: fhir.resources decides."""


# ---------------------------------------------------------------- the records


@dataclass(slots=True, frozen=True)  # frozen: one checked concept is shared by every record that has it
class Coding:
    system: str | None
    code: str | None
    display: str | None


@dataclass(frozen=True)
class CodeableConcept:
    """Its hash is computed once: facts.py looks concepts up in its memos several times per record."""

    __slots__ = ("coding", "text", "_hash")
    coding: tuple[Coding, ...] | None
    text: str | None

    def __hash__(self) -> int:
        try:
            # a slot outside the dataclass fields (so not in __init__ or ==), hence unknown to mypy
            return cast(int, getattr(self, "_hash"))
        except AttributeError:
            value = hash((self.coding, self.text))
            object.__setattr__(self, "_hash", value)
            return value


@dataclass(slots=True, frozen=True)
class Reference:
    reference: str | None


@dataclass(slots=True, frozen=True)
class Period:
    start: Any  # date, datetime or a partial date string, as fhir.resources reads a dateTime
    end: Any


@dataclass(slots=True, unsafe_hash=True)  # one per record, never shared: not frozen (five times cheaper to make)
class Quantity:
    value: Decimal | None
    comparator: str | None
    unit: str | None
    code: str | None


@dataclass(slots=True)
class Contained:
    """A contained resource, as facts.py reads one (a medication named by ``#id``)."""

    id: str | None
    code: CodeableConcept | None


class _Resource:
    __slots__ = ()
    resource_type = ""

    def get_resource_type(self) -> str:
        return self.resource_type


@dataclass(slots=True)
class Patient(_Resource):
    id: str | None = None
    birthDate: Any = None
    resource_type = "Patient"


@dataclass(slots=True)
class Condition(_Resource):
    id: str | None = None
    code: CodeableConcept | None = None
    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    bodySite: tuple[CodeableConcept, ...] | None = None
    onsetDateTime: Any = None
    onsetPeriod: Period | None = None
    recordedDate: Any = None
    abatementDateTime: Any = None
    abatementPeriod: Period | None = None
    abatementAge: Any = None  # facts.py asks only whether an abatement is given: True when it is
    abatementRange: Any = None
    abatementString: str | None = None
    resource_type = "Condition"


@dataclass(slots=True)
class Observation(_Resource):
    id: str | None = None
    status: str | None = None
    code: CodeableConcept | None = None
    effectiveDateTime: Any = None
    effectivePeriod: Period | None = None
    issued: Any = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    interpretation: tuple[CodeableConcept, ...] | None = None
    resource_type = "Observation"


@dataclass(slots=True)
class MedicationRequest(_Resource):
    id: str | None = None
    status: str | None = None
    intent: str | None = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    contained: tuple[Contained, ...] | None = None
    authoredOn: Any = None
    resource_type = "MedicationRequest"


@dataclass(slots=True)
class MedicationStatement(_Resource):
    id: str | None = None
    status: str | None = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    contained: tuple[Contained, ...] | None = None
    effectiveDateTime: Any = None
    effectivePeriod: Period | None = None
    dateAsserted: Any = None
    resource_type = "MedicationStatement"


@dataclass(slots=True)
class Medication(_Resource):
    id: str | None = None
    code: CodeableConcept | None = None
    resource_type = "Medication"


@dataclass(slots=True)
class Procedure(_Resource):
    id: str | None = None
    status: str | None = None
    category: CodeableConcept | None = None
    code: CodeableConcept | None = None
    performedDateTime: Any = None
    performedPeriod: Period | None = None
    resource_type = "Procedure"


@dataclass(slots=True)
class ServiceRequest(_Resource):
    id: str | None = None
    status: str | None = None
    intent: str | None = None
    code: CodeableConcept | None = None
    authoredOn: Any = None
    resource_type = "ServiceRequest"


Record = Patient | Condition | Observation | MedicationRequest | MedicationStatement | Medication | Procedure \
    | ServiceRequest

# ---------------------------------------------------------------- memos

_KEPT = 20_000  # entries per memo below (cleared when full)
_KEY_BYTES = 2048  # a longer element is read every time: a memo never holds more than ~40 MiB of keys


def _remembered(reader: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``reader`` of a string, remembering what it read: the same dates come again and again (one
    encounter's observations). Only strings are looked up, so a number never stands for one."""
    memo: dict[str, Any] = {}

    def read(value: Any) -> Any:
        if type(value) is not str:
            return reader(value)
        known = memo.get(value)
        if known is None:
            known = reader(value)
            if len(memo) >= _KEPT:
                memo.clear()
            memo[value] = known
        return known

    return read


def _remembered_element(reader: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``reader`` of a JSON element, remembering what it read, keyed by the element's JSON as written
    (orjson: ``true`` and ``1`` and ``1.0`` are different keys, as they are different FHIR values): the same
    codings, concepts and patient reference come in record after record."""
    memo: dict[bytes, Any] = {}

    def read(value: Any) -> Any:
        try:
            key = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):  # not JSON (an integer past 64 bits): not remembered
            return reader(value)
        known = memo.get(key)
        if known is None:
            known = reader(value)
            if len(key) <= _KEY_BYTES:
                if len(memo) >= _KEPT:
                    memo.clear()
                memo[key] = known
        return known

    return read


# ---------------------------------------------------------------- primitives (a strict subset of FHIR's)

# FHIR's own patterns are checked by pydantic with Rust's regex engine (Unicode White_Space) or Python's
# (str.isspace), searched or matched: these are the part that is valid under all of them, surrogates left out.
_CHAR = r"[^\s\ud800-\udfff]"
_TEXT = re.compile(rf"(?:{_CHAR}|[ \t\r\n])+").fullmatch  # string: [ \r\n\t\S]+
_CODE = re.compile(rf"{_CHAR}+(?: {_CHAR}+)*").fullmatch  # code: ^[^\s]+(\s[^\s]+)*$, one space between
_URI = re.compile(rf"{_CHAR}+").fullmatch  # uri: \S*
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}").fullmatch
_FULL_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})").fullmatch
_PARTIAL_DATE = re.compile(r"[0-9]{4}(-[0-9]{2})?").fullmatch
# A time to the second, up to microseconds (what datetime holds exactly), and a zone; no leap second.
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]{1,6})?"
                        r"(Z|[+-][0-9]{2}:[0-9]{2})").fullmatch
_FHIR_DATE = _FhirDate.pattern.fullmatch
_FHIR_DATE_TIME = _FhirDateTime.pattern.fullmatch
_FHIR_INSTANT = _FhirInstant.pattern.fullmatch
_FHIR_DECIMAL = _FhirDecimal.pattern.fullmatch


# Most values are printable ASCII (0x20-0x7e: no whitespace but the space, no surrogate): such a value is
# valid under the patterns above, told by str methods at a fraction of a regex's cost; any other value is
# left to the pattern. The same verdicts, sooner.
def _plain_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _string(value: Any) -> str:
    if type(value) is str and (value and _plain_ascii(value) or _TEXT(value)):
        return value
    raise Doubt


def _code(value: Any) -> str:
    if type(value) is str and (value and " " not in value and _plain_ascii(value) or _CODE(value)):
        return value
    raise Doubt


def _uri(value: Any) -> str:
    if type(value) is str and (value and " " not in value and _plain_ascii(value) or _URI(value)):
        return value
    raise Doubt


def _id(value: Any) -> str:
    if type(value) is str and _ID(value):
        return value
    raise Doubt


@_remembered
def _date(value: Any) -> date | str:
    """FHIR date: a full date as a ``date``, a partial one kept as written (as fhir.resources does)."""
    if type(value) is str and _FHIR_DATE(value):
        full = _FULL_DATE(value)
        if full:
            try:
                return date(int(full[1]), int(full[2]), int(full[3]))
            except ValueError:
                raise Doubt from None
        if _PARTIAL_DATE(value):
            return value
    raise Doubt


@_remembered
def _date_time(value: Any) -> date | datetime | str:
    """FHIR dateTime: a date alone as a ``date``, a partial one as written, a time with its zone."""
    if type(value) is str and _FHIR_DATE_TIME(value):
        if "T" not in value:
            return _date(value)
        if _DATE_TIME(value):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise Doubt from None
    raise Doubt


@_remembered
def _instant(value: Any) -> datetime:
    if type(value) is str and _FHIR_INSTANT(value) and _DATE_TIME(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise Doubt from None
    raise Doubt


def _decimal(value: Any) -> Decimal:
    kind = type(value)
    if kind is int or kind is float:
        written = str(value)  # once: a float's shortest repr is the costly part
        if _FHIR_DECIMAL(written):
            return Decimal(value) if kind is int else Decimal(written)  # as fhir_core: 1.0 stays Decimal('1.0')
    raise Doubt


def _boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise Doubt


# ---------------------------------------------------------------- complex types


def _element(value: Any, known: frozenset[str]) -> dict[str, Any]:
    """A JSON object of only ``known`` keys, none of them null; not empty."""
    if type(value) is not dict or not value or not known.issuperset(value) or None in value.values():
        raise Doubt
    return value


def _items(value: Any) -> list[Any]:
    if type(value) is not list or not value:
        raise Doubt
    return value


_CODING_KEYS = frozenset({"system", "version", "code", "display", "userSelected"})


def _coding(value: Any) -> Coding:
    element = _element(value, _CODING_KEYS)
    if "version" in element:
        _string(element["version"])
    if "userSelected" in element:
        _boolean(element["userSelected"])
    system, code, display = element.get("system"), element.get("code"), element.get("display")
    return Coding(None if system is None else _uri(system), None if code is None else _code(code),
                  None if display is None else _string(display))


_CONCEPT_KEYS = frozenset({"coding", "text"})


@_remembered_element
def _concept(value: Any) -> CodeableConcept:
    element = _element(value, _CONCEPT_KEYS)
    coding, text = element.get("coding"), element.get("text")
    return CodeableConcept(None if coding is None else tuple(_coding(c) for c in _items(coding)),
                           None if text is None else _string(text))


def _concepts(value: Any) -> tuple[CodeableConcept, ...]:
    return tuple(_concept(c) for c in _items(value))


_REFERENCE_KEYS = frozenset({"reference", "type", "display"})


@_remembered_element
def _reference(value: Any) -> Reference:
    element = _element(value, _REFERENCE_KEYS)
    if "type" in element:
        _uri(element["type"])
    if "display" in element:
        _string(element["display"])
    reference = element.get("reference")
    return Reference(None if reference is None else _string(reference))


_PERIOD_KEYS = frozenset({"start", "end"})


@_remembered_element
def _period(value: Any) -> Period:
    element = _element(value, _PERIOD_KEYS)
    start, end = element.get("start"), element.get("end")
    return Period(None if start is None else _date_time(start), None if end is None else _date_time(end))


_QUANTITY_KEYS = frozenset({"value", "comparator", "unit", "system", "code"})


def _quantity(value: Any) -> Quantity:
    element = _element(value, _QUANTITY_KEYS)
    if "system" in element:
        _uri(element["system"])
    get = element.get
    number, comparator, unit, code = get("value"), get("comparator"), get("unit"), get("code")
    return Quantity(None if number is None else _decimal(number), None if comparator is None else _code(comparator),
                    None if unit is None else _string(unit), None if code is None else _code(code))


_ADDRESS_KEYS = frozenset({"use", "type", "text", "line", "city", "district", "state", "postalCode", "country"})


def _address(value: Any) -> None:
    element = _element(value, _ADDRESS_KEYS)
    for key, item in element.items():
        if key in ("use", "type"):
            _code(item)
        elif key == "line":
            for line in _items(item):
                _string(line)
        else:
            _string(item)


_EXTENSION_VALUES: dict[str, Callable[[Any], Any]] = {
    "valueString": _string, "valueCode": _code, "valueUri": _uri, "valueBoolean": _boolean,
    "valueDecimal": _decimal, "valueCoding": _coding, "valueCodeableConcept": _concept, "valueAddress": _address,
    "valueDate": _date, "valueDateTime": _date_time,
}
_EXTENSION_KEYS = frozenset({"url", "extension", *_EXTENSION_VALUES})
_EXTENSION_DEPTH = 3  # Synthea's are two deep; a deeper one is fhir.resources' to judge (and refuse)


def _extensions(value: Any, depth: int = 1) -> None:
    if depth > _EXTENSION_DEPTH:
        raise Doubt
    for extension in _items(value):
        if depth == 1:
            _patient_extension(extension)
        else:
            _extension(extension, depth)


def _extension(value: Any, depth: int) -> bool:
    element = _element(value, _EXTENSION_KEYS)
    if "url" not in element:
        raise Doubt
    _uri(element["url"])
    values = [key for key in element if key.startswith("value")]
    if len(values) > 1:
        raise Doubt
    for key in values:
        _EXTENSION_VALUES[key](element[key])
    if "extension" in element:
        _extensions(element["extension"], depth + 1)
    return True  # remembered: checked


# A Patient's extensions one by one: race and ethnicity, with their codings, are the same in many charts.
_patient_extension = _remembered_element(lambda value: _extension(value, 1))


# ---------------------------------------------------------------- resources


def _doubted(value: Any) -> Any:
    """An element rare enough to leave to fhir.resources (an abatement age or range, contained resources)."""
    raise Doubt


def _checked(value: Any) -> None:
    """Patient.extension: checked (a malformed one is a 400), not kept."""
    _extensions(value)


@dataclass(frozen=True)
class _Shape:
    """A resource type as the fast reader reads it: a reader per element it knows (an element it does not
    know is doubted: fhir.resources refuses it, or reads it), the required elements, and the choice
    elements (``onset[x]``: at most one type; ``medication[x]``: exactly one)."""

    record: type
    readers: Mapping[str, Callable[[Any], Any]]
    required: frozenset[str] = frozenset()
    choices: tuple[frozenset[str], ...] = ()
    one_required: frozenset[str] = frozenset()
    refused: frozenset[str] = frozenset()  # read elements the type does not have (chart.READ_ELEMENTS' subject)
    known: frozenset[str] = field(init=False)  # every element looked at: the readers' and the refused
    kept: frozenset[str] = field(init=False)  # the elements the record holds (the others are only checked)

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", frozenset(self.readers) | self.refused)
        object.__setattr__(self, "kept", frozenset(self.readers) - _NOT_KEPT)


_NOT_KEPT = frozenset({"subject", "extension"})  # checked, not read by facts.py
_MEDICATION_X = frozenset({"medicationCodeableConcept", "medicationReference"})
_SUBJECT = frozenset({"subject"})
_SHAPES: dict[str, _Shape] = {
    "Patient": _Shape(Patient, {"id": _id, "birthDate": _date, "extension": _checked}, refused=_SUBJECT),
    "Condition": _Shape(
        Condition,
        {"id": _id, "subject": _reference, "code": _concept, "clinicalStatus": _concept,
         "verificationStatus": _concept, "bodySite": _concepts, "onsetDateTime": _date_time,
         "onsetPeriod": _period, "recordedDate": _date_time, "abatementDateTime": _date_time,
         "abatementPeriod": _period, "abatementAge": _doubted, "abatementRange": _doubted,
         "abatementString": _string},
        required=frozenset({"subject"}),
        choices=(frozenset({"onsetDateTime", "onsetPeriod"}),
                 frozenset({"abatementDateTime", "abatementPeriod", "abatementAge", "abatementRange",
                            "abatementString"}))),
    "Observation": _Shape(
        Observation,
        {"id": _id, "subject": _reference, "status": _code, "code": _concept, "effectiveDateTime": _date_time,
         "effectivePeriod": _period, "issued": _instant, "valueQuantity": _quantity,
         "valueCodeableConcept": _concept, "interpretation": _concepts},
        required=frozenset({"status", "code"}),
        choices=(frozenset({"effectiveDateTime", "effectivePeriod"}),
                 frozenset({"valueQuantity", "valueCodeableConcept"}))),
    "MedicationRequest": _Shape(
        MedicationRequest,
        {"id": _id, "subject": _reference, "status": _code, "intent": _code, "medicationCodeableConcept": _concept,
         "medicationReference": _reference, "contained": _doubted, "authoredOn": _date_time},
        required=frozenset({"subject", "status", "intent"}), one_required=_MEDICATION_X),
    "MedicationStatement": _Shape(
        MedicationStatement,
        {"id": _id, "subject": _reference, "status": _code, "medicationCodeableConcept": _concept,
         "medicationReference": _reference, "contained": _doubted, "effectiveDateTime": _date_time,
         "effectivePeriod": _period, "dateAsserted": _date_time},
        required=frozenset({"subject", "status"}), choices=(frozenset({"effectiveDateTime", "effectivePeriod"}),),
        one_required=_MEDICATION_X),
    "Medication": _Shape(Medication, {"id": _id, "code": _concept}, refused=_SUBJECT),
    "Procedure": _Shape(
        Procedure,
        {"id": _id, "subject": _reference, "status": _code, "category": _concept, "code": _concept,
         "performedDateTime": _date_time, "performedPeriod": _period},
        required=frozenset({"subject", "status"}),
        choices=(frozenset({"performedDateTime", "performedPeriod"}),)),
    "ServiceRequest": _Shape(
        ServiceRequest,
        {"id": _id, "subject": _reference, "status": _code, "intent": _code, "code": _concept,
         "authoredOn": _date_time},
        required=frozenset({"subject", "status", "intent"})),
}
READ_TYPES = frozenset(_SHAPES)


def read(raw: dict[str, Any]) -> Record | None:
    """``raw`` (a resource of a type in ``READ_TYPES``) as its record, or None when the fast reader cannot
    vouch for it: then fhir.resources reads it (``from_model``) or refuses it. Only the elements the rules
    read (``chart.READ_ELEMENTS``) are looked at."""
    shape = _SHAPES[raw["resourceType"]]
    present = shape.known.intersection(raw)  # the elements looked at, once (the checks below are set probes)
    if not shape.required <= present or not shape.refused.isdisjoint(present):
        return None
    for group in shape.choices:
        if len(group & present) > 1:
            return None
    if shape.one_required and len(shape.one_required & present) != 1:
        return None
    readers, kept = shape.readers, shape.kept
    record = shape.record()
    try:
        for key in present:
            value = readers[key](raw[key])
            if key in kept:
                setattr(record, key, value)
    except Doubt:
        return None
    return record


# ---------------------------------------------------------------- from a fhir.resources model


def _coding_of(model: Any) -> Coding:
    return Coding(model.system, model.code, model.display)


def _model_concept(model: Any) -> CodeableConcept:
    return CodeableConcept(tuple(_coding_of(c) for c in model.coding) if model.coding else None, model.text)


def _concept_of(model: Any) -> CodeableConcept | None:
    return None if model is None else _model_concept(model)


def _concepts_of(models: Any) -> tuple[CodeableConcept, ...] | None:
    # fhir.resources allows no None inside a list of CodeableConcepts
    return tuple(_model_concept(m) for m in models) if models else None


def _period_of(model: Any) -> Period | None:
    return None if model is None else Period(model.start, model.end)


def _reference_of(model: Any) -> Reference | None:
    return None if model is None else Reference(model.reference)


def _quantity_of(model: Any) -> Quantity | None:
    return None if model is None else Quantity(model.value, model.comparator, model.unit, model.code)


def _contained_of(models: Any) -> tuple[Contained, ...] | None:
    if not models:
        return None
    # Any resource type may be contained; facts.py reads its id and, when it is a CodeableConcept, its code.
    return tuple(Contained(getattr(m, "id", None),
                           _concept_of(code) if hasattr(code := getattr(m, "code", None), "coding") else None)
                 for m in models)


def _given_of(model: Any) -> bool | None:
    return None if model is None else True


def from_model(model: Any) -> Record:
    """The record of a resource fhir.resources has validated (the chart's path for what ``read`` doubts)."""
    kind = model.get_resource_type()
    m = model
    if kind == "Patient":
        return Patient(m.id, m.birthDate)
    if kind == "Condition":
        return Condition(m.id, _concept_of(m.code), _concept_of(m.clinicalStatus), _concept_of(m.verificationStatus),
                         _concepts_of(m.bodySite), m.onsetDateTime, _period_of(m.onsetPeriod), m.recordedDate,
                         m.abatementDateTime, _period_of(m.abatementPeriod), _given_of(m.abatementAge),
                         _given_of(m.abatementRange), m.abatementString)
    if kind == "Observation":
        return Observation(m.id, m.status, _concept_of(m.code), m.effectiveDateTime, _period_of(m.effectivePeriod),
                           m.issued, _quantity_of(m.valueQuantity), _concept_of(m.valueCodeableConcept),
                           _concepts_of(m.interpretation))
    if kind == "MedicationRequest":
        return MedicationRequest(m.id, m.status, m.intent, _concept_of(m.medicationCodeableConcept),
                                 _reference_of(m.medicationReference), _contained_of(m.contained), m.authoredOn)
    if kind == "MedicationStatement":
        return MedicationStatement(m.id, m.status, _concept_of(m.medicationCodeableConcept),
                                   _reference_of(m.medicationReference), _contained_of(m.contained),
                                   m.effectiveDateTime, _period_of(m.effectivePeriod), m.dateAsserted)
    if kind == "Medication":
        return Medication(m.id, _concept_of(m.code))
    if kind == "Procedure":
        return Procedure(m.id, m.status, _concept_of(m.category), _concept_of(m.code), m.performedDateTime,
                         _period_of(m.performedPeriod))
    if kind == "ServiceRequest":
        return ServiceRequest(m.id, m.status, m.intent, _concept_of(m.code), m.authoredOn)
    raise ValueError(f"not a type the rules read: {kind}")
