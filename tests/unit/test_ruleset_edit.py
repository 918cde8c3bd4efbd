"""The Rules form's edits applied to the YAML text: comments and order survive, types come from the schema."""

from __future__ import annotations

import difflib
from importlib import resources

import pytest
import yaml

from cds_service.admin.ruleset_edit import EditError, apply_changes, field_type
from cds_service.ruleset.loader import parse_ruleset

BUNDLED = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_a_lowered_threshold_round_trips_and_validates():
    edited = apply_changes(BUNDLED, {"venous_index.threshold": "2", "version": "2026.12.2"})
    ruleset = parse_ruleset(edited, "edited")
    assert ruleset.spec.venous_index.threshold == 2
    assert ruleset.version == "2026.12.2"
    # only the two lines changed; the version keeps its double quotes
    assert changed_lines(BUNDLED, edited) == ['-version: "2026.12.1"', '+version: "2026.12.2"',
                                              "-  threshold: 3", "+  threshold: 2"]


def test_comments_and_key_order_survive():
    edited = apply_changes(BUNDLED, {"contributors.points.statin": "1", "windows.recent_days": "10",
                                     "value_sets.pregnancy.codes": "icd10cm|Z33.1\nsct|77386006"})
    comments = [line for line in BUNDLED.splitlines() if line.lstrip().startswith("#")]
    assert comments and comments == [line for line in edited.splitlines() if line.lstrip().startswith("#")]
    assert '  recent_days: 10              # A: "Recent window: 14 days"' in edited.splitlines()
    assert list(yaml.safe_load(edited)) == list(yaml.safe_load(BUNDLED))
    assert len(changed_lines(BUNDLED, edited)) == 6


def test_an_unchanged_value_leaves_the_text_byte_for_byte():
    assert apply_changes(BUNDLED, {"venous_index.threshold": "3", "cards.possible-dvt.enabled": "true",
                                   "red_flag.signs": "one_sided_leg_swelling, leg_redness_cellulitis, leg_pain"}) == BUNDLED


def test_a_wrapped_code_list_is_rewritten_wrapped_under_its_first_entry():
    codes = yaml.safe_load(BUNDLED)["value_sets"]["ckd_any"]["codes"]
    edited = apply_changes(BUNDLED, {"value_sets.ckd_any.codes": [*codes, "icd10cm|N18.0"]})
    start = edited.index("  ckd_any:")
    block = edited[start:edited.index("  dialysis_or_eskd:", start)].splitlines()
    assert all(len(line) <= 118 for line in block)
    assert block[2].startswith("    codes: [icd10cm|N18.1,") and block[3].startswith(" " * 12 + "icd10cm|")
    assert yaml.safe_load(edited)["value_sets"]["ckd_any"]["codes"][-1] == "icd10cm|N18.0"


def test_a_wrong_type_is_refused_naming_the_field():
    with pytest.raises(EditError) as caught:
        apply_changes(BUNDLED, {"venous_index.threshold": "three"})
    assert caught.value.field == "venous_index.threshold"
    assert "expected a number" in str(caught.value)
    with pytest.raises(EditError, match=r"^windows\.recent_days: expected a whole number"):
        apply_changes(BUNDLED, {"windows.recent_days": "1.5"})
    with pytest.raises(EditError, match=r"^cards\.possible-dvt\.enabled: expected true or false"):
        apply_changes(BUNDLED, {"cards.possible-dvt.enabled": "maybe"})
    with pytest.raises(EditError, match=r"^title: expected one line"):
        apply_changes(BUNDLED, {"title": "two\nlines"})


def test_an_unknown_field_is_refused_naming_it():
    for field in ("venous_index.treshold", "nothing", "windows.recent_days.more", "value_sets.leg_cramp.kodes"):
        with pytest.raises(EditError) as caught:
            apply_changes(BUNDLED, {field: "1"})
        assert caught.value.field == field and caught.value.message.startswith("unknown field")


def test_structures_are_left_to_the_yaml():
    with pytest.raises(EditError, match="not editable in the form"):
        field_type("laterality.last_character_sides")
    with pytest.raises(EditError, match="not editable in the form"):
        apply_changes(BUNDLED, {"venous_index.points": "1"})


def test_field_types_come_from_the_schema():
    assert field_type("venous_index.points.pregnancy").kind == "number"
    assert field_type("cards.conservative-care.suppress_days").kind == "integer"
    assert field_type("cards.conservative-care.enabled").kind == "boolean"
    assert field_type("value_sets.dvt_acute.prefixes").kind == "list"
    assert field_type("value_sets.dvt_acute.file").kind == "text"
    assert field_type("observations.magnesium.low_below.mg/dL").kind == "number"


def test_new_entries_are_added_in_block_and_flow_mappings():
    edited = apply_changes(BUNDLED, {"value_sets.paralysis.codes": "sct|44695005",
                                     "observations.bmi.low_below.kg/m2": "18.5"})
    data = yaml.safe_load(edited)
    assert data["value_sets"]["paralysis"] == {"source": "RULES.md Paralysis",
                                               "prefixes": ["icd10cm|G81", "icd10cm|G82", "icd10cm|G83"],
                                               "codes": ["sct|44695005"]}
    assert data["observations"]["bmi"]["low_below"] == {"kg/m2": 18.5}
    assert parse_ruleset(edited, "edited").value_set("paralysis").contains("http://snomed.info/sct", "44695005")


