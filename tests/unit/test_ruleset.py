"""The rule-set file: the shipped default equals RULES.md; invalid files fail with messages that name
the path and what is wrong."""

from __future__ import annotations

import pytest
import yaml
from importlib import resources

from cds_service.ruleset.loader import RuleSetError, load_default_ruleset, load_ruleset, parse_ruleset


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
        "untreated-dvt": 0, "possible-dvt": 0, "venous-duplex-workup": 30, "conservative-care": 90,
        "elevated-cramp-risk": 90, "quinine-for-cramps": 30,  # order hooks: warning 30, info 90
        "cramp-associated-drug-order-potassium-sparing": 90, "cramp-associated-drug-order-thiazide": 90,
        "cramp-associated-drug-order-laba": 90}
    assert {k: v.indicator for k, v in spec.cards.items() if v.indicator == "critical"} == {
        "untreated-dvt": "critical", "possible-dvt": "critical"}
    assert spec.observations.potassium.low_below["mmol/L"] == 3.5
    # Mg: mmol/L < 0.70; mEq/L = 2 x mmol/L, so < 1.40; mg/dL < 1.7 (compared in mg/dL)
    assert spec.observations.magnesium.low_below == {"mmol/L": 0.70, "mEq/L": 1.40, "meq/L": 1.40, "mg/dL": 1.7,
                                                     "mg/dl": 1.7}
    assert {k: getattr(spec.observations, k).window_days for k in
            ("pregnancy_status", "smoking_status", "potassium", "magnesium", "bmi")} == {
        "pregnancy_status": 280, "smoking_status": 365, "potassium": 365, "magnesium": 365, "bmi": 365}


def test_every_value_set_cites_its_source():
    spec = load_default_ruleset().spec
    for name, value_set in spec.value_sets.items():
        assert "RULES.md" in value_set.source or "codes.json" in value_set.source, name
    assert "RULES.md" in spec.procedures.source and "RULES.md" in spec.condition_text.source


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
    # ICD-10-CM as records send it: with the dot after the category, and in lower case
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    codes |= {(system, variant) for system, code in list(codes) if system == icd and len(code) > 3
              for variant in (f"{code[:3]}.{code[3:]}", f"{code[:3]}.{code[3:]}".lower(), code.lower())}
    return sorted(codes)


def test_concept_index_answers_like_every_value_set():
    """The compiled index (facts.py's fast path) gives the same answers as ValueSet.contains, one by one."""
    ruleset = load_default_ruleset()
    probes = _probe_codes(ruleset)
    assert len(probes) > 500
    for system, code in probes:
        expected = {name for name, vs in ruleset.value_sets.items() if vs.contains(system, code)}
        assert ruleset.concepts.names(system, code) == expected, (system, code)


# ---------------------------------------------------------------- Revision 2026-12, point by point
# Each row: a revision point of RULES.md and what the shipped rule set must hold for it (read off RULES.md).
ICD, SCT, CPT, LOINC_ = ("http://hl7.org/fhir/sid/icd-10-cm", "http://snomed.info/sct", "http://www.ama-assn.org/go/cpt",
                         "http://loinc.org")
