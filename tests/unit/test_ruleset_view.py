"""The rule set as the Rules page shows it: each card's criteria, numbers, value sets (codes with system and
display), suppression, enabled state and wording."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from cds_service.admin.ruleset_edit import apply_changes, field_type
from cds_service.admin.ruleset_view import build_view, cards_reading, display_of
from cds_service.ruleset.card_ids import ALL_CARD_IDS
from cds_service.ruleset.loader import load_default_ruleset, load_ruleset, parse_ruleset

BUNDLED = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def view():
    return build_view(load_default_ruleset())


def test_every_card_is_shown_with_its_settings(view):
    assert [card.card_id for card in view.cards] == list(ALL_CARD_IDS)
    risk = view.card("elevated-cramp-risk")
    assert (risk.enabled.value, risk.indicator.value, risk.suppress_days.value) == (True, "info", 90)
    assert risk.suppression.startswith("After an override, not shown again") and "90 days" in risk.suppression
    assert view.card("possible-dvt").suppression.startswith("Critical: never suppressed")
    assert "cramp-associated-drug-order" in view.card("cramp-associated-drug-order-laba").suppression


def test_criteria_say_this_rule_sets_numbers(view):
    venous = view.card("venous-duplex-workup")
    assert any("at least 3 points" in line for line in venous.criteria)
    assert any("more than 30 days" in line for line in venous.criteria)
    assert any("180 days" in line for line in venous.criteria)
    assert view.card("elevated-cramp-risk").criteria[-1] == "a contributor score of at least 3 points."
    assert "last 14 days" in view.card("untreated-dvt").criteria[0]


def test_weights_thresholds_and_windows_carry_their_fields(view):
    venous = view.card("venous-duplex-workup")
    weights = {w.field: (w.label, w.value) for w in venous.weights}
    assert weights["venous_index.points.venous_skin_changes"] == ("Venous skin changes or ulcer", 4)
    assert len(weights) == 9
    assert {t.field: t.value for t in venous.thresholds}["venous_index.threshold"] == 3
    contributors = {w.field: w.value for w in view.card("conservative-care").weights}
    assert contributors["contributors.points.thiazide_diuretic"] == 1.5
    assert [w.field for w in view.card("possible-dvt").windows] == ["windows.recent_days", "windows.recent_surgery_days"]
    for setting in view.settings:  # every field the page offers is one the editor accepts
        assert field_type(setting.field).kind in {"integer", "number", "boolean", "text", "list"}


def test_value_set_codes_have_system_and_display(view):
    cramp = view.value_set("leg_cramp")
    first = cramp.codes[0]
    assert (first.ref, first.system, first.system_name, first.code, first.display, first.verification) == (
        "icd10cm|R25.2", "http://hl7.org/fhir/sid/icd-10-cm", "ICD-10-CM", "R25.2", "Cramp and spasm", "verified")
    unverified = next(c for c in cramp.codes if c.code == "449917004")
    assert unverified.verification == "unverified"
    cancer = view.value_set("active_cancer")
    assert [(c.kind, c.ref) for c in cancer.codes] == [("codes", "sct|363346000"), ("ranges", "icd10cm|C00-C96"),
                                                       ("exclude", "icd10cm|C44")]
    assert cancer.refs("ranges") == ["icd10cm|C00-C96"]
    assert [vs.name for vs in view.card("untreated-dvt").value_sets] == ["dvt_acute"]


def test_display_lookup_ignores_the_icd_dot():
    assert display_of("http://hl7.org/fhir/sid/icd-10-cm", "r252")[0] == "Cramp and spasm"
    assert display_of("http://snomed.info/sct", "0000") == (None, None)


def test_a_value_set_file_brings_its_codes_and_displays(tmp_path):
    shipped = resources.files("cds_service").joinpath("data/valuesets/vsac-end-stage-renal-disease.json")
    (tmp_path / "eskd.json").write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    text = apply_changes(BUNDLED, {"value_sets.dialysis_or_eskd.file": "eskd.json"})
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    view = build_view(load_ruleset(path))
    from_file = view.value_set("dialysis_or_eskd").entries("file")
    expected = json.loads(shipped.read_text(encoding="utf-8"))["expansion"]["contains"]
    assert [(c.code, c.display) for c in from_file] == [(e["code"], e["display"]) for e in expected]
    assert from_file[0].kind_label == "from the value-set file"


def test_card_wording_comes_from_the_cards_package(view):
    wording = dict(view.card("possible-dvt").wording)
    assert view.card("possible-dvt").summary == "Possible DVT: same-day evaluation advised"
    assert wording["summary"] == view.card("possible-dvt").summary
    assert wording["pathways.two_signs"].startswith("Why this card: two recent signs")
    assert "kind" not in wording


def test_a_disabled_card_and_changed_numbers_show_as_such():
    edited = apply_changes(BUNDLED, {"cards.conservative-care.enabled": "false", "contributors.threshold": "2.5",
                                     "version": "2026.12.9"})
    view = build_view(parse_ruleset(edited, "edited"))
    assert view.version == "2026.12.9"
    assert view.card("conservative-care").enabled.value is False
    assert view.card("conservative-care").enabled.form_value == "false"
    assert view.card("elevated-cramp-risk").criteria[-1] == "a contributor score of at least 2.5 points."


def test_form_values(view):
    signs = next(s for s in view.card("possible-dvt").lists if s.field == "red_flag.signs")
    assert signs.form_value == "one_sided_leg_swelling\nleg_redness_cellulitis\nleg_pain"
    assert {t.field: t.form_value for t in view.card("venous-duplex-workup").thresholds}["venous_index.bmi_at_least"] == "30"


def test_cards_reading_a_field():
    assert cards_reading("venous_index.points.pregnancy") == ("venous-duplex-workup",)
    assert cards_reading("cards.quinine-for-cramps.suppress_days") == ("quinine-for-cramps",)
    assert cards_reading("windows.recent_days") == ("untreated-dvt", "possible-dvt")
    assert set(cards_reading("value_sets.leg_cramp.codes")) == {
        "venous-duplex-workup", "conservative-care", "elevated-cramp-risk", "cramp-associated-drug-order-potassium-sparing",
        "cramp-associated-drug-order-thiazide", "cramp-associated-drug-order-laba"}
    assert cards_reading("order_rules.cards.quinine-for-cramps") == ("quinine-for-cramps",)
    assert cards_reading("version") == ()


def test_card_headlines_fill_the_class_wording_and_mark_scores(view):
    assert view.card("cramp-associated-drug-order-thiazide").summary.startswith("Thiazide diuretic ordered for a patient")
    assert "{" not in view.card("cramp-associated-drug-order-laba").summary
    assert view.card("elevated-cramp-risk").summary == "Elevated leg-cramp risk: [score] points from medications and conditions"


def test_displays_of_the_shipped_value_set_files_are_used_too():
    # 236434000 is in no rule-set list and not in code_displays.yaml: only the shipped VSAC expansion has it
    assert display_of("http://snomed.info/sct", "236434000") == (
        "End stage renal failure untreated by renal replacement therapy (disorder)", None)
