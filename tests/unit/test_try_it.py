"""Try it (admin/try_it.py): a patient under the active rule set and a draft, side by side.

Fixture 02-risk-below-threshold (fhir_fixtures/02-.../expected.yaml, worked by hand from RULES.md): a
45-year-old man without cramps whose contributors add to 2.5 (statin 0.5 + diabetes 1 + current smoker 0.5 +
high cholesterol 0.5) < 3: no card under the bundled rule set. A draft with evaluation C's threshold lowered to
2.5 must show elevated-cramp-risk (info) with that score and those four items, and no lab suggestion (no
diuretic, CKD or liver disease).
"""

from __future__ import annotations

import json
from datetime import date
from importlib import resources

import pytest

from cds_service.admin import try_it
from cds_service.admin.try_it import TryError, list_fixtures, patient_from_fhir, patient_from_fixture, \
    patient_from_upload, try_patient
from cds_service.ruleset.loader import load_default_ruleset, parse_ruleset
from cds_service.settings import Settings
from support.app import REPO, SHARED_DIR
from support.fhir_server import LoopbackFhir

FIXTURE = "02-risk-below-threshold"
C_ITEMS = {"statin", "diabetes", "current_smoker", "high_cholesterol"}


def _draft(threshold: str = "2.5", version: str = "2026.12.2"):
    text = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")
    head, contributors = text.split("contributors:                   # evaluation C\n  threshold: 3\n", 1)
    text = f"{head}contributors:                   # evaluation C\n  threshold: {threshold}\n{contributors}"
    text = text.replace('version: "2026.12.1"', f'version: "{version}"', 1)
    return parse_ruleset(text, "draft")


ACTIVE = load_default_ruleset()
DRAFT = _draft()


def _side_by_side(source):
    return try_patient(source, [("Active", ACTIVE), ("Draft", DRAFT)])


def test_the_fixtures_are_listed_by_name_with_their_day_and_expected_cards() -> None:
    fixtures = {f.name: f for f in list_fixtures()}
    assert FIXTURE in fixtures and not any(name.startswith("order-") for name in fixtures)
    assert fixtures[FIXTURE].as_of == date(2026, 6, 15) and fixtures[FIXTURE].expected_cards == ()
    assert fixtures["03-elevated-risk-thiazide-code"].expected_cards == ("elevated-cramp-risk",)
    assert "2.5 < 3" in fixtures[FIXTURE].scenario


def test_a_lowered_threshold_shows_the_card_the_active_rules_do_not() -> None:
    result = _side_by_side(patient_from_fixture(FIXTURE))
    active, draft = result.columns
    assert result.as_of == date(2026, 6, 15)  # the fixture's day, not today
    assert result.fixture is not None and result.fixture.expected_cards == ()
    assert (active.version, draft.version) == ("2026.12.1", "2026.12.2")
    assert active.cards == () and active.error is None
    assert draft.card_ids == ("elevated-cramp-risk",)
    [card] = draft.cards
    assert card["indicator"] == "info" and not card.get("suggestions")
    assert result.differs
    # the explanation: C's score against each threshold, its items with their points
    c_active = {e.key: e for e in active.explanation.evaluations}["contributors"]
    c_draft = {e.key: e for e in draft.explanation.evaluations}["contributors"]
    assert (c_active.score, c_active.threshold, c_active.fired) == (2.5, 3, False)
    assert (c_draft.score, c_draft.threshold, c_draft.fired) == (2.5, 2.5, True)
    assert {i.item: i.points for i in c_draft.items} == {"statin": 0.5, "diabetes": 1, "current_smoker": 0.5,
                                                          "high_cholesterol": 0.5}
    assert all(i.sources for i in c_draft.items)  # each with its record
    # rendered as a CDS client shows it, and the explanation as HTML
    [html] = draft.cards_html
    assert 'data-card-id="elevated-cramp-risk"' in html and html.startswith('<article class="card info"')
    assert 'class="explanation"' in draft.explanation_html and "Condition/c1" in draft.explanation_html


def test_the_explanation_says_what_could_not_be_checked() -> None:
    # fixture 21 sends no medicationStatements (fhir_fixtures/README.md): that key is "not checked"
    result = try_patient(patient_from_fixture("21-untreated-dvt-anticoagulant-not-checked"), [("Active", ACTIVE)])
    [column] = result.columns
    assert column.card_ids == ("untreated-dvt",)
    assert "medicationStatements" in column.explanation.not_checked
    assert "medicationStatements" in column.explanation_html