REVISION_CODES = [
    # point 1: more acute-DVT codes (pregnancy, puerperium, deep thrombophlebitis, unspecified vein)
    ("1 I82.4Y1 acute DVT", "dvt_acute", ICD, "I82.4Y1", True),
    ("1 I82.4Z2 acute DVT", "dvt_acute", ICD, "I82.4Z2", True),
    ("1 O22.31 DVT in pregnancy", "dvt_acute", ICD, "O22.31", True),
    ("1 O22.31 is also pregnancy", "pregnancy", ICD, "O22.31", True),
    ("1 O87.1 DVT in the puerperium", "dvt_acute", ICD, "O87.1", True),
    ("1 O87.1 is not pregnancy", "pregnancy", ICD, "O87.1", False),
    ("1 I80.11 femoral thrombophlebitis", "dvt_acute", ICD, "I80.11", True),
    ("1 I80.201 deep thrombophlebitis", "dvt_acute", ICD, "I80.201", True),
    ("1 I82.90 unspecified vein, acute", "dvt_acute", ICD, "I82.90", True),
    ("1 SNOMED 132281000119108", "dvt_acute", SCT, "132281000119108", True),
    ("1 I80.3 is not DVT", "dvt_acute", ICD, "I80.3", False),
    ("1 I80.9 is not DVT", "dvt_acute", ICD, "I80.9", False),
    ("1 I80.01 superficial is not DVT", "dvt_acute", ICD, "I80.01", False),
    ("1 I82.812 superficial is not DVT", "dvt_acute", ICD, "I82.812", False),
    ("1 I82.91 is chronic: previous DVT", "dvt_history", ICD, "I82.91", True),
    ("1 I82.91 is not acute", "dvt_acute", ICD, "I82.91", False),
    ("1 I82.90 is not previous", "dvt_history", ICD, "I82.90", False),
    ("1 I82.5Z1 chronic: previous DVT", "dvt_history", ICD, "I82.5Z1", True),
    # point 2: ICD-10-CM with or without the dot, any case; other systems exactly
    ("2 R252 undotted", "leg_cramp", ICD, "R252", True),
    ("2 r25.2 lower case", "leg_cramp", ICD, "r25.2", True),
    ("2 g4762 undotted lower case", "leg_cramp", ICD, "g4762", True),
    ("2 i8390 undotted prefix", "varicose_veins", ICD, "i8390", True),
    ("2 C4491 undotted exclusion still excluded", "active_cancer", ICD, "C4491", False),
    ("2 o223 undotted O22.3", "dvt_acute", ICD, "o2231", True),
    ("2 SNOMED is exact", "leg_cramp", SCT, "055300003", False),
    # point 4: a venous duplex on record
    ("4 CPT 93970", "venous_duplex", CPT, "93970", True),
    ("4 CPT 93971", "venous_duplex", CPT, "93971", True),
    ("4 LOINC 46364-6", "venous_duplex", LOINC_, "46364-6", True),
    ("4 LOINC 48691-0", "venous_duplex", LOINC_, "48691-0", True),
    ("4 LOINC 48692-8", "venous_duplex", LOINC_, "48692-8", True),
    ("4 D-dimer is no duplex", "venous_duplex", CPT, "85379", False),
    ("4 surgical category", "surgical_procedure_category", SCT, "387713003", True),
]


@pytest.mark.parametrize("name, value_set, system, code, expected", REVISION_CODES, ids=[r[0] for r in REVISION_CODES])
def test_revision_codes(name, value_set, system, code, expected):
    ruleset = load_default_ruleset()
    assert ruleset.value_set(value_set).contains(system, code) is expected
    assert (value_set in ruleset.concepts.names(system, code)) is expected  # the compiled index agrees


