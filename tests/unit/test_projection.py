"""engine/projection.py's fast reader against fhir.resources, the reader of record: whenever ``read``
vouches for a record, fhir.resources accepts it too and reads the same values (``from_model``). Checked on
every record of a read type in the Synthea patients and the fixtures, and on mutations of them: every
element replaced by values of the wrong type or form, removed, or given an unknown key."""

from __future__ import annotations

import copy
import json
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from cds_service.admin.population import iter_bundle_files
from cds_service.engine import chart, projection

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"

WRONG_VALUES: list[Any] = [
    None, {}, [], [None], [{}], "", " ", "a  b", " a", "a ", "\u00a0", "\u200b", "x\ud800", "\x1c", "a\n", "é",
    0, -1, 1.5, 1e300, True, False, "1.5", {"foo": 1}, ["x"], [{"foo": 1}],
    "2020", "2020-13", "2020-02-30", "2020-01-01", "2020-01-01T10:00:00", "2020-01-01T10:00Z",
    "2020-01-01T25:00:00Z", "2020-01-01T10:00:60Z", "2020-01-01T10:00:00.1234567+02:00", "2020-01-01T10:00:00-05:00",
    "0000-01-01", "x" * 65, "http://loinc.org", "final",
]


def _records() -> Iterator[tuple[str, dict]]:
    """(where, raw) for every resource of a read type in the fixtures and the Synthea patients."""
    for folder in sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists()):
        body = json.loads((folder / "request.json").read_text())
        for raw in _resources(body.get("prefetch") or {}, (body.get("context") or {}).get("draftOrders")):
            yield folder.name, raw
    synthea = Path(__file__).resolve().parents[3] / "shared" / "data" / "synthea-r4"
    if synthea.is_dir():
        for record in iter_bundle_files([synthea]):
            for raw in _resources(record.prefetch, None):
                yield record.source, raw


def _pruned_records() -> Iterator[tuple[str, dict]]:
    """The same, pruned to the elements the rules read (what the mutations below change)."""
    for where, raw in _records():
        yield where, chart._pruned(raw["resourceType"], raw)


def _resources(prefetch: dict, drafts: Any) -> Iterator[dict]:
    values = [*prefetch.values(), drafts]
    for value in values:
        if not isinstance(value, dict):
            continue
        entries = [e.get("resource") for e in value.get("entry") or [] if isinstance(e, dict)] \
            if value.get("resourceType") == "Bundle" else [value]
        for raw in entries:
            if isinstance(raw, dict) and raw.get("resourceType") in projection.READ_TYPES:
                yield raw


def _plain(value: Any) -> Any:
    """A record as nested tuples that tell apart what ``==`` would not: Decimal('1.0') and Decimal('1'),
    a date and a datetime (card text and dates are made from these)."""
    if is_dataclass(value):
        return (type(value).__name__, *(_plain(getattr(value, f.name)) for f in fields(value)))
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (Decimal, date, datetime)):
        return (type(value).__name__, str(value) if isinstance(value, Decimal) else value.isoformat())
    return value


def _verdict(raw: dict) -> tuple[str, Any]:
    """fhir.resources' reading of ``raw``: ("valid", its record) or ("invalid", the reason the chart gives)."""
    try:
        return "valid", _plain(projection.from_model(chart.validate_resource(raw["resourceType"], raw)))
    except chart.INVALID_RESOURCE as exc:
        return "invalid", chart.invalid_reason(exc)


def _check(raw: dict, where: str) -> bool:
    """Whether the fast reader vouched for ``raw``; fails the test if it did so wrongly."""
    record = projection.read(raw)
    if record is None:
        return False
    verdict = _verdict(raw)
    assert verdict == ("valid", _plain(record)), (where, raw)
    return True


def _mutants(raw: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, replacement) pairs: every element of ``raw`` replaced by each wrong value, removed (dict keys),
    and every object given an unknown key, an ``id`` and an ``extension``."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if path == () and key == "resourceType":
                continue
            yield from _mutants(value, (*path, key))
        for extra in ({"foo": 1}, {"id": "x"}, {"extension": [{"url": "urn:x", "valueString": "y"}]}):
            yield path, {**raw, **extra}
    elif isinstance(raw, list):
        for index, value in enumerate(raw):
            yield from _mutants(value, (*path, index))
        yield path, [*raw, None]
    if path:
        for wrong in WRONG_VALUES:
            yield path, wrong
        yield path, _REMOVE


_REMOVE = object()


def _apply(raw: dict, path: tuple, replacement: Any) -> dict:
    mutant = copy.deepcopy(raw)
    parent = mutant
    for step in path[:-1]:
        parent = parent[step]
    if not path:
        return replacement
    if replacement is _REMOVE:
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    else:
        parent[path[-1]] = replacement
    return mutant


def test_the_fast_reader_agrees_with_fhir_resources_on_every_record():
    for raw in EVERY_ELEMENT:
        assert _check(raw, "every element"), raw  # valid, and read fast
    seen = vouched = 0
    for where, raw in _records():  # whole, as sent: the fast reader looks only at the read elements
        seen += 1
        vouched += _check(raw, where)
    assert seen > 100
    assert vouched / seen > 0.95  # it pays: almost every real record is read without fhir.resources


