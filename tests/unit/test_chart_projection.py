"""chart.py validates only what can matter: the elements facts.py reads (READ_ELEMENTS), and no quantity
Observation older than its window (Engine._stale_before). The answers must be the same as with every
resource validated whole, over the hand-worked fixtures and the Synthea patients, down to the facts,
their provenance and every record skipped."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

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


def _run(body: dict, now: str, project: bool) -> dict:
    engine = Engine.default(clock=fixed_clock(now))
    if not project:
        engine._quantity_windows = {}  # no observation left out for its age
    original = chart.PROJECT
    chart.PROJECT = project
    try:
        request = parse_hook_request(body)
        result = engine.run(engine.registry.get(SERVICES[request.hook]), request)
    finally:
        chart.PROJECT = original
    cards = [{k: v for k, v in card.items() if k != "uuid"} for card in result.response["cards"]]
    for card in cards:
        for suggestion in card.get("suggestions", []):
            suggestion.pop("uuid", None)
    return {"cards": cards, "facts": asdict(result.facts)}


def _cases():
    for folder in sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists()):
        now = yaml.safe_load((folder / "expected.yaml").read_text())["now"]
        yield folder.name, json.loads((folder / "request.json").read_text()), now


@pytest.mark.parametrize("name,body,now", list(_cases()), ids=[c[0] for c in _cases()])
def test_projection_answers_like_whole_validation_on_fixtures(name, body, now):
    assert _run(body, now, True) == _run(body, now, False)


@pytest.mark.synthea
def test_projection_answers_like_whole_validation_on_synthea(shared_dir):
    records = list(iter_bundle_files([shared_dir / "data" / "synthea-r4"]))
    assert records
    for record in records:
        now = f"{latest_record_date(record)}T12:00:00Z"
        body = record.hook_request()
        assert _run(body, now, True) == _run(body, now, False), record.source


def test_an_invalid_element_that_is_read_is_still_reported():
    body = {
        "hook": "patient-view", "hookInstance": "x",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"},
            "conditions": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
                "resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                "clinicalStatus": "active",  # must be a CodeableConcept
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R25.2"}]},
            }}]},
        },
    }
    for project in (True, False):
        engine = Engine.default(clock=fixed_clock("2026-06-15T12:00:00Z"))
        chart.PROJECT = project
        try:
            result = engine.run(engine.registry.get("leg-cramp-patient-view"), parse_hook_request(body))
        finally:
            chart.PROJECT = True
        assert [s.resource_id for s in result.facts.skipped] == ["c1"]


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
