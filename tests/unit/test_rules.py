"""Facts and rules as tables: each row a small chart and what RULES.md says about it."""

from __future__ import annotations

import pytest

from support.chart_builder import (CPT, ICD10, LOINC, NOW, SNOMED, condition, hook_request, med_request, med_statement,
                                   observation, procedure, service_request, text_condition)
from cds_service.clock import fixed_clock
from cds_service.engine.pipeline import Engine
from cds_service.hooks.request import parse_hook_request


@pytest.fixture(scope="module")
def engine():
    return Engine.default(clock=fixed_clock(NOW))


def run(engine, resources, **patient):
    service = engine.registry.get("leg-cramp-patient-view")
    return engine.run(service, parse_hook_request(hook_request(resources, **patient)))


def shown(result):
    return [o.card_id for o in result.evaluation.shown]


def items(outcome):
    return {i.item: i.points for i in outcome.items}


CRAMPS = condition("G47.62", age=400)

# ---------------------------------------------------------------- facts: which records count
FACT_TABLE = [
    ("active condition counts", [condition("E11.9")], "diabetes", True),
    ("resolved condition does not", [condition("E11.9", status="resolved")], "diabetes", False),
    ("refuted does not", [condition("E11.9", verification="refuted")], "diabetes", False),
    ("entered-in-error does not", [condition("E11.9", status=None, verification="entered-in-error")], "diabetes", False),
    ("no clinicalStatus and not abated counts", [condition("E11.9", status=None)], "diabetes", True),
    ("no clinicalStatus but abated does not", [condition("E11.9", status=None, abated=True)], "diabetes", False),
    ("recurrence counts", [condition("E03.9", status="recurrence")], "hypothyroidism", True),
    ("M62.831 alone is not documented cramps", [condition("M62.831")], "documented_leg_cramps", False),
    ("SNOMED 449917004 accepted on input", [condition("449917004")], "documented_leg_cramps", True),
    ("resolved cramps are not documented cramps", [condition("R25.2", status="resolved")], "documented_leg_cramps", False),
    ("unspecified CKD scores nothing", [condition("N18.9")], "ckd_stage_3_5", False),
    ("CKD 3b counts", [condition("N18.32")], "ckd_stage_3_5", True),
    ("dialysis replaces CKD", [condition("N18.4"), condition("Z99.2")], "ckd_stage_3_5", False),
    ("E78.1 is not high cholesterol", [condition("E78.1")], "high_cholesterol", False),
    ("E78.41 is high cholesterol", [condition("E78.41")], "high_cholesterol", True),
    ("neurogenic claudication is not PAD", [condition("303081002")], "peripheral_artery_disease", False),
    ("C44 skin cancer is not active cancer", [condition("C44.91")], "active_cancer", False),
    ("C50 breast cancer is", [condition("C50.911")], "active_cancer", True),
    ("O03 abortive outcome is not pregnancy", [condition("O03.9")], "pregnancy", False),
    ("O26 is pregnancy", [condition("O26.891")], "pregnancy", True),
    ("pregnancy obs says pregnant", [observation("82810-3", answer=(LOINC, "LA15173-0"))], "pregnancy", True),
    ("later not-pregnant obs wins over condition",
     [condition("Z34.90", age=100), observation("82810-3", answer=(LOINC, "LA26683-5"), age=10)], "pregnancy", False),
    ("pregnancy obs older than 280 days is outside", [observation("82810-3", answer=(LOINC, "LA15173-0"), age=281)],
     "pregnancy", False),
    ("dehydration 30 days ago counts", [condition("E86.0", age=30)], "recent_dehydration", True),
    ("dehydration 31 days ago does not", [condition("E86.0", age=31)], "recent_dehydration", False),
    ("undated dehydration is never recent", [condition("E86.0", age=None)], "recent_dehydration", False),
    ("current smoker obs", [observation("72166-2", answer=(SNOMED, "449868002"))], "current_smoker", True),
    ("later former-smoker obs wins",
     [condition("F17.210", age=200), observation("72166-2", answer=(SNOMED, "8517006"), age=10)], "current_smoker", False),
    ("later current obs wins over earlier never",
     [observation("72166-2", answer=(SNOMED, "266919005"), age=300), observation("72166-2", answer=(LOINC, "LA18976-3"), age=5)],
     "current_smoker", True),
    ("K 3.4 mmol/L is low", [observation("2823-3", value=3.4, unit="mmol/L")], "low_potassium", True),
    ("K 3.5 mmol/L is not", [observation("2823-3", value=3.5, unit="mmol/L")], "low_potassium", False),
    ("K <3.0 comparator is low", [observation("2823-3", value=3.0, unit="mmol/L", comparator="<")], "low_potassium", True),
    ("K flagged L without value is low", [observation("6298-4", interpretation="L")], "low_potassium", True),
    ("later normal K wins over earlier low",
     [observation("2823-3", value=3.0, unit="mmol/L", age=100), observation("2823-3", value=4.1, unit="mmol/L", age=5)],
     "low_potassium", False),
    ("K in unknown unit passed over; earlier low used",
     [observation("2823-3", value=3.1, unit="mmol/L", age=100), observation("2823-3", value=31, unit="g/L", age=5)],
     "low_potassium", True),
    ("K older than 365 days ignored", [observation("2823-3", value=3.0, unit="mmol/L", age=366)], "low_potassium", False),
    ("preliminary K ignored", [observation("2823-3", value=3.0, unit="mmol/L", status="preliminary")], "low_potassium", False),
    ("Mg 1.6 mg/dL is low", [observation("19123-9", value=1.6, unit="mg/dL")], "low_magnesium", True),
    ("Mg 1.7 mg/dL is not", [observation("19123-9", value=1.7, unit="mg/dL")], "low_magnesium", False),
    ("Mg 0.69 mmol/L is low", [observation("2601-3", value=0.69, unit="mmol/L")], "low_magnesium", True),
    ("Mg 1.3 mEq/L is low (0.65 mmol/L)", [observation("2601-3", value=1.3, unit="mEq/L")], "low_magnesium", True),
    # Revision 2026-12 point 7: each unit compared in its own unit
    ("Mg 1.69 mg/dL is low", [observation("19123-9", value=1.69, unit="mg/dL")], "low_magnesium", True),
    ("Mg 1.7 mg/dL on the mmol/L code is not low", [observation("2601-3", value=1.7, unit="mg/dL")], "low_magnesium", False),
    ("Mg 1.7 mg/dl (lower case) is not low", [observation("19123-9", value=1.7, unit="mg/dl")], "low_magnesium", False),
    ("Mg 0.70 mmol/L is not low", [observation("2601-3", value=0.70, unit="mmol/L")], "low_magnesium", False),
    ("Mg 0.69 mmol/L on the mg/dL code is low", [observation("19123-9", value=0.69, unit="mmol/L")], "low_magnesium", True),
    ("Mg 1.40 mEq/L is not low (0.70 mmol/L)", [observation("2601-3", value=1.40, unit="mEq/L")], "low_magnesium", False),
    ("Mg <1.7 mg/dL comparator is low", [observation("19123-9", value=1.7, unit="mg/dL", comparator="<")],
     "low_magnesium", True),
    ("Mg 2.0 mg/dL is not low", [observation("19123-9", value=2.0, unit="mg/dL")], "low_magnesium", False),
    ("hypokalaemia diagnosis is low potassium", [condition("E87.6")], "low_potassium", True),
    ("Z86.718 resolved still previous DVT", [condition("Z86.718", status="resolved")], "previous_dvt", True),
    ("refuted DVT history is not", [condition("Z86.718", verification="refuted")], "previous_dvt", False),
    ("acute DVT 15 days ago is previous DVT", [condition("I82.401", age=15)], "previous_dvt", True),
    ("acute DVT 14 days ago is recent, not previous", [condition("I82.401", age=14)], "previous_dvt", False),
    ("superficial thrombophlebitis is not DVT", [condition("I80.01", age=3)], "recent_acute_dvt", False),
    # Revision 2026-12 point 1: previous DVT
    ("I82.91 chronic is previous DVT", [condition("I82.91", age=3)], "previous_dvt", True),
    ("I82.91 is not a recent acute DVT", [condition("I82.91", age=3)], "recent_acute_dvt", False),
    ("undated acute DVT is previous DVT", [condition("I82.401", age=None)], "previous_dvt", True),
    ("undated acute DVT is not recent", [condition("I82.401", age=None)], "recent_acute_dvt", False),
    ("resolved recent acute DVT is previous DVT", [condition("I82.401", age=3, status="resolved")], "previous_dvt", True),
    ("inactive recent acute DVT is not recent", [condition("I82.401", age=3, status="inactive")], "recent_acute_dvt", False),
    ("remission acute DVT is previous DVT", [condition("I82.401", age=3, status="remission")], "previous_dvt", True),
    ("refuted acute DVT is neither", [condition("I82.401", age=30, verification="refuted")], "previous_dvt", False),
    ("SNOMED 161508001 is previous DVT", [condition("161508001", status="resolved")], "previous_dvt", True),
    ("O22.31 is a current pregnancy", [condition("O22.31", age=3)], "pregnancy", True),
    ("O87.1 (puerperium) is not pregnancy", [condition("O87.1", age=3)], "pregnancy", False),
    # Revision 2026-12 point 2: ICD-10-CM with or without the dot, any case
    ("R252 undotted is documented cramps", [condition("R252")], "documented_leg_cramps", True),
    ("r25.2 lower case is documented cramps", [condition("r25.2")], "documented_leg_cramps", True),
    ("e119 undotted lower case is diabetes", [condition("e119")], "diabetes", True),
    ("N1832 undotted is CKD 3b", [condition("N1832")], "ckd_stage_3_5", True),
    ("C4491 undotted skin cancer still excluded", [condition("C4491")], "active_cancer", False),
    ("i82401 undotted recent acute DVT", [condition("i82401", age=2)], "recent_acute_dvt", True),
]


