"""The structured diff between two rule sets, against differences worked out by hand."""

from __future__ import annotations

from importlib import resources

import pytest

from cds_service.admin.ruleset_diff import CodeRef, DiffError, ParameterChange, diff_rulesets

BUNDLED = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_identical_texts_have_no_diff():
    diff = diff_rulesets(BUNDLED, BUNDLED)
    assert diff.empty and diff.text == () and diff.before_version == diff.after_version == "2026.12.1"


def test_a_lowered_threshold_and_a_new_version():
    after = edit(edit(BUNDLED, 'version: "2026.12.1"', 'version: "2026.12.2"'),
                 "  threshold: 3\n  points:\n    varicose_veins: 3", "  threshold: 2\n  points:\n    varicose_veins: 3")
    diff = diff_rulesets(BUNDLED, after)
    assert diff.parameters == (
        ParameterChange("version", "2026.12.1", "2026.12.2", ()),
        ParameterChange("venous_index.threshold", 3, 2, ("venous-duplex-workup",)),
    )
    assert diff.codes == ()
    assert (diff.before_version, diff.after_version) == ("2026.12.1", "2026.12.2")
    assert diff.cards_changed() == ("venous-duplex-workup",)
    assert diff.text[:2] == ("--- version 2026.12.1", "+++ version 2026.12.2")
    assert "-  threshold: 3" in diff.text and "+  threshold: 2" in diff.text
    assert sum(1 for line in diff.text if line[:1] in "+-" and line[:3] not in ("+++", "---")) == 4


def test_codes_added_and_removed_per_value_set_with_displays():
    after = edit(BUNDLED, "    codes: [icd10cm|E87.6, sct|43339004]", "    codes: [sct|43339004, icd10cm|E83.42]")
    after = edit(after, "    prefixes: [icd10cm|G81, icd10cm|G82, icd10cm|G83]", "    prefixes: [icd10cm|G81, icd10cm|G82]")
    diff = diff_rulesets(BUNDLED, after)
    assert diff.parameters == ()
    paralysis, hypokalemia = diff.codes  # in the file's order
    assert (hypokalemia.value_set, hypokalemia.kind) == ("hypokalemia", "codes")
    assert hypokalemia.added == (CodeRef("icd10cm|E83.42", "Hypomagnesemia"),)
    assert hypokalemia.removed == (CodeRef("icd10cm|E87.6", "Hypokalemia"),)
    assert hypokalemia.cards == ("conservative-care", "elevated-cramp-risk")
    assert (paralysis.value_set, paralysis.kind, paralysis.added) == ("paralysis", "prefixes", ())
    assert paralysis.removed == (CodeRef("icd10cm|G83", None),)
    assert paralysis.cards == ("possible-dvt",)


def test_reordered_codes_are_no_change_but_show_in_the_text():
    after = edit(BUNDLED, "    codes: [icd10cm|E87.6, sct|43339004]", "    codes: [sct|43339004, icd10cm|E87.6]")
    diff = diff_rulesets(BUNDLED, after)
    assert diff.empty and len(diff.text) > 2


def test_added_and_removed_fields_and_card_settings():
    after = edit(BUNDLED, "  paralysis:\n    source: RULES.md Paralysis\n",
                 "  paralysis:\n    source: RULES.md Paralysis\n    codes: [sct|44695005]\n")
    after = edit(after, "  quinine-for-cramps: {enabled: true, indicator: warning, suppress_days: 30}",
                 "  quinine-for-cramps: {enabled: false, indicator: warning}")
    diff = diff_rulesets(BUNDLED, after)
    assert diff.parameters == (
        ParameterChange("cards.quinine-for-cramps.enabled", True, False, ("quinine-for-cramps",)),
        ParameterChange("cards.quinine-for-cramps.suppress_days", 30, None, ("quinine-for-cramps",)),
    )
    assert [p.change for p in diff.parameters] == ["changed", "removed"]
    (paralysis,) = diff.codes
    assert paralysis.added == (CodeRef("sct|44695005", None),) and paralysis.removed == ()


def test_a_list_parameter_is_compared_whole():
    after = edit(BUNDLED, "  signs_needed_alone: 2", "  signs_needed_alone: 3")
    after = edit(after, "  wells_items: [active_cancer, recent_surgery, paralysis, previous_dvt]",
                 "  wells_items: [active_cancer, paralysis]")
    diff = diff_rulesets(BUNDLED, after)
    assert diff.parameters == (
        ParameterChange("red_flag.signs_needed_alone", 2, 3, ("possible-dvt",)),
        ParameterChange("red_flag.wells_items", ["active_cancer", "recent_surgery", "paralysis", "previous_dvt"],
                        ["active_cancer", "paralysis"], ("possible-dvt",)),
    )


def test_a_text_that_is_not_a_rule_set_is_named_by_side():
    with pytest.raises(DiffError, match="^after: not valid YAML"):
        diff_rulesets(BUNDLED, "a: [1,\n")
    with pytest.raises(DiffError, match="^before: expected a mapping"):
        diff_rulesets("- 1\n", BUNDLED)