_SUBJECT = {"reference": "Patient/p1", "display": "A Patient"}
_CONCEPT = {"coding": [{"system": "http://snomed.info/sct", "version": "2024", "code": "1", "display": "One",
                        "userSelected": True}], "text": "one"}
_PERIOD = {"start": "2020-01-01T10:00:00+01:00", "end": "2020-02"}
# Every element the fast reader reads, in one record per type (the real ones leave some out).
EVERY_ELEMENT = [
    {"resourceType": "Patient", "id": "p1", "birthDate": "1950-06-01",
     "extension": [{"url": "urn:a", "extension": [{"url": "b", "valueCoding": _CONCEPT["coding"][0]}]},
                   {"url": "urn:c", "valueAddress": {"use": "home", "line": ["1 Main St"], "city": "X",
                                                     "postalCode": "1"}},
                   {"url": "urn:d", "valueDecimal": 0.5}, {"url": "urn:e", "valueBoolean": True},
                   {"url": "urn:f", "valueDateTime": "2020-01-01T00:00:00Z"}]},
    {"resourceType": "Condition", "id": "c1", "subject": _SUBJECT, "code": _CONCEPT, "clinicalStatus": _CONCEPT,
     "verificationStatus": _CONCEPT, "bodySite": [_CONCEPT, {"text": "left leg"}], "onsetPeriod": _PERIOD,
     "recordedDate": "2020-01-02", "abatementString": "gone"},
    {"resourceType": "Condition", "id": "c2", "subject": _SUBJECT, "code": _CONCEPT, "onsetDateTime": "2019",
     "abatementPeriod": _PERIOD},
    {"resourceType": "Observation", "id": "o1", "subject": _SUBJECT, "status": "final", "code": _CONCEPT,
     "effectivePeriod": _PERIOD, "issued": "2020-01-01T10:00:00.123Z", "interpretation": [_CONCEPT],
     "valueQuantity": {"value": 3, "comparator": "<", "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                       "code": "mmol/L"}},
    {"resourceType": "MedicationRequest", "id": "m1", "subject": _SUBJECT, "status": "active", "intent": "order",
     "medicationReference": {"reference": "Medication/x", "type": "Medication"}, "authoredOn": "2020-01-01"},
    {"resourceType": "MedicationStatement", "id": "s1", "subject": _SUBJECT, "status": "active",
     "medicationCodeableConcept": _CONCEPT, "effectiveDateTime": "2020-01-01T10:00:00-05:00",
     "dateAsserted": "2020-01"},
    {"resourceType": "Medication", "id": "x", "code": _CONCEPT},
    {"resourceType": "Procedure", "id": "r1", "subject": _SUBJECT, "status": "completed", "category": _CONCEPT,
     "code": _CONCEPT, "performedPeriod": _PERIOD},
    {"resourceType": "ServiceRequest", "id": "q1", "subject": _SUBJECT, "status": "active", "intent": "order",
     "code": _CONCEPT, "authoredOn": "2020-01-01T10:00:00Z"},
]


def _samples() -> list[tuple[str, dict]]:
    """The records above, and the richest real record of each shape (type and elements present)."""
    by_shape: dict[tuple, tuple[str, dict]] = {}
    for where, raw in _pruned_records():
        shape = (raw["resourceType"], *sorted(raw))
        if shape not in by_shape or len(json.dumps(raw)) > len(json.dumps(by_shape[shape][1])):
            by_shape[shape] = (where, raw)
    return [("every element", raw) for raw in EVERY_ELEMENT] + list(by_shape.values())


@pytest.mark.parametrize("where,raw", _samples(), ids=lambda value: value["resourceType"] if isinstance(value, dict) else "")
def test_the_fast_reader_never_vouches_for_what_fhir_resources_refuses(where, raw):
    vouched = doubted = 0
    for path, replacement in _mutants(raw):
        mutant = _apply(raw, path, replacement)
        if _check(mutant, f"{where} {path} -> {replacement!r}"):
            vouched += 1
        else:
            doubted += 1
    assert vouched and doubted  # both sides of the line were exercised


def test_doubted_records_still_get_fhir_resources_verdict():
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}}
    assert projection.read(condition) is not None
    bad = {**condition, "clinicalStatus": "active"}  # must be a CodeableConcept
    assert projection.read(bad) is None
    assert _verdict(bad) == ("invalid", "invalid FHIR R4 (clinicalStatus: json_invalid)")
    odd_but_valid = {**condition, "code": {"coding": [{"system": "", "code": "1"}]}}  # an empty uri passes FHIR's \S*
    assert projection.read(odd_but_valid) is None
    assert _verdict(odd_but_valid)[0] == "valid"
    assert chart.read_resource("Condition", odd_but_valid).code.coding[0].system == ""


def test_the_fast_reader_knows_exactly_the_elements_the_chart_reads():
    for kind, shape in projection._SHAPES.items():
        assert {"resourceType", *shape.readers, *shape.refused} == chart.READ_ELEMENTS[kind], kind
    assert projection.READ_TYPES == set(chart.READ_TYPES)
