"""The engine reports to the observer it is given (engine/observer.py), and loads no web or metrics stack."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.chart_builder import NOW, condition, hook_request
from support.hook_requests import minimal_request, patient_resource, searchset

from cds_service.clock import fixed_clock
from cds_service.engine.observer import NULL_OBSERVER
from cds_service.engine.pipeline import Engine
from cds_service.errors import PreconditionFailed
from cds_service.ruleset.card_ids import POSSIBLE_DVT

TESTS = Path(__file__).resolve().parents[1]
PATIENT_VIEW = "leg-cramp-patient-view"


class Recorder:
    """Every event, as (method, arguments), in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        return lambda *args: self.events.append((name, args))

    def named(self, name: str) -> list[tuple]:
        return [args for event, args in self.events if event == name]


def _engine(observer) -> Engine:
    return Engine.default(clock=fixed_clock(NOW), observer=observer)


def test_engine_import_and_a_hook_call_load_neither_flask_nor_prometheus():
    script = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
from cds_service.engine.pipeline import Engine
from cds_service.clock import fixed_clock
from support.chart_builder import NOW, condition, hook_request
result = Engine.default(clock=fixed_clock(NOW)).invoke(
    "{PATIENT_VIEW}", hook_request([condition("M79.661", age=3), condition("R60.0", age=2),
                                    condition("L03.115", age=1)], birth_date="1950-01-01"))
loaded = sorted({{name.split(".")[0] for name in sys.modules}})
print(json.dumps({{"cards": len(result.response["cards"]), "loaded": loaded}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["cards"] >= 1  # the call really ran the rules and rendered a card
    assert "cds_service" in answer["loaded"]
    for stack in ("flask", "werkzeug", "prometheus_client", "sqlalchemy", "requests"):
        assert stack not in answer["loaded"], stack


def test_a_call_reports_evaluation_prefetch_outcomes_and_cards():
    recorder = Recorder()
    body = hook_request([condition("M79.661", age=3), condition("R60.0", age=2), condition("L03.115", age=1)],
                        birth_date="1950-01-01")
    result = _engine(recorder).invoke(PATIENT_VIEW, body)
    ((service, seconds),) = recorder.named("evaluation_finished")
    assert service == PATIENT_VIEW and 0 < seconds < 60
    ((_, outcomes),) = recorder.named("prefetch_keys_resolved")
    assert outcomes["patient"] == "sent" and outcomes["conditions"] == "sent"
    ((_, cards),) = recorder.named("cards_returned")
    assert cards == [(c["source"]["topic"]["code"], c["indicator"]) for c in result.response["cards"]]
    assert (POSSIBLE_DVT, "critical") in cards


def test_skipped_records_are_reported_by_resource_type():
    recorder = Recorder()
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/someone-else"}},
        {"resourceType": "Condition", "id": "c2", "onsetDateTime": 12})})
    _engine(recorder).invoke(PATIENT_VIEW, body)
    assert recorder.named("records_skipped") == [(PATIENT_VIEW, {"Condition": 2})]


def test_no_card_over_incomplete_required_data_is_reported_as_refused():
    recorder = Recorder()
    body = minimal_request(prefetch={"patient": patient_resource(),
                                     "conditions": searchset(next_url="https://ehr.example.org/fhir/Condition?page=2")})
    with pytest.raises(PreconditionFailed):
        _engine(recorder).invoke(PATIENT_VIEW, body)
    assert recorder.named("all_clear_refused") == [(PATIENT_VIEW, ("conditions",))]
    ((_, outcomes),) = recorder.named("prefetch_keys_resolved")
    assert outcomes["conditions"] == "incomplete"
    assert not recorder.named("cards_returned")


def test_finished_facts_cannot_be_changed():
    result = _engine(NULL_OBSERVER).invoke(PATIENT_VIEW, hook_request([condition("M79.661", age=3)]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.facts.medication_mapping = {}  # type: ignore[misc]
    assert isinstance(result.facts.conditions, tuple)
