"""Issue 11 item 9: never an all-clear over incomplete data, with the REAL paging of a FHIR server.

sekmet-fhir (tests/support/fhir_server.py) pages searches at 20, ordered by id. A patient has 31 Conditions: 29
fillers and, on page 2, an acute DVT (a critical card). The client sends page 1 of the Condition search as
the server returned it, with its ``next`` link (as the CDS Hooks Sandbox did), and every other key whole.

(a) fhirServer given and allowlisted: page 2 is read, the DVT card fires;
(b) fhirServer absent or not on the allowlist: no card fires on page 1, so 412 naming ``conditions``
    (before the fix: 200 ``{"cards": []}``), counted in metrics and logged;
(c) page 1 already holds a firing card: 200 with it, and the card says the data may be incomplete.

Skipped with a clear message when sekmet-fhir can't be installed, unless CRAMP_REQUIRE_FHIR_SERVER=1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from support.card_kinds import card_id, explanation
from support.hook_requests import searchset
from support.fhir_server import FhirServerUnavailable, SekmetServer, ensure_fhir_venv
from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app

pytestmark = pytest.mark.fhir_server

NOW = "2026-06-15T12:00:00Z"
SERVICE_URL = "/cds-services/leg-cramp-patient-view"
FHIR_JSON = {"Accept": "application/fhir+json"}
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
INCOMPLETE_NOTE = "Data may be incomplete (more pages were not read): "
OPTIONAL_KEYS = ("medicationRequests", "medicationStatements", "observations", "procedures", "serviceRequests")


def condition(patient_id: str, number: int, code: str | None = None, text: str = "") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": f"{patient_id}-c{number:02d}",  # the server orders by id: c00..c19 on page 1, c20..c30 on page 2
        "subject": {"reference": f"Patient/{patient_id}"},
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "code": {"text": text or f"Routine follow-up {number}"},
        "onsetDateTime": "2026-06-10",
        "recordedDate": "2026-06-10",
    }
    if code:
        resource["code"] = {"coding": [{"system": ICD10, "code": code, "display": text}]}
    return resource


def chart(patient_id: str, page_one_signs: bool) -> list[dict[str, Any]]:
    """31 Conditions; c25 is an acute DVT of the right leg (page 2). With ``page_one_signs``, c00/c01 are
    two recent right-leg signs (swelling, pain): a possible-DVT card from page 1 alone."""
    conditions = [condition(patient_id, n) for n in range(31)]
    conditions[25] = condition(patient_id, 25, "I82.401", "Acute embolism and thrombosis of deep veins of right leg")
    if page_one_signs:
        conditions[0] = condition(patient_id, 0, "R22.41", "Localized swelling, right lower limb")
        conditions[1] = condition(patient_id, 1, "M79.661", "Pain in right lower leg")
    patient = {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1959-02-11"}
    return [patient, *conditions]


@pytest.fixture(scope="module")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        server = SekmetServer(ensure_fhir_venv(), tmp_path_factory.mktemp("sekmet-paging")).start()
    except FhirServerUnavailable as exc:
        if os.environ.get("CRAMP_REQUIRE_FHIR_SERVER") == "1":
            pytest.fail(f"no FHIR server (sekmet-fhir): {exc} [CRAMP_REQUIRE_FHIR_SERVER=1]")
        pytest.skip(f"no FHIR server (sekmet-fhir): {exc} (run tools/setup-fhir-server)")
    try:
        for patient_id, signs in (("paged-dvt", False), ("paged-signs", True)):
            entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                       for r in chart(patient_id, signs)]
            loaded = requests.post(server.base_url, json={"resourceType": "Bundle", "type": "transaction",
                                                          "entry": entries},
                                   headers={"Content-Type": "application/fhir+json"}, timeout=30)
            assert loaded.status_code == 200, loaded.text[:300]
        yield server.base_url
    finally:
        server.stop()


def page_one(base_url: str, patient_id: str) -> dict[str, Any]:
    """The Condition search's first page exactly as the server returns it (20 entries and a next link)."""
    bundle = requests.get(f"{base_url}/Condition?patient={patient_id}", headers=FHIR_JSON, timeout=10).json()
    assert bundle["total"] == 31 and len(bundle["entry"]) == 20
    assert any(link["relation"] == "next" for link in bundle["link"])
    assert f"{patient_id}-c25" not in [e["resource"]["id"] for e in bundle["entry"]]  # the DVT is on page 2
    return bundle