REVISION_DATA = [
    ("1 recent window 14 days", lambda s: s.windows.recent_days, 14),
    ("4 recent surgery 28 days", lambda s: s.windows.recent_surgery_days, 28),
    ("4 surgery: completed Procedure", lambda s: s.procedures.surgery_statuses, ["completed"]),
    ("4 duplex within 180 days", lambda s: s.procedures.duplex_window_days, 180),
    ("4 duplex done: completed Procedure", lambda s: s.procedures.duplex_procedure_statuses, ["completed"]),
    ("4 duplex ordered: active, on-hold, completed ServiceRequest",
     lambda s: s.procedures.duplex_service_request_statuses, ["active", "on-hold", "completed"]),
    ("3 text terms for four concepts", lambda s: sorted(s.condition_text.terms),
     ["leg_cramp", "leg_edema", "varicose_veins", "venous_insufficiency"]),
    ("3 cramp terms", lambda s: s.condition_text.terms["leg_cramp"], [
        "leg cramp", "leg cramps", "nocturnal leg cramp", "nocturnal leg cramps", "night cramps", "calf cramp",
        "calf cramps", "muscle cramp of leg", "muscle cramps of leg", "muscle cramp of the leg", "muscle cramps of the leg",
        "muscle cramp of calf", "muscle cramps of calf", "muscle cramp of the calf", "muscle cramps of the calf",
        "charley horse"]),
    ("3 varicose terms", lambda s: s.condition_text.terms["varicose_veins"], ["varicose veins", "varicosities", "varix of leg"]),
    ("3 insufficiency terms", lambda s: s.condition_text.terms["venous_insufficiency"],
     ["venous insufficiency", "venous reflux", "venous stasis"]),
    ("3 oedema terms", lambda s: s.condition_text.terms["leg_edema"],
     ["leg edema", "leg oedema", "leg swelling", "swollen legs", "ankle edema", "ankle oedema"]),
    ("3 cues", lambda s: s.condition_text.cues, [
        "no", "not", "denies", "denied", "without", "negative for", "free of", "r/o", "rule out", "ruled out", "?",
        "possible", "probable", "suspected", "query", "history of", "h/o", "family history", "resolved"]),
    ("5 order classes: potassium-sparing, thiazide, LABA (and quinine)", lambda s: s.order_rules.order_classes,
     {"quinine": ["quinine"], "potassium-sparing": ["potassium-sparing"], "thiazide": ["thiazide"], "laba": ["laba"]}),
    ("5 one drug card per class", lambda s: s.order_rules.cards, {
        "quinine-for-cramps": ["quinine"], "cramp-associated-drug-order-potassium-sparing": ["potassium-sparing"],
        "cramp-associated-drug-order-thiazide": ["thiazide"], "cramp-associated-drug-order-laba": ["laba"]}),
    ("7 a stable id for every card", lambda s: sorted(s.cards), sorted([
        "untreated-dvt", "possible-dvt", "venous-duplex-workup", "conservative-care", "elevated-cramp-risk",
        "quinine-for-cramps", "cramp-associated-drug-order-potassium-sparing", "cramp-associated-drug-order-thiazide",
        "cramp-associated-drug-order-laba"])),
    ("1 untreated-dvt is critical and never suppressed", lambda s: (s.cards["untreated-dvt"].indicator,
                                                                    s.cards["untreated-dvt"].suppress_days), ("critical", 0)),
    ("7 Mg 1.7 mg/dL cut-off in mg/dL", lambda s: s.observations.magnesium.low_below["mg/dL"], 1.7),
    ("7 Mg mEq/L = mmol/L x 2", lambda s: s.observations.magnesium.low_below["mEq/L"],
     2 * 0.70),
]


@pytest.mark.parametrize("name, read, expected", REVISION_DATA, ids=[r[0] for r in REVISION_DATA])
def test_revision_data_in_the_rule_set(name, read, expected):
    assert read(load_default_ruleset().spec) == pytest.approx(expected) if isinstance(expected, float) else \
        read(load_default_ruleset().spec) == expected


INVALID_REVISION = [
    ("text term for a critical concept", lambda d: d["condition_text"]["terms"].update(dvt_acute=["blood clot"]),
     "condition_text.terms.dvt_acute", "can raise a critical card"),
    ("text term for a Wells item", lambda d: d["condition_text"]["terms"].update(active_cancer=["cancer"]),
     "condition_text.terms.active_cancer", "can raise a critical card"),
    ("text term for a sign", lambda d: d["condition_text"]["terms"].update(leg_pain=["calf pain"]),
     "condition_text.terms.leg_pain", "can raise a critical card"),
    ("text term for no value set", lambda d: d["condition_text"]["terms"].update(gout=["gout"]),
     "condition_text.terms.gout", "no value set named 'gout'"),
    ("text term holding a cue", lambda d: d["condition_text"]["terms"]["leg_cramp"].append("no leg cramps"),
     "condition_text.terms.leg_cramp[16]", "holds the cue 'no'"),
    ("text term with no word", lambda d: d["condition_text"]["terms"]["leg_cramp"].append("??"),
     "condition_text.terms.leg_cramp[16]", "holds no word"),
    ("empty cue", lambda d: d["condition_text"]["cues"].append(" "), "condition_text.cues[19]", "empty cue"),
    ("cues missing", lambda d: d["condition_text"].pop("cues"), "condition_text.cues", "required key is missing"),
    ("procedures without a source", lambda d: d["procedures"].pop("source"), "procedures.source",
     "required key is missing"),
    ("unknown procedure status", lambda d: d["procedures"]["duplex_procedure_statuses"].append("done"),
     "procedures.duplex_procedure_statuses[1]", "unknown status 'done'"),
    ("unknown request status", lambda d: d["procedures"]["duplex_service_request_statuses"].append("ordered"),
     "procedures.duplex_service_request_statuses[3]", "unknown status 'ordered'"),
    ("negative duplex window", lambda d: d["procedures"].update(duplex_window_days=-1),
     "procedures.duplex_window_days", "greater than or equal to 0"),
    ("duplex value set missing", lambda d: d["value_sets"].pop("venous_duplex"), "value_sets", "venous_duplex"),
    ("untreated-dvt settings missing", lambda d: d["cards"].pop("untreated-dvt"), "cards", "untreated-dvt"),
    ("the former single drug card id", lambda d: d["cards"].update({"cramp-associated-drug-order": {
        "indicator": "info", "suppress_days": 90}}), "cards.cramp-associated-drug-order", "one card per drug class"),
    ("loop diuretics back as an order class of their own", lambda d: d["order_rules"]["order_classes"].update(
        loop=["loop"]), "order_rules.order_classes.loop", "unknown order class 'loop'"),
]


