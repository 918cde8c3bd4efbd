"""The chart as the service reads it (projection records of only the elements facts.py reads, the fast
reader first, fhir.resources for what it doubts; nothing no rule could use validated) against the old
full-model path (``chart.FULL_MODELS``: every resource of a read type validated whole by fhir.resources,
none left out): the same cards, facts and provenance on every hand-worked fixture and Synthea patient.

Skipped records, revised to STATUS.md (rev) "a record no rule could use need not be fully validated": the
service skips a subset of what the full-model path skips, and each record only the full-model path skips
is one no rule could use (an Observation of a code no rule reads or a quantity older than its window, a
Procedure or ServiceRequest that is neither a surgery nor a venous duplex). An invalid record the rules
read is still skipped, for the reason fhir.resources gives.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from cds_service.admin.population import iter_bundle_files, latest_record_date
from cds_service.clock import fixed_clock
from cds_service.engine import chart
from cds_service.engine.pipeline import Engine
from cds_service.hooks.request import parse_hook_request

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"
SERVICES = {"patient-view": "leg-cramp-patient-view", "order-select": "leg-cramp-order-select",
            "order-sign": "leg-cramp-order-sign"}  # fhir_fixtures/order-* are order-hook requests


def _run(body: dict, now: str, full_models: bool) -> dict[str, Any]:
    engine = Engine.default(clock=fixed_clock(now))
    original = chart.FULL_MODELS
    chart.FULL_MODELS = full_models
    try:
        request = parse_hook_request(body)
        result = engine.run(engine.registry.get(SERVICES[request.hook]), request)
    finally:
        chart.FULL_MODELS = original
    cards = [{k: v for k, v in card.items() if k != "uuid"} for card in result.response["cards"]]
    for card in cards:
        for suggestion in card.get("suggestions", []):
            suggestion.pop("uuid", None)
    facts = asdict(result.facts)
    skipped = facts.pop("skipped")
    return {"cards": cards, "facts": facts, "skipped": skipped, "engine": engine}


def _resources(body: dict) -> Iterator[dict]:
    for value in (body.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            yield from (e["resource"] for e in value.get("entry") or [] if isinstance(e, dict)
                        and isinstance(e.get("resource"), dict))
        elif isinstance(value, dict):
            yield value


def _codings(raw: dict, *elements: str) -> set[tuple[Any, Any]]:
    found = set()
    for element in elements:
        value = raw.get(element)
        for concept in value if isinstance(value, list) else [value]:
            if isinstance(concept, dict) and isinstance(concept.get("coding"), list):
                found |= {(c.get("system"), c.get("code")) for c in concept["coding"] if isinstance(c, dict)}
    return found


def _no_rule_could_use(raw: dict, engine: Engine, today: date) -> bool:
    """Independently of chart.py: no code a rule reads, or (a quantity) dated before every window it has."""
    ruleset = engine.ruleset
    kind = raw.get("resourceType")
    if kind in ("Procedure", "ServiceRequest"):
        return not _codings(raw, "code", "category") & ruleset.procedure_codes
    if kind != "Observation":
        return False
    kinds = {ruleset.observation_codes[c] for c in _codings(raw, "code") if c in ruleset.observation_codes}
    if not kinds:
        return True
    when = raw.get("effectiveDateTime") or (raw.get("effectivePeriod") or {}).get("start") or raw.get("issued")
    if "valueQuantity" not in raw or "valueCodeableConcept" in raw or not isinstance(when, str):
        return False
    windows = [getattr(ruleset.spec.observations, k).window_days for k in kinds]
    return date.fromisoformat(when[:10]) < today - timedelta(days=max(windows) + 1)


def _assert_same_answers(body: dict, now: str, where: str) -> None:
    new, old = _run(body, now, False), _run(body, now, True)
    assert new["facts"] == old["facts"], where
    only_old = Counter(map(json.dumps, old["skipped"])) - Counter(map(json.dumps, new["skipped"]))
    assert not Counter(map(json.dumps, new["skipped"])) - Counter(map(json.dumps, old["skipped"])), where
    by_identity = {(r.get("resourceType"), r.get("id")): r for r in _resources(body)}
    today = date.fromisoformat(now[:10])
    for record in only_old:
        skipped = json.loads(record)
        raw = by_identity[(skipped["resource_type"], skipped["resource_id"])]
        assert _no_rule_could_use(raw, new["engine"], today), (where, skipped)
    if not only_old:  # the cards say how many records could not be read: the same count, the same cards
        assert new["cards"] == old["cards"], where
    else:
        assert [c["summary"] for c in new["cards"]] == [c["summary"] for c in old["cards"]], where


def _cases():
    for folder in sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists()):
        now = yaml.safe_load((folder / "expected.yaml").read_text())["now"]
        yield folder.name, json.loads((folder / "request.json").read_text()), now


@pytest.mark.parametrize("name,body,now", list(_cases()), ids=[c[0] for c in _cases()])
def test_the_service_answers_like_the_full_model_path_on_fixtures(name, body, now):
    _assert_same_answers(body, now, name)


@pytest.mark.synthea
def test_the_service_answers_like_the_full_model_path_on_synthea(shared_dir):
    records = list(iter_bundle_files([shared_dir / "data" / "synthea-r4"]))
    assert records
    for record in records:
        _assert_same_answers(record.hook_request(), f"{latest_record_date(record)}T12:00:00Z", record.source)


def test_records_no_rule_could_use_are_not_validated():
    from support.chart_builder import NOW, hook_request, observation

    unread = observation("8302-2", value=170.0, unit="cm")  # body height: no rule reads it
    unread["valueQuantity"]["value"] = "tall"
    body = hook_request([unread])
    new, old = _run(body, NOW, False), _run(body, NOW, True)
    assert new["skipped"] == []
    assert [s["resource_id"] for s in old["skipped"]] == [unread["id"]]
    _assert_same_answers(body, NOW, "unread observation")


SUBJECT = {"reference": "Patient/p1"}
CODE = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R25.2"}]}
# A record the rules read, with an element they read gone wrong: skipped, for fhir.resources' reason.
INVALID_READ_RECORDS = {
    "clinicalStatus not a CodeableConcept": ("conditions", {
        "resourceType": "Condition", "id": "c1", "subject": SUBJECT, "code": CODE, "clinicalStatus": "active"}),
    "onset date not a date": ("conditions", {
        "resourceType": "Condition", "id": "c2", "subject": SUBJECT, "code": CODE, "onsetDateTime": "2020-02-30"}),
    "coding code with two spaces": ("conditions", {
        "resourceType": "Condition", "id": "c3", "subject": SUBJECT,
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R25.2  x"}]}}),
    "Condition without subject": ("conditions", {"resourceType": "Condition", "id": "c4", "code": CODE}),
    "potassium value not a number": ("observations", {
        "resourceType": "Observation", "id": "o1", "status": "final", "subject": SUBJECT,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]}, "effectiveDateTime": "2026-06-01",
        "valueQuantity": {"value": True, "unit": "mmol/L"}}),
    "two medications": ("medicationRequests", {
        "resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order", "subject": SUBJECT,
        "medicationCodeableConcept": {"text": "furosemide"}, "medicationReference": {"reference": "Medication/x"}}),
    "status missing": ("medicationRequests", {
        "resourceType": "MedicationRequest", "id": "m2", "intent": "order", "subject": SUBJECT,
        "medicationCodeableConcept": {"text": "furosemide"}}),
    "text not ASCII and the coding not an object": ("conditions", {
        "resourceType": "Condition", "id": "c5", "subject": SUBJECT,
        "code": {"coding": ["R25.2"], "text": "crampes nocturnes, côté gauche"}}),
    # A code that cannot be looked up (an array, an object) is no reason to leave a record out unvalidated
    # (it was a 500: the chart's code lookup raised TypeError).
    "Observation coding code an array": ("observations", {
        "resourceType": "Observation", "id": "o2", "status": "final", "subject": SUBJECT,
        "code": {"coding": [{"system": "http://loinc.org", "code": ["2823-3"]}]}, "effectiveDateTime": "2026-06-01",
        "valueQuantity": {"value": 3.1, "unit": "mmol/L"}}),
    "Procedure coding code an object": ("procedures", {
        "resourceType": "Procedure", "id": "p2", "status": "completed", "subject": SUBJECT,
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": {"value": "387713003"}}]},
        "performedDateTime": "2026-06-01"}),
}


@pytest.mark.parametrize("case", sorted(INVALID_READ_RECORDS))
def test_an_invalid_record_the_rules_read_is_still_reported(case):
    key, record = INVALID_READ_RECORDS[case]
    body = {
        "hook": "patient-view", "hookInstance": "x",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"},
            "conditions": {"resourceType": "Bundle", "type": "searchset", "entry": []},
            key: {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": record}]},
        },
    }
    new, old = _run(body, "2026-06-15T12:00:00Z", False), _run(body, "2026-06-15T12:00:00Z", True)
    assert [s["resource_id"] for s in new["skipped"]] == [record["id"]]
    assert new["skipped"] == old["skipped"]  # the same reason: fhir.resources'
    assert new["cards"] == old["cards"]


def test_stale_quantity_observations_are_not_validated_but_recent_ones_are():
    from support.chart_builder import hook_request, observation

    old = observation("39156-5", value=31.0, unit="kg/m2", age=400)   # BMI outside its 365-day window
    recent = observation("39156-5", value=32.0, unit="kg/m2", age=20)
    old["valueQuantity"]["value"] = "not a number"  # invalid: whole validation would report it
    body = hook_request([old, recent])
    engine = Engine.default(clock=fixed_clock("2026-06-15T12:00:00Z"))
    result = engine.run(engine.registry.get("leg-cramp-patient-view"), parse_hook_request(body))
    assert result.facts.observations["bmi"].value == 32
    assert result.facts.skipped == []  # the stale one was never validated
    assert chart._raw_date({"effectivePeriod": {"start": "2020-02-03T10:00:00Z"}}).isoformat() == "2020-02-03"
    assert chart._raw_date({"effectiveDateTime": "garbage"}) is None


def test_each_rule_set_reads_the_same_concept_its_own_way():
    """facts.py remembers a concept's reading per rule set: a reloaded rule set (here without R25.2 in
    leg_cramp) reads the very same chart afresh, and the first one still reads it as before."""
    from importlib import resources

    from cds_service.engine.drugs import DrugTable
    from cds_service.ruleset.loader import parse_ruleset
    from support.chart_builder import NOW, condition, hook_request

    text = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text()
    data = yaml.safe_load(text)
    data["value_sets"]["leg_cramp"]["codes"].remove("icd10cm|R25.2")
    body = hook_request([condition("R25.2")])
    drugs = DrugTable.load_default()
    engines = [Engine(parse_ruleset(t, "x.yaml"), drugs, clock=fixed_clock(NOW)) for t in (text, yaml.safe_dump(data))]
    for _ in range(2):
        documented = []
        for engine in engines:
            result = engine.run(engine.registry.get("leg-cramp-patient-view"), parse_hook_request(body))
            documented.append(result.facts.has("documented_leg_cramps"))
        assert documented == [True, False]
