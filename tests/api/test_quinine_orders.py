"""Quinine at ordering, through HTTP (RULES.md, Order hooks): a draft quinine order gets the
``quinine-for-cramps`` warning on order-select and order-sign, for anyone, however the order names it:

- by its ingredient (RxCUI 9071), code only;
- by EVERY quinine concept of rxnorm-sandbox-medications.csv (clinical and branded drugs, components,
  dose-form groups), code only: no display, no text, as a CDS client may send it;
- by its brand (Qualaquin) in the text or a display;
- by ``coding.display`` alone (no code; with and without a system).

The quinine concepts are picked from the CSV by their names here (whole words "quinine" / "Qualaquin"),
not from the drug table, so a concept the table missed fails. Look-alikes (quinapril, quinidine) do not fire.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest

from support.card_kinds import card_id
from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app
from support.hook_requests import NOW, PATIENT_ID, minimal_request, patient_resource, searchset

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
SANDBOX_CSV = Path(__file__).resolve().parents[3] / "shared" / "clinical" / "rxnorm-sandbox-medications.csv"
URLS = {"order-select": "/cds-services/leg-cramp-order-select", "order-sign": "/cds-services/leg-cramp-order-sign"}
HOOKS = sorted(URLS)
QUININE_CARD = "quinine-for-cramps"


def _quinine_concepts() -> list[tuple[str, str]]:
    if not SANDBOX_CSV.is_file():
        return []
    with SANDBOX_CSV.open(newline="", encoding="utf-8") as f:
        return [(r["rxcui"], r["name"]) for r in csv.DictReader(f)
                if re.search(r"\b(?:quinine|qualaquin)\b", r["name"], re.IGNORECASE)]


QUININE_CONCEPTS = _quinine_concepts()


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(NOW))
    return app.test_client()


def _order(concept: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": "q1", "status": "draft", "intent": "order",
            "medicationCodeableConcept": concept, "subject": {"reference": f"Patient/{PATIENT_ID}"}}


def _request(hook: str, concept: dict[str, Any]) -> dict[str, Any]:
    order = _order(concept)
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": PATIENT_ID,
                               "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                               "entry": [{"resource": order}]}}
    if hook == "order-select":
        context["selections"] = [f"MedicationRequest/{order['id']}"]
    # no leg cramps on record: the quinine warning is for anyone
    return minimal_request(hook=hook, context=context,
                           prefetch={"patient": patient_resource(), "conditions": searchset()})


def _card_ids(client, hook: str, concept: dict[str, Any]) -> list[str]:
    response = client.post(URLS[hook], json=_request(hook, concept))
    assert response.status_code == 200, response.get_data(as_text=True)
    return [card_id(card) for card in response.get_json()["cards"]]


def _quinine_card(client, hook: str, concept: dict[str, Any]) -> dict[str, Any]:
    response = client.post(URLS[hook], json=_request(hook, concept))
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = [c for c in response.get_json()["cards"] if card_id(c) == QUININE_CARD]
    assert len(cards) == 1, response.get_data(as_text=True)
    return cards[0]


def test_quinine_csv_holds_the_concepts_the_issue_names():
    if not SANDBOX_CSV.is_file():
        pytest.skip("../shared/clinical not present")
    codes = {code for code, _name in QUININE_CONCEPTS}
    assert {"997157", "198186", "997010", "997012", "1164191", "1185312"} <= codes
    assert len(codes) == 14


@pytest.mark.parametrize("hook", HOOKS)
def test_quinine_by_ingredient_code(client, hook):
    card = _quinine_card(client, hook, {"coding": [{"system": RX, "code": "9071"}]})
    assert card["indicator"] == "warning"


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("rxcui, name", QUININE_CONCEPTS, ids=[f"{c}-{n}" for c, n in QUININE_CONCEPTS])
def test_quinine_by_every_sandbox_concept_code_only(client, hook, rxcui, name):
    card = _quinine_card(client, hook, {"coding": [{"system": RX, "code": rxcui}]})
    assert card["indicator"] == "warning"


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("concept", [
    {"text": "Qualaquin 324 mg capsule"},
    {"coding": [{"system": RX, "display": "Qualaquin"}]},
    {"coding": [{"system": RX, "code": "000000", "display": "QUALAQUIN 324 MG"}]},  # unknown code: by its name
], ids=["text", "display", "unknown-code-display"])
def test_quinine_by_brand(client, hook, concept):
    assert QUININE_CARD in _card_ids(client, hook, concept)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("coding", [
    {"system": RX, "display": "Quinine Sulfate 260 MG Oral Tablet"},
    {"display": "quinine sulfate 324 MG Oral Capsule"},
], ids=["rxnorm-display", "display-no-system"])
def test_quinine_by_coding_display_alone(client, hook, coding):
    assert QUININE_CARD in _card_ids(client, hook, {"coding": [coding]})


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("concept", [
    {"coding": [{"system": RX, "code": "310796"}]},  # Hydrochlorothiazide 12.5 MG / quinapril 10 MG Oral Tablet
    {"text": "Quinapril 10 MG Oral Tablet"},
    {"text": "Quinidine Sulfate 200 MG Oral Tablet"},
], ids=["quinapril-code", "quinapril-text", "quinidine-text"])
def test_quinine_look_alikes_do_not_fire(client, hook, concept):
    assert _card_ids(client, hook, concept) == []