@pytest.mark.parametrize("name, change, path, message", INVALID_REVISION, ids=[r[0] for r in INVALID_REVISION])
def test_invalid_revision_data_names_path_and_problem(name, change, path, message):
    with pytest.raises(RuleSetError) as info:
        parse_ruleset(_mutate(change), "custom.yaml")
    assert any(p == path and message in m for p, m in info.value.problems), info.value.problems


def test_drug_card_needs_wording_for_each_class_it_judges():
    """An admin who moves LABA under the thiazide card gets told the thiazide text has no LABA wording."""
    def move(d):
        d["order_rules"]["cards"]["cramp-associated-drug-order-laba"] = []
        d["order_rules"]["cards"]["cramp-associated-drug-order-thiazide"].append("laba")
    with pytest.raises(RuleSetError) as info:
        parse_ruleset(_mutate(move), "custom.yaml")
    assert any(p == "cards.cramp-associated-drug-order-thiazide" and "order_classes.laba" in m
               for p, m in info.value.problems), info.value.problems


def test_rules_validate_reports_revision_problems_with_lines(tmp_path):
    from click.testing import CliRunner
    from cds_service.cli.main import main
    bad = tmp_path / "rules.yaml"
    bad.write_text(_mutate(lambda d: d["condition_text"]["terms"].update(paralysis=["cannot move leg"])))
    result = CliRunner().invoke(main, ["rules", "validate", str(bad)])
    assert result.exit_code == 1
    line = next(l for l in result.output.splitlines() if "condition_text.terms.paralysis" in l)
    assert line.startswith(f"{bad}:") and line.split(":")[1].isdigit() and "critical card" in line



TEXT_MATCHES = [
    # text, terms {value set: [terms]}, cues, expected value sets matched
    ("Leg  cramps", {"leg_cramp": ["leg cramps"]}, [], {"leg_cramp"}),  # any run of spaces between words
    ("leg cramps?", {"leg_cramp": ["leg cramps"]}, ["?"], set()),  # "?" anywhere
    ("?leg cramps", {"leg_cramp": ["leg cramps"]}, ["?"], set()),
    ("r/o leg cramps", {"leg_cramp": ["leg cramps"]}, ["r/o"], set()),
    ("error/other leg cramps", {"leg_cramp": ["leg cramps"]}, ["r/o"], {"leg_cramp"}),  # r/o inside a word
    ("Nocturnal leg cramps", {"leg_cramp": ["leg cramps"]}, ["no"], {"leg_cramp"}),  # "no" inside a word
    ("No. leg cramps", {"leg_cramp": ["leg cramps"]}, ["no"], set()),
    ("leg cramps; varicose veins", {"leg_cramp": ["leg cramps"], "varicose_veins": ["varicose veins"]}, [],
     {"leg_cramp", "varicose_veins"}),
    ("leg crampsy", {"leg_cramp": ["leg cramps"]}, [], set()),
]


@pytest.mark.parametrize("text, terms, cues, expected", TEXT_MATCHES, ids=[r[0] for r in TEXT_MATCHES])
def test_text_matcher(text, terms, cues, expected):
    from cds_service.ruleset.text_match import TextMatcher
    assert set(TextMatcher(terms, cues).match([text])) == expected