def test_a_folded_block_scalar_is_replaced_and_the_next_key_kept():
    edited = apply_changes(BUNDLED, {"value_sets.dvt_acute.source": "RULES.md Acute DVT"})
    data = yaml.safe_load(edited)
    assert data["value_sets"]["dvt_acute"]["source"] == "RULES.md Acute DVT"
    assert data["value_sets"]["dvt_acute"]["codes"][0] == "icd10cm|O87.1"
    assert "    source: RULES.md Acute DVT\n    codes: [icd10cm|O87.1," in edited


def test_strings_that_need_quotes_get_them():
    edited = apply_changes(BUNDLED, {"condition_text.cues": "no\nnot\nit's", "title": "Rules: local"})
    data = yaml.safe_load(edited)
    assert data["condition_text"]["cues"] == ["no", "not", "it's"]
    assert data["title"] == "Rules: local"
    assert '  cues: ["no", "not", "it\'s"]' in edited  # the double quotes of the original list


def test_a_lowered_threshold_that_no_longer_validates_is_still_written_for_the_validator():
    edited = apply_changes(BUNDLED, {"venous_index.threshold": "0"})
    assert yaml.safe_load(edited)["venous_index"]["threshold"] == 0
    with pytest.raises(Exception, match=r"venous_index\.threshold"):
        parse_ruleset(edited, "edited")


def test_invalid_yaml_is_refused_as_the_document():
    with pytest.raises(EditError) as caught:
        apply_changes("a: [1,\n", {"title": "x"})
    assert caught.value.field == "(document)"


def test_only_the_fields_changed_on_the_form_are_applied():
    from cds_service.admin.ruleset_edit import changed_fields, form_values

    fields = ["venous_index.threshold", "windows.recent_days", "value_sets.paralysis.codes", "red_flag.signs"]
    shown = form_values(BUNDLED, fields)
    assert shown == {"venous_index.threshold": "3", "windows.recent_days": "14", "value_sets.paralysis.codes": "",
                     "red_flag.signs": "one_sided_leg_swelling\nleg_redness_cellulitis\nleg_pain"}
    submitted = {**shown, "venous_index.threshold": "2.5"}
    assert changed_fields(BUNDLED, submitted) == {"venous_index.threshold": 2.5}
    # the YAML was edited to 10 days while the form kept showing 14: the form does not undo it
    yaml_edited = BUNDLED.replace("  recent_days: 14 ", "  recent_days: 10 ")
    changes = changed_fields(BUNDLED, submitted)
    assert yaml.safe_load(apply_changes(yaml_edited, changes))["windows"]["recent_days"] == 10
    with pytest.raises(EditError, match="^windows.recent_days: expected a whole number"):
        changed_fields(BUNDLED, {**shown, "windows.recent_days": "two weeks"})
    assert form_values("a: [1,\n", fields) is None


def test_an_empty_value_is_filled_after_its_key():
    text = BUNDLED.replace("  paralysis:\n    source: RULES.md Paralysis\n", "  paralysis:\n    source: RULES.md Paralysis\n    codes:\n")
    edited = apply_changes(text, {"value_sets.paralysis.codes": "sct|44695005"})
    assert "    codes: [sct|44695005]\n" in edited
    assert yaml.safe_load(edited)["value_sets"]["paralysis"]["codes"] == ["sct|44695005"]


def test_many_changes_are_applied_in_one_pass():
    sources = {f"value_sets.{name}.source": f"checked: {name}" for name in yaml.safe_load(BUNDLED)["value_sets"]}
    edited = apply_changes(BUNDLED, {**sources, "venous_index.threshold": "2", "windows.recent_days": "10"})
    data = yaml.safe_load(edited)
    assert all(spec["source"] == f"checked: {name}" for name, spec in data["value_sets"].items())
    assert (data["venous_index"]["threshold"], data["windows"]["recent_days"]) == (2, 10)
    assert len(changed_lines(BUNDLED, edited)) > 2 * len(sources)


def test_an_empty_input_for_a_key_the_yaml_lacks_is_no_change():
    from cds_service.admin.ruleset_edit import changed_fields

    without = BUNDLED.replace("    statin: 0.5\n", "")
    assert changed_fields(without, {"contributors.points.statin": "", "value_sets.paralysis.codes": " "}) == {}
    assert changed_fields(without, {"contributors.points.statin": "0.5"}) == {"contributors.points.statin": 0.5}


def test_a_missing_top_level_key_is_added_to_the_document():
    text = BUNDLED.replace('version: "2026.12.1"\n', "")
    edited = apply_changes(text, {"version": "2026.12.5"})
    assert yaml.safe_load(edited)["version"] == "2026.12.5"
    assert parse_ruleset(edited, "edited").version == "2026.12.5"