@pytest.mark.parametrize("name, resources, fact, expected", FACT_TABLE, ids=[row[0] for row in FACT_TABLE])
def test_facts_table(engine, name, resources, fact, expected):
    assert run(engine, resources).facts.has(fact) is expected


MEDICATION_TABLE = [
    ("clinical-drug code maps by code", med_request(rxcui="316049"), {"thiazide"}, "code", True),
    ("brand text maps by text", med_statement(text="Lasix 40mg"), {"loop"}, "text", True),
    ("combination counts each class", med_statement(text="Maxzide 37.5/25"), {"thiazide", "potassium-sparing"}, "text", True),
    ("proposal intent does not count", med_request(rxcui="316049", intent="proposal"), {"thiazide"}, "code", False),
    ("stopped request does not count", med_request(rxcui="316049", status="stopped"), {"thiazide"}, "code", False),
    ("ended statement does not count", med_statement(text="furosemide 20 mg", ended_days_ago=1), {"loop"}, "text", False),
    ("intended statement counts", med_statement(text="simvastatin 20 mg", status="intended"), {"statin"}, "text", True),
    ("acetazolamide is not a diuretic", med_statement(text="acetazolamide 250 mg"), {"carbonic-anhydrase-inhibitor"}, "text", True),
    ("clopidogrel is no anticoagulant", med_request(rxcui="309362"), set(), "code", True),
    ("unknown drug is not mapped", med_statement(text="vitamin D 1000 IU"), set(), None, True),
]