def hook_body(base_url: str, patient_id: str, fhir_server: str | None) -> dict[str, Any]:
    patient = requests.get(f"{base_url}/Patient/{patient_id}", headers=FHIR_JSON, timeout=10).json()
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": f"paging-{patient_id}",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": {"patient": patient, "conditions": page_one(base_url, patient_id),
                     **{key: searchset() for key in OPTIONAL_KEYS}},
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
    return body


def client_for(allowlist: tuple[str, ...]):
    settings = Settings(development_mode=True, database_url="sqlite://", fhir_server_allowlist=allowlist,
                        fhir_allow_http_loopback=True, fhir_deadline_seconds=20.0)
    return create_app(settings, clock=fixed_clock(NOW)).test_client()


def records(card: dict[str, Any]) -> set[str]:
    """The records a card's explanation cites (e.g. "Condition/paged-dvt-c25"), whatever its rule is called."""
    return {record for item in explanation(card)["items"] for record in item["records"]}


def critical_citing(cards: list[dict[str, Any]], condition_id: str) -> list[dict[str, Any]]:
    return [c for c in cards if c["indicator"] == "critical" and any(condition_id in r for r in records(c))]


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.startswith(name + "{") and all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def test_allowlisted_fhir_server_page_two_is_read_and_the_dvt_card_fires(sekmet: str) -> None:
    client = client_for((sekmet,))
    response = client.post(SERVICE_URL, json=hook_body(sekmet, "paged-dvt", sekmet))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    cards = response.get_json()["cards"]
    assert critical_citing(cards, "paged-dvt-c25"), [(card_id(c), records(c)) for c in cards]
    assert all(INCOMPLETE_NOTE not in card["detail"] for card in cards)


@pytest.mark.parametrize("fhir_server", ["absent", "not allowlisted"])
def test_incomplete_required_conditions_and_no_card_is_412_never_an_all_clear(
        sekmet: str, fhir_server: str, caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(("https://ehr.example.org/fhir",))  # the sekmet server is not on it
    body = hook_body(sekmet, "paged-dvt", None if fhir_server == "absent" else sekmet)
    before = client.get("/metrics").get_data(as_text=True)
    with caplog.at_level(logging.INFO):
        response = client.post(SERVICE_URL, json=body)
    assert response.status_code == 412, response.get_data(as_text=True)[:500]
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "incomplete"
    diagnostics = outcome["issue"][0]["diagnostics"]
    assert "conditions" in diagnostics and "incomplete" in diagnostics
    assert sekmet not in diagnostics and "paged-dvt" not in diagnostics  # no URL, no patient id
    after = client.get("/metrics").get_data(as_text=True)
    labels = {"key": "conditions", "outcome": "incomplete"}
    assert metric(after, "cramp_prefetch_keys_total", **labels) == metric(before, "cramp_prefetch_keys_total", **labels) + 1
    refusals = [r for r in caplog.records if r.getMessage() == "no card over incomplete required data: answered 412"]
    assert len(refusals) == 1 and refusals[0].incomplete == ["conditions"]


@pytest.mark.parametrize("fhir_server", ["absent", "not allowlisted"])
def test_a_card_found_on_page_one_is_returned_and_says_the_data_may_be_incomplete(sekmet: str, fhir_server: str) -> None:
    client = client_for(("https://ehr.example.org/fhir",))
    body = hook_body(sekmet, "paged-signs", None if fhir_server == "absent" else sekmet)
    response = client.post(SERVICE_URL, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    cards = response.get_json()["cards"]
    assert critical_citing(cards, "paged-signs-c00"), [(card_id(c), records(c)) for c in cards]
    assert not critical_citing(cards, "paged-signs-c25")  # page 2 was not read
    for card in cards:  # every card, not only the first
        assert INCOMPLETE_NOTE in card["detail"], card["detail"]


def test_page_one_with_its_signs_and_page_two_read_gives_the_acute_dvt(sekmet: str) -> None:
    """The same patient with the server allowlisted: page 2 adds the acute DVT, nothing is incomplete."""
    client = client_for((sekmet,))
    response = client.post(SERVICE_URL, json=hook_body(sekmet, "paged-signs", sekmet))
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert critical_citing(cards, "paged-signs-c25"), [(card_id(c), records(c)) for c in cards]
    assert all(INCOMPLETE_NOTE not in card["detail"] for card in cards)
