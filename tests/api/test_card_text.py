"""Cards as a physician reads them (RULES.md, Every card; issue 13 item 3), through HTTP on the hand-worked
fixtures and on small charts built here:

- records named by display, code and date, the side for a sign in one leg, "recognised by its name" for a
  text match; the age as "age 67 (born 1959)"; never a resource id (ids stay in the extension);
- scores in words with what was needed; every line of a detail a whole sentence, a bullet, a heading or a
  table row; the missing data that could change the card; "could not be checked" naming only the keys the
  card's rule reads; incomplete or unreadable data said in words;
- a combination's ingredients each under its own class (Dyazide);
- the wording is typed content (cds_service/engine/card_text.py): a wrong key fails at load, naming file and field.
"""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from support.card_kinds import assert_no_resource_ids, card_id, explanation
from cds_service.clock import fixed_clock
from cds_service.engine.card_text import read_card_content
from cds_service.settings import Settings
from cds_service.web.app import create_app
from support.hook_requests import NOW, SERVICE_URL, minimal_request, patient_resource, searchset

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"
ALL_FIXTURES = sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists() and (p / "expected.yaml").exists())
URLS = {"patient-view": SERVICE_URL, "order-select": "/cds-services/leg-cramp-order-select",
        "order-sign": "/cds-services/leg-cramp-order-sign"}
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
# A detail line is a table row, a heading ("**Advice**"), or a sentence (maybe a bullet, maybe in italics):
# it starts with a capital, a digit or markup, and ends with a full stop, a colon (it introduces a table or
# list) or a closing parenthesis/markup after one.
_SENTENCE = re.compile(r"^(- )?[_*]*[A-Z0-9(\[].*[.:][)_*]*$")