def test_the_same_rules_on_both_sides_do_not_differ() -> None:
    result = try_patient(patient_from_fixture("03-elevated-risk-thiazide-code"), [("Active", ACTIVE), ("Draft", ACTIVE)])
    assert [c.card_ids for c in result.columns] == [("elevated-cramp-risk",)] * 2
    assert not result.differs


def test_an_unknown_fixture_name_is_refused_never_read_as_a_path() -> None:
    for name in ("../README.md", "nope", "/etc/passwd"):
        with pytest.raises(TryError) as error:
            patient_from_fixture(name)
        assert error.value.field == "fixture"


def test_an_uploaded_hook_request_and_an_uploaded_bundle() -> None:
    body = (REPO / "fhir_fixtures" / FIXTURE / "request.json").read_bytes()
    source = patient_from_upload(body, "../../secret/02.json")
    assert source.label == "file 02.json"
    assert _side_by_side(source).columns[1].card_ids == ("elevated-cramp-risk",)
    synthea = sorted((SHARED_DIR / "data" / "synthea-r4").glob("*.json"))[0]
    bundle = patient_from_upload(synthea.read_bytes(), synthea.name)
    result = try_patient(bundle, [("Active", ACTIVE)], as_of=date(2026, 6, 15))
    assert result.columns[0].error is None and result.columns[0].explanation is not None


@pytest.mark.parametrize(("data", "message"), [
    (b"", "the file is empty"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[" * 500 + b"]" * 500, "nests deeper than 100"),
    (b'{"resourceType": "Patient"}', "field 'hook' is missing"),
    (b'{"hook": "order-select"}', "field 'hook' is 'order-select'"),
    (b'{"resourceType": "Bundle", "type": "collection", "entry": []}', "expected one Patient, found 0"),
    (json.dumps({"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1"}}).encode(),
     "context.patientId"),
])
def test_an_upload_that_cannot_be_read_names_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(TryError) as error:
        patient_from_upload(data, "bad.json")
    assert error.value.field == "upload"
    assert message in error.value.message


def test_an_upload_over_the_limit_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(try_it, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(TryError, match="at most 10 bytes"):
        patient_from_upload(b'{"hook": "patient-view"}', "big.json")


def test_a_fhir_server_off_the_allowlist_is_refused_before_any_request() -> None:
    settings = Settings(fhir_server_allowlist=("https://ehr.example.org/fhir",))
    with pytest.raises(TryError) as error:
        patient_from_fhir("https://evil.example.com/fhir", "p1", None, settings)
    assert error.value.field == "fhir_url" and "allowlist" in error.value.message
    assert "https://ehr.example.org/fhir" in error.value.message  # says what is allowed
    with pytest.raises(TryError) as error:
        patient_from_fhir("https://ehr.example.org/fhir", " ", None, settings)
    assert error.value.field == "patient_id"


def test_a_patient_read_from_a_fhir_server_through_the_prefetch_templates() -> None:
    body = json.loads((REPO / "fhir_fixtures" / FIXTURE / "request.json").read_text())
    prefetch = body["prefetch"]
    resources_ = [prefetch["patient"]] + [e["resource"] for key, value in prefetch.items() if key != "patient"
                                          for e in value.get("entry", [])]
    with LoopbackFhir(resources_, require_token="try-token-1") as server:
        settings = Settings(fhir_server_allowlist=(server.base_url,), fhir_allow_http_loopback=True,
                            development_mode=True)
        source = patient_from_fhir(server.base_url, "fixture-02", "try-token-1", settings)
        result = try_patient(source, [("Active", ACTIVE), ("Draft", DRAFT)], as_of=date(2026, 6, 15))
        paths = [path for path, _ in server.requests]
        tokens = {headers.get("Authorization") for _, headers in server.requests}
    assert [c.card_ids for c in result.columns] == [(), ("elevated-cramp-risk",)]
    assert any(p.startswith("/fhir/Patient/fixture-02") for p in paths)
    assert any(p.startswith("/fhir/Condition?patient=fixture-02") for p in paths)
    assert tokens == {"Bearer try-token-1"}
    assert "try-token-1" not in repr(source)


def test_a_fhir_server_that_refuses_the_token_gives_an_error_column_not_an_exception() -> None:
    with LoopbackFhir([], require_token="right") as server:
        settings = Settings(fhir_server_allowlist=(server.base_url,), fhir_allow_http_loopback=True,
                            development_mode=True)
        result = try_patient(patient_from_fhir(server.base_url, "p1", "wrong", settings), [("Active", ACTIVE)],
                             as_of=date(2026, 6, 15))
    [column] = result.columns
    assert column.error and column.error.startswith("412") and "patient" in column.error