@pytest.mark.parametrize("name, resource, classes, method, counted", MEDICATION_TABLE, ids=[r[0] for r in MEDICATION_TABLE])
def test_medication_mapping_table(engine, name, resource, classes, method, counted):
    (med,) = run(engine, [resource]).facts.medications
    assert set(med.classes) == classes
    assert med.method == method
    assert med.counted is counted


def test_one_ingredient_counts_once_however_many_records(engine):
    result = run(engine, [med_request(rxcui="316049"), med_statement(text="hydrochlorothiazide 25 mg"), CRAMPS])
    assert items(result.evaluation.contributors) == {"thiazide_diuretic": 1.5}


# ---------------------------------------------------------------- A.1: untreated DVT (Revision 2026-12 point 1)
UNTREATED_TABLE = [
    # name, chart, omitted prefetch keys, card shown, "anticoagulant not checked" keys
    ("I82.401 recent, no anticoagulant", [condition("I82.401", age=5)], (), "untreated-dvt", ()),
    ("I82.4Y1 recent", [condition("I82.4Y1", age=1)], (), "untreated-dvt", ()),
    ("O22.31 DVT in pregnancy", [condition("O22.31", age=3)], (), "untreated-dvt", ()),
    ("O87.1 DVT in the puerperium", [condition("O87.1", age=3)], (), "untreated-dvt", ()),
    ("I80.11 femoral thrombophlebitis", [condition("I80.11", age=3)], (), "untreated-dvt", ()),
    ("I80.201 deep thrombophlebitis", [condition("I80.201", age=3)], (), "untreated-dvt", ()),
    ("I82.90 unspecified vein", [condition("I82.90", age=3)], (), "untreated-dvt", ()),
    ("SNOMED 132281000119108", [condition("132281000119108", age=3)], (), "untreated-dvt", ()),
    ("undotted i82411", [condition("i82411", age=3)], (), "untreated-dvt", ()),
    ("aspirin is no anticoagulant", [condition("I82.401", age=3), med_statement(text="aspirin 81 mg")], (),
     "untreated-dvt", ()),
    ("on enoxaparin: no A.1", [condition("I82.401", age=3), med_statement(text="enoxaparin 40 mg")], (), None, ()),
    ("I80.3 unspecified vessels is not DVT", [condition("I80.3", age=3)], (), None, ()),
    ("15 days old: previous, not recent", [condition("I82.401", age=15)], (), None, ()),
    ("resolved: previous, not A.1", [condition("I82.401", age=3, status="resolved")], (), None, ()),
    ("medication statements not checked", [condition("I82.401", age=5)], ("medicationStatements",), "untreated-dvt",
     ("medicationStatements",)),
    ("both medication keys not checked", [condition("I82.401", age=5)], ("medicationRequests", "medicationStatements"),
     "untreated-dvt", ("medicationRequests", "medicationStatements")),
    ("anticoagulant found though a key was not checked",
     [condition("I82.401", age=5), med_request(rxcui="1364435")], ("medicationStatements",), None, ()),
    ("A.1 wins over two signs: one card",
     [condition("I82.401", age=5), condition("R22.41", age=3), condition("M79.661", age=2)], (), "untreated-dvt", ()),
    ("anticoagulated DVT and two signs: possible DVT",
     [condition("I82.401", age=5), condition("R22.41", age=3), condition("M79.661", age=2),
      med_statement(text="Xarelto 20 mg")], (), "possible-dvt", ()),
]


@pytest.mark.parametrize("name, resources, omit, card, unchecked", UNTREATED_TABLE, ids=[r[0] for r in UNTREATED_TABLE])
def test_untreated_dvt_table(engine, name, resources, omit, card, unchecked):
    result = run(engine, [CRAMPS, *resources], omit=omit)
    red_flag = result.evaluation.red_flag
    if card is None:
        assert not red_flag.fired
        assert shown(result)[0] not in ("untreated-dvt", "possible-dvt")
        return
    assert shown(result) == [card]
    assert red_flag.card_id == card and red_flag.fired
    if card == "untreated-dvt":
        assert red_flag.anticoagulant_not_checked == unchecked
        assert red_flag.findings[0].item == "recent_acute_dvt"
        assert {m.resource_id for m in red_flag.medications_read} == {
            r["id"] for r in resources if r["resourceType"].startswith("Medication")}


def test_untreated_dvt_card_has_no_suggestion_and_its_own_summary(engine):
    result = run(engine, [condition("I82.401", age=5), med_statement(text="aspirin 81 mg")])
    (card,) = result.response["cards"]
    assert card["source"]["topic"]["code"] == "untreated-dvt" and card["indicator"] == "critical"
    assert card["summary"] == "Recent DVT on record and no anticoagulant found: review treatment"
    assert not card.get("suggestions")  # neither a D-dimer nor a duplex once the DVT is diagnosed
    unchecked = run(engine, [condition("I82.401", age=5)], omit=("medicationRequests",)).response["cards"][0]
    assert unchecked["summary"] == "Recent DVT on record, anticoagulant not checked: review treatment"


def test_untreated_dvt_is_never_suppressed(engine):
    class AlwaysOverridden:
        def patient_key(self, patient_id): return "k"
        def overridden_rules(self, patient_key, windows): return set(windows)
        def record_shown(self, cards): pass
    suppressing = Engine(engine.ruleset, engine.drugs, clock=engine.clock, ledger=AlwaysOverridden())
    assert shown(run(suppressing, [condition("I82.401", age=5)])) == ["untreated-dvt"]
    assert [c["source"]["topic"]["code"] for c in run(suppressing, [condition("I82.401", age=5)]).response["cards"]] \
        == ["untreated-dvt"]


