"""The hand-worked scenario patients in fhir_fixtures/: each request answered with the cards its
expected.yaml gives (worked out by hand from RULES.md, arithmetic beside it), through HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from support.card_kinds import (assert_detail_cites_records, assert_no_resource_ids, card_id, explanation,
                                suggestion_kinds)
from cds_service.clock import fixed_clock
from cds_service.hooks.cards import CdsResponse
from cds_service.settings import Settings
from cds_service.web.app import create_app

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"
# cards whose expected `items` are the A pathways (acute_dvt | two_signs | sign_plus_wells)
DVT_CARDS = {"possible-dvt", "untreated-dvt"}
# patient-view scenarios only: the order-hook ones (order-*) run in test_order_hooks.py
SCENARIOS = sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists() and not p.name.startswith("order-"))


def _answer(folder: Path):
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    app = create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(expected["now"]))
    body = json.loads((folder / "request.json").read_text())
    response = app.test_client().post("/cds-services/leg-cramp-patient-view", json=body)
    return expected, response


def test_fixtures_cover_every_card_type():
    ids = set()
    for folder in SCENARIOS:
        ids |= {c["id"] for c in yaml.safe_load((folder / "expected.yaml").read_text())["cards"]}
    assert ids == {"untreated-dvt", "possible-dvt", "venous-duplex-workup", "conservative-care", "elevated-cramp-risk"}
    assert len(SCENARIOS) >= 12


def test_fixtures_cover_the_prefetch_variants_of_revision_2026_12():
    """Some scenarios send a Procedure / ServiceRequest (recent surgery, duplex on record), and some leave a
    medication or duplex key out (the "not checked" wordings of untreated-dvt and B)."""
    sent = {"procedures": 0, "serviceRequests": 0}
    omitted = set()
    for folder in SCENARIOS:
        prefetch = json.loads((folder / "request.json").read_text())["prefetch"]
        for key in sent:
            sent[key] += bool(prefetch.get(key, {}).get("entry"))
        omitted |= {"medicationRequests", "medicationStatements", "procedures", "serviceRequests"} - set(prefetch)
    assert all(sent.values()), sent
    assert omitted & {"medicationRequests", "medicationStatements"} and omitted & {"procedures", "serviceRequests"}


@pytest.mark.parametrize("folder", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_fixture_cards_match_hand_worked_expectation(folder: Path):
    expected, response = _answer(folder)
    assert response.status_code == expected.get("status", 200), response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    CdsResponse.model_validate(response.get_json())
    assert [card_id(c) for c in cards] == [c["id"] for c in expected["cards"]]
    for card, want in zip(cards, expected["cards"]):
        got = explanation(card)
        assert card["indicator"] == want["indicator"]
        if "score" in want:
            assert got["score"] == pytest.approx(want["score"])
        if want["id"] in DVT_CARDS:
            assert sorted(got["pathways"]) == sorted(want["items"])
        else:
            assert sorted(i["item"] for i in got["items"]) == sorted(want["items"])
        assert suggestion_kinds(card) == sorted(want.get("suggestions", []))
        if "summary" in want:
            assert card["summary"] == want["summary"]
        for phrase in want.get("detail_mentions", []):
            assert _squeezed(phrase) in _squeezed(card["detail"]), f"{phrase!r} not in the detail:\n{card['detail']}"


def _squeezed(text: str) -> str:
    """detail_mentions are matched ignoring case and whitespace (wording is the cards' business)."""
    return "".join(text.split()).casefold()


@pytest.mark.parametrize("folder", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_fixture_card_detail_cites_records_and_rule_set_version(folder: Path):
    """Records cited as a clinician reads them (code or name, age by birth year), never by resource id."""
    _, response = _answer(folder)
    body = json.loads((folder / "request.json").read_text())
    for card in response.get_json()["cards"]:
        assert_detail_cites_records(card, body)
        assert_no_resource_ids(card)