def answer(body: dict[str, Any], now: str = NOW) -> list[dict[str, Any]]:
    app = create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(now))
    response = app.test_client().post(URLS[body.get("hook", "patient-view")], json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


def fixture_cards(name: str) -> list[dict[str, Any]]:
    expected = yaml.safe_load((FIXTURES / name / "expected.yaml").read_text())
    return answer(json.loads((FIXTURES / name / "request.json").read_text()), expected["now"])


def condition(code: str, onset: str, cid: str, display: str = "", **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p-zq-1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": ICD10, "code": code, "display": display or code}]},
            "onsetDateTime": onset, **fields}


CRAMPS = condition("R25.2", "2025-01-10", "cramps-1", "Cramp and spasm")
VARICOSE = condition("I83.90", "2024-03-01", "varicose-1", "Asymptomatic varicose veins of unspecified lower extremity")


def bad_lines(detail: str) -> list[str]:
    bad = []
    for line in detail.splitlines():
        line = line.strip()
        if not line or (line.startswith("|") and line.endswith("|")):
            continue
        if re.fullmatch(r"\*\*[^*]+\*\*", line):
            continue  # a heading
        if not _SENTENCE.match(line):
            bad.append(line)
    return bad


# ---------------------------------------------------------------- every fixture, every card

@pytest.mark.parametrize("folder", ALL_FIXTURES, ids=[p.name for p in ALL_FIXTURES])
def test_every_card_reads_in_whole_lines_without_resource_ids(folder: Path) -> None:
    for card in fixture_cards(folder.name):
        assert_no_resource_ids(card)
        assert not bad_lines(card["detail"]), f"not a whole sentence or table row: {bad_lines(card['detail'])}"
        assert "Rule set " in card["detail"]


def test_line_check_catches_a_fragment() -> None:
    """The check above can fail: these are the kinds of lines the issue saw."""
    assert bad_lines("Venous index 4 (threshold 3)") == ["Venous index 4 (threshold 3)"]
    assert bad_lines("Recognised by: code\n| a | b |\n**Advice**\n- Stay hydrated.") == ["Recognised by: code"]


# ---------------------------------------------------------------- records as a clinician reads them

def test_venous_card_says_its_score_in_words_and_the_age_by_birth_year() -> None:
    card, = fixture_cards("05-cramps-varicose-snomed")
    detail = card["detail"]
    assert "The venous index is 6 points, 3 needed: varicose veins 3, chronic leg oedema 2, age 50 or over 1." in detail
    assert "| Age 50 or over | 1 | age 62 (born 1964) |" in detail
    assert "Varicose veins of lower extremity (SNOMED CT 72866009), 2023-08-01" in detail
    assert "threshold" not in detail.lower()
    assert explanation(card)["items"][-1]["records"][0].startswith("Patient/")  # the id, for machines


def test_one_sided_sign_names_its_side() -> None:
    card, = fixture_cards("08-possible-dvt-two-signs-right")
    row = next(line for line in card["detail"].splitlines() if line.startswith("| One-sided leg swelling"))
    assert "(ICD-10-CM R22.41)" in row and row.rstrip(" |").endswith("right leg")


def test_text_matched_records_are_marked_on_patient_view_cards() -> None:
    card, = fixture_cards("34-text-cramps-varicose-display")
    assert "Nocturnal leg cramps, 2025-12-01, recognised by its name." in card["detail"]
    assert card["detail"].count("recognised by its name") == 3


def test_untreated_dvt_card_names_the_dvt_and_the_medications_read_and_suggests_nothing() -> None:
    card, = fixture_cards("09-untreated-dvt-aspirin-only")
    assert card_id(card) == "untreated-dvt" and card["indicator"] == "critical"
    assert "suggestions" not in card
    assert card["source"]["url"] == "https://doi.org/10.1182/bloodadvances.2020001830"
    detail = card["detail"]
    assert "(ICD-10-CM I82.401), 2026-06-10, right leg" in detail
    assert "None of the medication records read is an active anticoagulant:" in detail
    assert "| aspirin 81 MG Oral Tablet (RxNorm 243670), 2025-03-01 | medication order |" in detail


def test_untreated_dvt_card_with_medications_unchecked_says_so_in_its_summary() -> None:
    card, = fixture_cards("21-untreated-dvt-anticoagulant-not-checked")
    assert card["summary"] == "Recent DVT on record, anticoagulant not checked: review treatment"
    assert "An anticoagulant may be missing from this view: medication statements could not be checked" in card["detail"]


def test_dyazide_lists_each_ingredient_under_its_own_class() -> None:
    cards = {card_id(c): c for c in fixture_cards("order-12-dyazide-two-classes")}
    thiazide = cards["cramp-associated-drug-order-thiazide"]["detail"]
    sparing = cards["cramp-associated-drug-order-potassium-sparing"]["detail"]
    assert "| hydrochlorothiazide (thiazide or thiazide-like diuretic) |" in thiazide
    assert "triamterene" not in thiazide.split("| Draft order |")[1].split("\n\n")[0].split("|")[-2]
    assert "| triamterene (potassium-sparing diuretic or aldosterone antagonist) |" in sparing
    assert "Recognised by" not in thiazide and "(RxNorm 208124), draft order" in thiazide


def test_combination_on_patient_view_lists_each_ingredient_under_its_own_class() -> None:
    card, = fixture_cards("13-medication-record-variants")
    rows = {line.split("|")[1].strip() for line in card["detail"].splitlines() if line.startswith("| ")}
    assert "Potassium-sparing diuretic or aldosterone antagonist (triamterene)" in rows
    assert "Thiazide or thiazide-like diuretic (hydrochlorothiazide)" in rows


def test_quinine_card_names_the_order_by_its_drug_and_the_remove_action_too() -> None:
    card, = fixture_cards("order-10-quinine-product-997157")
    assert "| Quinine Sulfate 260 MG Oral Tablet (RxNorm 997157), draft order |" in card["detail"]
    action = card["suggestions"][0]["actions"][0]
    assert action["description"] == "Remove the draft order for Quinine Sulfate 260 MG Oral Tablet"
    assert action["resourceId"].startswith("MedicationRequest/")  # the id stays where a machine reads it


# ---------------------------------------------------------------- missing data, not checked, incomplete

def test_fired_card_names_the_missing_bmi_that_could_add_a_point() -> None:
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(CRAMPS, VARICOSE),
                                     "observations": searchset()})
    card, = answer(body)
    assert card_id(card) == "venous-duplex-workup"
    assert "No BMI in the last 12 months: a BMI of 30 or more would add 1 point." in card["detail"]