# ---------------------------------------------------------------- A.2 / A.3: possible DVT
RED_FLAG_TABLE = [
    ("acute DVT recent, no anticoagulant", [condition("I82.401", age=5)], ["acute_dvt"], "right"),
    ("acute DVT recent on apixaban text", [condition("I82.402", age=5), med_statement(text="Eliquis 5 mg")], [], None),
    ("acute DVT 15 days ago", [condition("I82.401", age=15)], [], None),
    ("two signs, right", [condition("R22.41", age=3), condition("M79.661", age=2)], ["two_signs"], "right"),
    ("two pain records are one sign", [condition("M79.661", age=3), condition("300954003", age=2)], [], None),
    ("sign outside 14 days", [condition("R22.41", age=15), condition("M79.661", age=2)], [], None),
    ("one sign plus cancer", [condition("L03.116", age=1), condition("C50.911")], ["sign_plus_wells"], "left"),
    ("one sign plus previous DVT", [condition("300954003", age=1), condition("Z86.718")], ["sign_plus_wells"], None),
    ("one sign plus paralysis", [condition("R22.42", age=1), condition("G81.90")], ["sign_plus_wells"], "left"),
    ("one sign alone", [condition("R22.41", age=1)], [], None),
    ("bilateral swelling is not one-sided", [condition("R22.43", age=1), condition("M79.661", age=1)], [], None),
    ("SNOMED oedema with a right body site is one-sided",
     [condition("102572006", age=1, body_site="Right lower leg"), condition("M79.661", age=1)], ["two_signs"], "right"),
    ("anticoagulant does not silence two signs",
     [condition("R22.41", age=3), condition("M79.661", age=2), med_statement(text="warfarin 5 mg")], ["two_signs"], "right"),
    ("signs on both sides: bilateral duplex", [condition("R22.41", age=3), condition("L03.116", age=2)], ["two_signs"], None),
]


@pytest.mark.parametrize("name, resources, pathways, side", RED_FLAG_TABLE, ids=[r[0] for r in RED_FLAG_TABLE])
def test_red_flag_table(engine, name, resources, pathways, side):
    outcome = run(engine, resources).evaluation.red_flag
    assert list(outcome.pathways) == pathways
    assert outcome.fired is bool(pathways)
    if pathways:
        assert outcome.side == side


def test_red_flag_hides_venous_and_conservative_cards(engine):
    result = run(engine, [CRAMPS, condition("I83.90"), condition("R22.41", age=1), condition("M79.661", age=1)],
                 birth_date="1950-01-01")
    assert result.evaluation.venous.fired and result.evaluation.red_flag.fired
    assert [o.card_id for o in result.evaluation.shown] == ["possible-dvt"]


# ---------------------------------------------------------------- B: venous index
VENOUS_TABLE = [
    ("varicose veins 3", [CRAMPS, condition("I83.90")], {"varicose_veins": 3}, True),
    ("I83.2 scores only skin changes 4", [CRAMPS, condition("I83.222")], {"venous_skin_changes": 4}, True),
    ("L97 alone is no venous ulcer", [CRAMPS, condition("L97.919")], {}, False),
    ("L97 with varicose record is", [CRAMPS, condition("L97.919"), condition("I83.90")],
     {"venous_skin_changes": 4, "varicose_veins": 3}, True),
    ("oedema 31 days is chronic 2", [CRAMPS, condition("R60.0", age=31), condition("I83.90")],
     {"chronic_leg_edema": 2, "varicose_veins": 3}, True),
    ("oedema 30 days is not chronic", [CRAMPS, condition("R60.0", age=30)], {}, False),
    ("chronic oedema with heart failure 1", [CRAMPS, condition("R60.0", age=100), condition("I50.9")],
     {"chronic_leg_edema": 1}, False),
    ("previous DVT 2 + age 1 = 3 fires", [CRAMPS, condition("Z86.718")], {"previous_dvt": 2, "age_50_or_over": 1}, True),
    ("risk factors alone never fire", [CRAMPS, observation("39156-5", value=35, unit="kg/m2"),
                                       observation("82810-3", answer=(LOINC, "LA15173-0"))],
     {"bmi_30_or_over": 1, "pregnancy": 1, "age_50_or_over": 1}, False),
    ("no documented cramps never fires", [condition("I83.90"), condition("I87.2")],
     {"varicose_veins": 3, "venous_insufficiency": 3, "age_50_or_over": 1}, False),
]


@pytest.mark.parametrize("name, resources, expected_items, fires", VENOUS_TABLE, ids=[r[0] for r in VENOUS_TABLE])
def test_venous_index_table(engine, name, resources, expected_items, fires):
    older = any(i in expected_items for i in ("age_50_or_over",))
    outcome = run(engine, resources, birth_date="1960-01-01" if older else "1990-01-01").evaluation.venous
    assert items(outcome) == expected_items
    assert outcome.fired is fires


# ---------------------------------------------------------------- C: contributors
CONTRIBUTOR_TABLE = [
    ("below threshold: no card", [med_request(rxcui="312961"), condition("E11.9"), condition("E78.5")], 2.0, None),
    ("threshold reached", [med_statement(text="spironolactone 25 mg"), condition("E03.9")], 3.0, "elevated-cramp-risk"),
    ("LABA by brand", [med_statement(text="Advair Diskus 250/50"), condition("K74.60")], 4.0, "elevated-cramp-risk"),
    ("cramps always show conservative care", [CRAMPS], 0.0, "conservative-care"),
    ("dialysis 2 not 3 with CKD", [condition("N18.4"), condition("Z99.2"), condition("E11.9")], 3.0, "elevated-cramp-risk"),
]


