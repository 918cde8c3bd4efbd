"""The rule-set file: the shipped default equals RULES.md; invalid files fail with messages that name
the path and what is wrong."""

from __future__ import annotations

import pytest
import yaml
from importlib import resources

from cds_service.ruleset import RuleSetError, load_default_ruleset, load_ruleset, parse_ruleset


def default_data():
    return yaml.safe_load(resources.files("cds_service").joinpath("data/ruleset.yaml").read_text())


def test_default_ruleset_holds_rules_md_numbers():
    spec = load_default_ruleset().spec
    assert spec.windows.recent_days == 14 and spec.windows.chronic_edema_min_days == 30
    assert spec.venous_index.threshold == 3 and spec.contributors.threshold == 3
    assert spec.venous_index.points == {
        "varicose_veins": 3, "venous_insufficiency": 3, "venous_skin_changes": 4, "post_thrombotic_syndrome": 4,
        "previous_dvt": 2, "chronic_leg_edema": 2, "pregnancy": 1, "age_50_or_over": 1, "bmi_30_or_over": 1}
    assert spec.venous_index.chronic_leg_edema_with_heart_failure == 1
    assert spec.contributors.points == {
        "potassium_sparing_diuretic": 2, "thiazide_diuretic": 1.5, "loop_diuretic": 1, "long_acting_beta_agonist": 2,
        "statin": 0.5, "liver_disease": 2, "dialysis_or_eskd": 2, "ckd_stage_3_5": 1, "diabetes": 1, "pregnancy": 1,
        "hypothyroidism": 1, "peripheral_artery_disease": 1, "low_potassium": 1, "low_magnesium": 1,
        "recent_dehydration": 1, "age_65_or_over": 1, "current_smoker": 0.5, "high_cholesterol": 0.5}
    assert {k: v.suppress_days for k, v in spec.cards.items()} == {
        "possible-dvt": 0, "venous-duplex-workup": 30, "conservative-care": 90, "elevated-cramp-risk": 90,
        "quinine-for-cramps": 30, "cramp-associated-drug-order": 90}  # order hooks: warning 30, info 90
    assert spec.observations.potassium.low_below["mmol/L"] == 3.5
    assert spec.observations.magnesium.low_below == {"mmol/L": 0.70, "mEq/L": 1.40, "meq/L": 1.40, "mg/dL": 1.7}
    assert {k: getattr(spec.observations, k).window_days for k in
            ("pregnancy_status", "smoking_status", "potassium", "magnesium", "bmi")} == {
        "pregnancy_status": 280, "smoking_status": 365, "potassium": 365, "magnesium": 365, "bmi": 365}


def test_every_value_set_cites_its_source():
    for name, value_set in load_default_ruleset().spec.value_sets.items():
        assert "RULES.md" in value_set.source or "codes.json" in value_set.source, name


def _mutate(change):
    data = default_data()
    change(data)
    return yaml.safe_dump(data)


INVALID = [
    ("unknown key", lambda d: d.update(colour="red"), "colour", "unknown key"),
    ("wrong type", lambda d: d["windows"].update(recent_days="two weeks"), "windows.recent_days", "integer"),
    ("negative weight", lambda d: d["contributors"]["points"].update(statin=-1), "contributors", "negative points for statin"),
    ("unknown code system", lambda d: d["value_sets"]["diabetes"]["codes"].append("read|C10"), "value_sets.diabetes",
     "unknown code system 'read'"),
    ("malformed code", lambda d: d["value_sets"]["diabetes"]["codes"].append("E11 9"), "value_sets.diabetes",
     "not of the form"),
    ("unreachable threshold", lambda d: d["venous_index"].update(threshold=100), "venous_index.threshold",
     "no combination of items can reach it"),
    ("missing card settings", lambda d: d["cards"].pop("conservative-care"), "cards", "conservative-care"),
    ("bad indicator", lambda d: d["cards"]["possible-dvt"].update(indicator="urgent"), "cards.possible-dvt.indicator",
     "info, warning, critical"),
    ("missing version", lambda d: d.pop("version"), "version", "required key is missing"),
]


@pytest.mark.parametrize("name, change, path, message", INVALID, ids=[row[0] for row in INVALID])
def test_invalid_ruleset_names_path_and_problem(name, change, path, message):
    with pytest.raises(RuleSetError) as info:
        parse_ruleset(_mutate(change), "custom.yaml")
    text = str(info.value)
    assert text.startswith("custom.yaml: invalid rule set")
    assert path in text and message in text


def test_yaml_syntax_error_names_line(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: '1'\nwindows: [unclosed\n")
    with pytest.raises(RuleSetError) as info:
        load_ruleset(bad)
    assert str(bad) in str(info.value) and "line " in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RuleSetError, match="cannot be read"):
        load_ruleset(tmp_path / "absent.yaml")


def _probe_codes(ruleset):
    """Every code and prefix of the rule set, with children, parents and near misses of each."""
    codes = set()
    for value_set in ruleset.value_sets.values():
        for system, code in [*value_set.codes, *value_set.prefixes, *value_set.excludes]:
            codes |= {(system, code), (system, code + "1"), (system, code[:-1]), (system, code + ".9"),
                      (system, code[:3])}
        for system, low, high in value_set.ranges:
            codes |= {(system, low), (system, high + ".9"), (system, low[:2]), (system, "C43.9"), (system, "C97")}
    return sorted(codes)


def test_concept_index_answers_like_every_value_set():
    """The compiled index (facts.py's fast path) gives the same answers as ValueSet.contains, one by one."""
    ruleset = load_default_ruleset()
    probes = _probe_codes(ruleset)
    assert len(probes) > 500
    for system, code in probes:
        expected = {name for name, vs in ruleset.value_sets.items() if vs.contains(system, code)}
        assert ruleset.concepts.names(system, code) == expected, (system, code)