def test_no_missing_bmi_line_when_a_bmi_is_on_record() -> None:
    bmi = {"resourceType": "Observation", "id": "bmi-1", "status": "final", "subject": {"reference": "Patient/p-zq-1"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5", "display": "BMI"}]},
           "effectiveDateTime": "2026-05-01", "valueQuantity": {"value": 24.0, "unit": "kg/m2", "code": "kg/m2",
                                                                 "system": "http://unitsofmeasure.org"}}
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(CRAMPS, VARICOSE),
                                     "observations": searchset(bmi), "procedures": searchset(),
                                     "serviceRequests": searchset()})
    card, = answer(body)
    assert "BMI" not in card["detail"] and "Missing data" not in card["detail"]


def test_not_checked_names_only_the_keys_the_cards_rule_reads() -> None:
    """B does not read medications: a venous card never says medication orders could not be checked;
    conservative care does, and says what they could have added."""
    venous_body = minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(CRAMPS, VARICOSE)})
    venous, = answer(venous_body)
    assert card_id(venous) == "venous-duplex-workup"
    assert "medication orders" not in venous["detail"]
    assert "Could not be checked: observations" in venous["detail"]
    care, = answer(minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(CRAMPS)}))
    assert card_id(care) == "conservative-care"
    assert "Could not be checked: medication orders, medication statements, observations" in care["detail"]
    assert "Medication orders, medication statements could not be checked: drugs associated with cramps would add up to" \
        in care["detail"]


def test_unreadable_records_are_counted_in_words_and_listed_by_id_only_in_the_extension() -> None:
    bad = condition("R25.2", "yesterday", "bad-onset")
    card, = answer(minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(CRAMPS, bad)}))
    assert "Data may be incomplete: 1 record could not be read and was left out (1 condition: invalid FHIR R4" \
        in card["detail"]
    assert "bad-onset" not in card["detail"]
    assert explanation(card)["skippedRecords"][0]["record"] == "Condition/bad-onset"


def test_incomplete_chart_is_said_on_the_card() -> None:
    conditions = searchset(CRAMPS, next_url="https://fhir.example.org/r4/Condition?page=2")
    card, = answer(minimal_request(prefetch={"patient": patient_resource(), "conditions": conditions}))
    assert "Data may be incomplete (more pages were not read): conditions." in card["detail"]


def test_lab_check_reason_is_a_whole_sentence_naming_why() -> None:
    card, = fixture_cards("03-elevated-risk-thiazide-code")
    assert ("The patient takes a thiazide diuretic, and there is no usable potassium (basic metabolic panel) "
            "or magnesium result in the last 12 months: a check is suggested.") in card["detail"]


# ---------------------------------------------------------------- typed wording

def test_card_wording_is_validated_at_load_naming_the_field(tmp_path: Path) -> None:
    folder = tmp_path / "cards"
    shutil.copytree(Path(str(resources.files("cards"))), folder, ignore=shutil.ignore_patterns("__pycache__"))
    read_card_content(folder)  # the shipped wording loads
    venous = folder / "venous-duplex-workup.yaml"
    text = yaml.safe_load(venous.read_text())
    text["scor_label"] = text.pop("score_label")
    venous.write_text(yaml.safe_dump(text))
    with pytest.raises(ValidationError) as raised:
        read_card_content(folder)
    message = str(raised.value)
    assert "score_label" in message and "scor_label" in message


def test_every_card_id_has_its_wording() -> None:
    from cds_service.ruleset.card_ids import ALL_CARD_IDS

    content = read_card_content()
    assert set(ALL_CARD_IDS) <= set(content.cards)
    assert all(len(content.card(c).summary) < 140 for c in ALL_CARD_IDS)