@pytest.mark.parametrize("name, resources, score, card", CONTRIBUTOR_TABLE, ids=[r[0] for r in CONTRIBUTOR_TABLE])
def test_contributor_table(engine, name, resources, score, card):
    result = run(engine, resources)
    assert result.evaluation.contributors.score == pytest.approx(score)
    assert [o.card_id for o in result.evaluation.shown] == ([card] if card else [])


LAB_TABLE = [
    ("diuretic, no labs: both", [CRAMPS, med_statement(text="furosemide 40 mg")], ("potassium", "magnesium")),
    ("diuretic, K present: magnesium only",
     [CRAMPS, med_statement(text="furosemide 40 mg"), observation("2823-3", value=4.0, unit="mmol/L", age=200)], ("magnesium",)),
    ("unspecified CKD counts", [CRAMPS, condition("N18.9")], ("potassium", "magnesium")),
    ("CKD stage 1 counts (CKD of any stage)", [CRAMPS, condition("431855005")], ("potassium", "magnesium")),
    ("no diuretic, no kidney or liver disease: none", [CRAMPS, condition("E11.9")], ()),
    ("K older than 12 months is missing",
     [CRAMPS, condition("K70.30"), observation("2823-3", value=4.0, unit="mmol/L", age=366),
      observation("2601-3", value=0.8, unit="mmol/L", age=20)], ("potassium",)),
]


@pytest.mark.parametrize("name, resources, missing", LAB_TABLE, ids=[r[0] for r in LAB_TABLE])
def test_lab_suggestion_table(engine, name, resources, missing):
    assert run(engine, resources).evaluation.contributors.missing_labs == missing


def test_card_detail_is_tailored_advice(engine):
    edema = run(engine, [CRAMPS, condition("R60.0", age=5)]).response["cards"][0]["detail"]
    plain = run(engine, [CRAMPS]).response["cards"][0]["detail"]
    assert "Compression hose" in edema and "Compression hose" not in plain
    low_mg = run(engine, [CRAMPS, observation("2601-3", value=0.5, unit="mmol/L")]).response["cards"][0]["detail"]
    assert "Correct the documented low potassium or magnesium" in low_mg
    assert "routine magnesium does not help" in plain and "routine magnesium does not help" not in low_mg


# ---------------------------------------------------------------- text fallback (Revision 2026-12 point 3)
TEXT_TABLE = [
    # name, records, fact, expected (RULES.md, Text fallback for Conditions)
    ("code.text nocturnal leg cramps", [text_condition("Nocturnal leg cramps")], "documented_leg_cramps", True),
    ("display only: Charley horse", [text_condition(displays=("Charley horse",))], "documented_leg_cramps", True),
    ("muscle cramps of the calf", [text_condition("Muscle cramps of the calf, at night")], "documented_leg_cramps", True),
    ("case-insensitive", [text_condition("LEG CRAMPS")], "documented_leg_cramps", True),
    ("whole words only: legcramps", [text_condition("legcramps")], "documented_leg_cramps", False),
    ("whole words only: leg crampsy", [text_condition("leg crampsy")], "documented_leg_cramps", False),
    ("negated: no", [text_condition("No leg cramps")], "documented_leg_cramps", False),
    ("negated: denies", [text_condition("Patient denies leg cramps")], "documented_leg_cramps", False),
    ("negated: negative for", [text_condition("Negative for calf cramps")], "documented_leg_cramps", False),
    ("uncertain: ? anywhere", [text_condition("leg cramps?")], "documented_leg_cramps", False),
    ("uncertain: r/o", [text_condition("r/o varicose veins")], "varicose_veins", False),
    ("uncertain: possible", [text_condition("Possible venous insufficiency")], "venous_insufficiency", False),
    ("history of", [text_condition("History of leg cramps")], "documented_leg_cramps", False),
    ("h/o", [text_condition("h/o leg cramps")], "documented_leg_cramps", False),
    ("family history", [text_condition("Family history: varicose veins")], "varicose_veins", False),
    ("resolved in the text", [text_condition("Leg cramps, resolved")], "documented_leg_cramps", False),
    ("cue words inside other words do not count: nocturnal, knot",
     [text_condition("Nocturnal leg cramps, knot-like")], "documented_leg_cramps", True),
    ("each text on its own: a clean display is enough",
     [text_condition("No leg cramps today", displays=("Leg cramps",))], "documented_leg_cramps", True),
    ("a coding in a value set: the text is not read", [text_condition("varicose veins", code=(ICD10, "R25.2"))],
     "varicose_veins", False),
    ("a coding in no value set: the text is read", [text_condition("Leg cramps", code=(ICD10, "R69"))],
     "documented_leg_cramps", True),
    ("undotted coding in a value set still wins", [text_condition("varicose veins", code=(ICD10, "R252"))],
     "varicose_veins", False),
    ("resolved status: not active", [text_condition("Leg cramps", status="resolved")], "documented_leg_cramps", False),
    # never a critical card from free text
    ("text never yields an acute DVT", [text_condition("Acute DVT left leg", age=2)], "recent_acute_dvt", False),
    ("text never yields a previous DVT", [text_condition("Deep vein thrombosis 2019")], "previous_dvt", False),
    ("text never yields cancer (a Wells item)", [text_condition("Active breast cancer")], "active_cancer", False),
]


@pytest.mark.parametrize("name, resources, fact, expected", TEXT_TABLE, ids=[r[0] for r in TEXT_TABLE])
def test_condition_text_table(engine, name, resources, fact, expected):
    facts = run(engine, resources).facts
    assert facts.has(fact) is expected
    if expected:
        assert all(source.text_matched for source in facts.facts[fact].sources)


def test_text_never_raises_a_critical_card(engine):
    """Right leg swelling and calf pain as text, two days old: would be two A signs if coded; never from text."""
    texts = [text_condition("Right leg swelling", age=2), text_condition("Calf pain, right", age=2),
             text_condition("DVT right leg", age=2), CRAMPS]
    result = run(engine, texts)
    assert not result.evaluation.red_flag.fired
    assert shown(result) == ["conservative-care"]
    assert result.facts.has("documented_leg_cramps")


def test_text_matched_varicose_record_qualifies_an_l97_ulcer(engine):
    result = run(engine, [CRAMPS, condition("L97.919"), text_condition("Varicose veins of both legs")],
                 birth_date="1990-01-01")
    assert items(result.evaluation.venous) == {"venous_skin_changes": 4, "varicose_veins": 3}
    assert shown(result) == ["venous-duplex-workup"]


def test_text_matched_chronic_oedema_scores_in_b(engine):
    result = run(engine, [CRAMPS, text_condition("Swollen legs", age=60), text_condition("Varicosities")],
                 birth_date="1990-01-01")
    assert items(result.evaluation.venous) == {"chronic_leg_edema": 2, "varicose_veins": 3}


def test_cue_list_is_rule_set_data(engine):
    """Admins tune the cues: without "history of", the text counts."""
    import yaml
    from importlib import resources
    from cds_service.ruleset.loader import parse_ruleset
    data = yaml.safe_load(resources.files("cds_service").joinpath("data/ruleset.yaml").read_text())
    data["condition_text"]["cues"].remove("history of")
    data["condition_text"]["terms"]["leg_cramp"].append("crampi")
    tuned = Engine(parse_ruleset(yaml.safe_dump(data), "tuned.yaml"), engine.drugs, clock=engine.clock)
    assert run(tuned, [text_condition("History of leg cramps")]).facts.has("documented_leg_cramps")
    assert run(tuned, [text_condition("Crampi")]).facts.has("documented_leg_cramps")
    assert not run(engine, [text_condition("Crampi")]).facts.has("documented_leg_cramps")


# ---------------------------------------------------------------- procedures (Revision 2026-12 point 4)
SURGERY_TABLE = [
    # one recent sign (left cellulitis, 1 day) and: -> A.3 fires?
    ("completed surgery 10 days ago", [procedure(age=10, surgical=True)], (), True),
    ("completed surgery 28 days ago", [procedure(age=28, surgical=True)], (), True),
    ("29 days ago: not recent", [procedure(age=29, surgical=True)], (), False),
    ("in progress: not completed", [procedure(age=5, surgical=True, status="in-progress")], (), False),
    ("not a surgical category", [procedure(age=5)], (), False),
    ("undated: never recent", [procedure(age=None, surgical=True)], (), False),
    ("performedPeriod.end 20 days ago (start 60)", [procedure(surgical=True, period_end_age=20)], (), True),
    ("performedPeriod.end 30 days ago", [procedure(surgical=True, period_end_age=30)], (), False),
]


@pytest.mark.parametrize("name, resources, omit, fires", SURGERY_TABLE, ids=[r[0] for r in SURGERY_TABLE])
def test_recent_surgery_table(engine, name, resources, omit, fires):
    result = run(engine, [condition("L03.116", age=1), *resources], omit=omit)
    assert result.evaluation.red_flag.fired is fires
    assert list(result.evaluation.red_flag.pathways) == (["sign_plus_wells"] if fires else [])


def test_surgery_not_checked_is_named_as_what_could_change_the_card(engine):
    result = run(engine, [CRAMPS, condition("L03.116", age=1)], omit=("procedures",))
    (outcome,) = result.evaluation.shown
    assert outcome.card_id == "conservative-care"
    assert [(m.reason, m.card_id, m.keys) for m in outcome.missing if m.reason == "surgery_not_checked"] == [
        ("surgery_not_checked", "possible-dvt", ("procedures",))]
    sent = run(engine, [CRAMPS, condition("L03.116", age=1)]).evaluation.shown[0]
    assert not [m for m in sent.missing if m.reason == "surgery_not_checked"]


VARICOSE = condition("I83.90")
DUPLEX_TABLE = [
    # documented cramps + varicose veins (index 3) and: -> card shown, duplex record ids on the C card
    ("no duplex: B", [], (), "venous-duplex-workup"),
    ("completed duplex Procedure 20 days ago", [procedure((CPT, "93970"), age=20)], (), "conservative-care"),
    ("completed duplex 180 days ago", [procedure((CPT, "93971"), age=180)], (), "conservative-care"),
    ("completed duplex 181 days ago: B", [procedure((CPT, "93970"), age=181)], (), "venous-duplex-workup"),
    ("duplex Procedure in progress: B", [procedure((CPT, "93970"), age=5, status="in-progress")], (),
     "venous-duplex-workup"),
    ("duplex Procedure not done: B", [procedure((CPT, "93970"), age=5, status="not-done")], (), "venous-duplex-workup"),
    ("undated duplex: B", [procedure((CPT, "93970"), age=None)], (), "venous-duplex-workup"),
    ("LOINC 48691-0 right, by Procedure", [procedure((LOINC, "48691-0"), age=5)], (), "conservative-care"),
    ("ServiceRequest active", [service_request((CPT, "93970"), status="active")], (), "conservative-care"),
    ("ServiceRequest on-hold", [service_request((CPT, "93971"), status="on-hold")], (), "conservative-care"),
    ("ServiceRequest completed, LOINC 46364-6", [service_request((LOINC, "46364-6"), status="completed")], (),
     "conservative-care"),
    ("ServiceRequest draft: B", [service_request(status="draft")], (), "venous-duplex-workup"),
    ("ServiceRequest revoked: B", [service_request(status="revoked")], (), "venous-duplex-workup"),
    ("ServiceRequest 181 days old: B", [service_request(age=181)], (), "venous-duplex-workup"),
    ("a D-dimer is no duplex: B", [service_request((CPT, "85379"))], (), "venous-duplex-workup"),
    ("procedures not checked, none found: B", [], ("procedures",), "venous-duplex-workup"),
    ("procedures not checked, a request found: C", [service_request()], ("procedures",), "conservative-care"),
    ("service requests not checked, a Procedure found: C", [procedure((CPT, "93970"), age=3)], ("serviceRequests",),
     "conservative-care"),
]


@pytest.mark.parametrize("name, resources, omit, card", DUPLEX_TABLE, ids=[r[0] for r in DUPLEX_TABLE])
def test_duplex_on_record_table(engine, name, resources, omit, card):
    result = run(engine, [CRAMPS, VARICOSE, *resources], omit=omit, birth_date="1990-01-01")
    assert shown(result) == [card]
    venous, contributors = result.evaluation.venous, result.evaluation.contributors
    assert venous.score == 3  # B's criteria are met in every row; only the duplex decides
    if card == "conservative-care":
        assert not venous.fired and "venous duplex on record" in venous.notes
        assert {p.resource_id for p in contributors.duplex_on_record} == {r["id"] for r in resources}
        assert all(p.date is not None and p.code for p in contributors.duplex_on_record)
    else:
        assert venous.duplex_not_checked == omit
        assert [m.keys for m in venous.missing if m.reason == "duplex_not_checked"] == ([omit] if omit else [])


def test_duplex_on_record_without_b_criteria_is_not_named(engine):
    """No venous sign: B would not fire anyway, so the conservative-care card needs no duplex line."""
    result = run(engine, [CRAMPS, procedure((CPT, "93970"), age=20)])
    assert shown(result) == ["conservative-care"] and result.evaluation.contributors.duplex_on_record == ()


def test_suppressed_b_plays_no_part_when_a_duplex_is_on_record(engine):
    class Overridden:
        def __init__(self, rules): self.rules = rules
        def patient_key(self, patient_id): return "k"
        def overridden_rules(self, patient_key, windows): return set(windows) & set(self.rules)
        def record_shown(self, cards): pass

    def cards(ledger_rules, extra):
        suppressing = Engine(engine.ruleset, engine.drugs, clock=engine.clock, ledger=Overridden(ledger_rules))
        result = run(suppressing, [CRAMPS, VARICOSE, *extra], birth_date="1990-01-01")
        return [c["source"]["topic"]["code"] for c in result.response["cards"]]

    assert cards({"venous-duplex-workup"}, []) == []  # a suppressed B still hides C
    assert cards({"venous-duplex-workup"}, [procedure((CPT, "93970"), age=20)]) == ["conservative-care"]


# ---------------------------------------------------------------- what could not be checked, what is missing
NOT_CHECKED_TABLE = [
    # chart, omitted keys, card shown, the keys its card names (only keys its rule reads)
    ("untreated DVT: observations are not its business", [condition("I82.401", age=3)],
     ("observations", "procedures"), "untreated-dvt", ()),
    ("untreated DVT: a medication key is", [condition("I82.401", age=3)], ("medicationRequests", "observations"),
     "untreated-dvt", ("medicationRequests",)),
    ("possible DVT: procedures are, medications not", [condition("R22.41", age=3), condition("M79.661", age=2)],
     ("procedures", "medicationStatements"), "possible-dvt", ("procedures",)),
    ("B: medications are not its business", [CRAMPS, VARICOSE], ("medicationRequests", "serviceRequests"),
     "venous-duplex-workup", ("serviceRequests",)),
    ("C: procedures are not its business", [CRAMPS], ("procedures", "observations"), "conservative-care",
     ("observations",)),
]


@pytest.mark.parametrize("name, resources, omit, card, named", NOT_CHECKED_TABLE, ids=[r[0] for r in NOT_CHECKED_TABLE])
def test_not_checked_names_only_keys_the_rule_reads(engine, name, resources, omit, card, named):
    result = run(engine, resources, omit=omit, birth_date="1990-01-01")
    (outcome,) = result.evaluation.shown
    assert outcome.card_id == card
    assert set(result.facts.not_checked) == set(omit)
    assert outcome.not_checked == named


def _missing(outcome):
    return sorted((m.reason, m.item or m.test or "", m.points) for m in outcome.missing
                  if m.reason != "surgery_not_checked")


MISSING_TABLE = [
    # chart, omitted keys, birth date, card shown, its missing data (reason, item, points), hand-worked
    ("B fired, no BMI: +1 possible", [CRAMPS, VARICOSE], (), "1990-01-01", "venous-duplex-workup",
     [("bmi_absent", "bmi_30_or_over", 1)]),
    ("B fired, BMI 25 on record: nothing missing", [CRAMPS, VARICOSE, observation("39156-5", value=25, unit="kg/m2")],
     (), "1990-01-01", "venous-duplex-workup", []),
    ("B fired, BMI 31: scored, nothing missing", [CRAMPS, VARICOSE, observation("39156-5", value=31, unit="kg/m2")],
     (), "1990-01-01", "venous-duplex-workup", []),
    ("B fired, observations not checked", [CRAMPS, VARICOSE], ("observations",), "1990-01-01", "venous-duplex-workup",
     [("bmi_not_checked", "bmi_30_or_over", 1)]),
    ("B fired, BMI older than 12 months", [CRAMPS, VARICOSE, observation("39156-5", value=35, unit="kg/m2", age=366)],
     (), "1990-01-01", "venous-duplex-workup", [("bmi_absent", "bmi_30_or_over", 1)]),
    ("B fired, no birth date", [CRAMPS, VARICOSE, observation("39156-5", value=25, unit="kg/m2")], (), None,
     "venous-duplex-workup", [("birth_date_absent", "age_50_or_over", 1)]),
    # previous DVT 2 (objective sign), age 36, no BMI: index 2 of 3; a BMI of 30 would make it 3 -> B
    ("C shown, BMI would bring B", [CRAMPS, condition("Z86.718")], (), "1990-01-01", "conservative-care",
     [("bmi_absent", "bmi_30_or_over", 1), ("lab_absent", "low_magnesium", 1), ("lab_absent", "low_potassium", 1),
      ("venous_would_fire", "", 1)]),
    # previous DVT 2, BMI 25: nothing can bring B (index 2, age 36)
    ("C shown, B out of reach", [CRAMPS, condition("Z86.718"), observation("39156-5", value=25, unit="kg/m2")], (),
     "1990-01-01", "conservative-care", [("lab_absent", "low_magnesium", 1), ("lab_absent", "low_potassium", 1)]),
    # risk 3 (spironolactone 2 + hypothyroidism 1), labs absent, medication statements not checked:
    # the drug items not scored could add 1.5 + 1 + 2 + 0.5 = 5
    ("elevated risk, medication statements not checked",
     [med_request(rxcui="313096"), condition("E03.9"), observation("2823-3", value=4.0, unit="mmol/L"),
      observation("2601-3", value=0.8, unit="mmol/L")], ("medicationStatements",), "1990-01-01", "elevated-cramp-risk",
     [("medications_not_checked", "", 5)]),
    ("elevated risk, observations not checked: one line for both labs",
     [med_request(rxcui="313096"), condition("E03.9")], ("observations",), "1990-01-01", "elevated-cramp-risk",
     [("lab_not_checked", "", 1)]),
    ("elevated risk, no birth date: age 65 or over would add 1",
     [med_request(rxcui="313096"), condition("E03.9"), observation("2823-3", value=4.0, unit="mmol/L"),
      observation("2601-3", value=0.8, unit="mmol/L")], (), None, "elevated-cramp-risk",
     [("birth_date_absent", "age_65_or_over", 1)]),
]


@pytest.mark.parametrize("name, resources, omit, birth, card, missing", MISSING_TABLE, ids=[r[0] for r in MISSING_TABLE])
def test_missing_data_that_could_change_the_card(engine, name, resources, omit, birth, card, missing):
    result = run(engine, resources, omit=omit, birth_date=birth)
    (outcome,) = result.evaluation.shown
    assert outcome.card_id == card
    assert _missing(outcome) == sorted(missing)


def test_venous_would_fire_says_the_score_it_would_reach(engine):
    result = run(engine, [CRAMPS, condition("Z86.718")], birth_date=None)  # previous DVT 2; BMI 1 + age 1 possible
    (would,) = [m for m in result.evaluation.shown[0].missing if m.reason == "venous_would_fire"]
    assert (would.card_id, would.points, would.score, would.threshold) == ("venous-duplex-workup", 2, 4, 3)


def test_only_procedures_a_rule_reads_are_validated(engine):
    """A Procedure neither surgical nor a duplex is left out unvalidated (an invalid one is not even
    reported); an invalid duplex is validated, skipped and reported; a valid one is read."""
    irrelevant = procedure((SNOMED, "80146002"), age=3) | {"performedDateTime": "not a date"}
    broken_duplex = procedure((CPT, "93970"), age=3) | {"performedDateTime": "not a date"}
    duplex = procedure((CPT, "93971"), age=3)
    surgery = procedure((SNOMED, "80146002"), age=3, surgical=True)
    facts = run(engine, [CRAMPS, irrelevant, broken_duplex, duplex, surgery]).facts
    assert [(s.resource_type, s.resource_id) for s in facts.skipped] == [("Procedure", broken_duplex["id"])]
    assert {s.resource_id for s in facts.facts["venous_duplex_on_record"].sources} == {duplex["id"]}
    assert {s.resource_id for s in facts.facts["recent_surgery"].sources} == {surgery["id"]}


def test_procedure_prefilter_steps_aside_for_prefixes(engine):
    import yaml
    from importlib import resources
    from cds_service.ruleset.loader import parse_ruleset
    data = yaml.safe_load(resources.files("cds_service").joinpath("data/ruleset.yaml").read_text())
    assert engine.ruleset.procedure_codes == {(SNOMED, "387713003"), (CPT, "93970"), (CPT, "93971"),
                                              (LOINC, "46364-6"), (LOINC, "48691-0"), (LOINC, "48692-8")}
    data["value_sets"]["venous_duplex"]["prefixes"] = ["cpt|9397"]
    assert parse_ruleset(yaml.safe_dump(data), "x.yaml").procedure_codes is None


def test_every_patient_view_card_says_which_keys_its_rule_reads(engine):
    from cds_service.engine.rules import KEYS_READ
    from cds_service.ruleset.card_ids import PATIENT_VIEW_CARD_IDS
    templates = {t.key for t in engine.registry.get("leg-cramp-patient-view").templates}
    assert set(KEYS_READ) == set(PATIENT_VIEW_CARD_IDS)
    assert all(set(keys) <= templates for keys in KEYS_READ.values())
