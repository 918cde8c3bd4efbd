"""The drug table: code first, whole-word text fallback, and no drift from the shared sources.

Also the RxNorm name parser (tools/rxnorm_names.py) and the builder's name mapping: every concept of
rxnorm-sandbox-medications.csv is checked against the ingredients its name holds (found here by a
whole-word search, independently of the builder), and the build's summary against this file's own count.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cds_service.engine.chart import build_chart
from cds_service.engine.drugs import RXNORM, DrugMatch, DrugTable
from cds_service.engine.facts import PatientFacts, extract_facts
from cds_service.ruleset.loader import load_default_ruleset

REPO = Path(__file__).resolve().parents[2]
SHARED_CLINICAL = REPO.parent / "shared" / "clinical"
SEEN_CSV = SHARED_CLINICAL / "drug-codes-seen.csv"
SANDBOX_CSV = SHARED_CLINICAL / "rxnorm-sandbox-medications.csv"
BRANDS_CSV = SHARED_CLINICAL / "brand-names.csv"
DATA = REPO / "cds_service" / "data" / "drugs"
CSV_NAMES = ("ingredients.csv", "clinical_drugs.csv", "brand_names.csv")
DIURETIC_CLASSES = {"loop", "thiazide", "potassium-sparing"}

needs_shared = pytest.mark.skipif(not SHARED_CLINICAL.is_dir(), reason="../shared/clinical not present")


@pytest.fixture(scope="module")
def table() -> DrugTable:
    return DrugTable.load_default()


def _load_tool(name: str):
    """A module of tools/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def build_run(tmp_path_factory) -> tuple[str, Path]:
    """One run of the builder into a fresh directory: (its stdout, the output directory)."""
    if not SHARED_CLINICAL.is_dir():
        pytest.skip("../shared/clinical not present")
    out = tmp_path_factory.mktemp("drugs")
    script = REPO / "tools" / "build_drug_table.py"
    done = subprocess.run(
        [sys.executable, str(script), "--shared", str(SHARED_CLINICAL.parent), "--out", str(out)],
        check=True, capture_output=True, text=True, cwd=REPO,
    )
    return done.stdout, out


def _seen_rows() -> list[dict[str, str]]:
    if not SEEN_CSV.is_file():
        return []
    with SEEN_CSV.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _split(cell: str) -> frozenset[str]:
    return frozenset(p for p in cell.split("+") if p and p != "none")


# ---------------------------------------------------------------- codes seen in the Synthea data


@needs_shared
@pytest.mark.parametrize("row", _seen_rows(), ids=lambda r: f"{r['rxcui']}-{r['display_as_seen']}")
def test_drugs_every_seen_code_maps_by_code(table, row):
    match = table.match_code(RXNORM, row["rxcui"])
    assert match is not None
    assert match.method == "code"
    assert match.matched == row["rxcui"]
    assert match.ingredients == _split(row["ingredients"])
    assert match.classes == _split(row["class"])


@needs_shared
def test_drugs_seen_csv_is_not_empty():
    assert len(_seen_rows()) >= 11


# ---------------------------------------------------------------- codes


def test_drugs_combination_product_has_both_classes(table):
    match = table.match_code(RXNORM, "310812")  # hydrochlorothiazide 25 MG / triamterene 37.5 MG
    assert match.ingredients == {"hydrochlorothiazide", "triamterene"}
    assert match.classes == {"thiazide", "potassium-sparing"}


def test_drugs_unknown_co_ingredient_is_not_classed(table):
    match = table.match_code(RXNORM, "404011")  # amlodipine 5 MG / atorvastatin 80 MG
    assert match.ingredients == {"atorvastatin"}
    assert match.classes == {"statin"}


def test_drugs_ingredient_code_maps(table):
    assert table.match_code(RXNORM, "4603") == DrugMatch(
        frozenset({"furosemide"}), frozenset({"loop"}), "code", "4603", (("furosemide", frozenset({"loop"})),)
    )


def test_drugs_rxnorm_oid_system_is_accepted(table):
    assert table.match_code("urn:oid:2.16.840.1.113883.6.88", "310812") is not None


@pytest.mark.parametrize("system", [None, "http://snomed.info/sct", "http://www.nlm.nih.gov/research/umls/rxnorm/"])
def test_drugs_other_systems_do_not_match_by_code(table, system):
    assert table.match_code(system, "310812") is None


def test_drugs_unknown_code_is_none(table):
    assert table.match_code(RXNORM, "999999999") is None
    assert table.match_code(RXNORM, None) is None


# ---------------------------------------------------------------- concept boundaries


def test_drugs_acetazolamide_is_never_a_diuretic(table):
    assert table.classes_of("acetazolamide") == {"carbonic-anhydrase-inhibitor"}
    assert not table.match_code(RXNORM, "167").classes & DIURETIC_CLASSES
    assert not table.match_text("Acetazolamide 250 MG Oral Tablet").classes & DIURETIC_CLASSES


@pytest.mark.parametrize("text", ["Clopidogrel 75 MG Oral Tablet", "Aspirin 81 MG Oral Tablet"])
def test_drugs_antiplatelets_are_not_anticoagulants(table, text):
    match = table.match_text(text)
    assert match is not None and match.classes == frozenset()
    assert "anticoagulant" not in table.match_code(RXNORM, "309362").classes


@pytest.mark.parametrize(
    "ingredient", ["warfarin", "apixaban", "rivaroxaban", "dabigatran", "edoxaban", "enoxaparin", "heparin", "fondaparinux"]
)
def test_drugs_anticoagulants(table, ingredient):
    assert table.classes_of(ingredient) == {"anticoagulant"}


@pytest.mark.parametrize("ingredient", ["salmeterol", "formoterol", "arformoterol", "vilanterol", "olodaterol", "indacaterol"])
def test_drugs_labas(table, ingredient):
    assert table.classes_of(ingredient) == {"laba"}


@pytest.mark.parametrize("ingredient", ["albuterol", "fluticasone"])
def test_drugs_short_acting_and_steroid_inhalers_are_not_laba(table, ingredient):
    assert table.classes_of(ingredient) == frozenset()


def test_drugs_quinine(table):
    assert table.match_code(RXNORM, "9071").classes == {"quinine"}
    assert table.match_text("Qualaquin 324 MG").classes == {"quinine"}


def test_drugs_ingredient_names(table):
    names = table.ingredient_names
    assert {"furosemide", "ethacrynic acid", "simvastatin", "warfarin", "clopidogrel"} <= names
    assert table.classes_of("Ethacrynic Acid") == {"loop"}
    assert table.classes_of("not-a-drug") == frozenset()


# ---------------------------------------------------------------- text fallback


def test_drugs_brand_text_only_matches_by_text(table):
    match = table.match_medication([], "Lasix 40mg")
    assert match == DrugMatch(frozenset({"furosemide"}), frozenset({"loop"}), "text", "Lasix",
                              (("furosemide", frozenset({"loop"})),))


def test_drugs_misspelled_text_only_is_unmapped(table):
    assert table.match_medication([], "Simvistatin 10 MG") is None


def test_drugs_advair_is_laba(table):
    match = table.match_text("Advair Diskus 250/50")
    assert match.classes == {"laba"}
    assert match.ingredients == {"fluticasone", "salmeterol"}


def test_drugs_unknown_code_falls_back_to_display(table):
    match = table.match_medication([(RXNORM, "000000", "Furosemide 20 MG Oral Tablet")], None)
    assert match is not None
    assert match.method == "text"
    assert match.ingredients == {"furosemide"}
    assert match.classes == {"loop"}


def test_drugs_code_wins_over_text(table):
    match = table.match_medication([(RXNORM, "312961", "Simvastatin 20 MG")], "Lasix 40 mg")
    assert match.method == "code"
    assert match.ingredients == {"simvastatin"}


def test_drugs_codes_are_unioned(table):
    match = table.match_medication([(RXNORM, "312961", None), (RXNORM, "313988", None), (RXNORM, "0", None)], None)
    assert match.method == "code"
    assert match.ingredients == {"simvastatin", "furosemide"}
    assert match.matched == "312961+313988"


@pytest.mark.parametrize("text", ["Furosemidex 20 MG", "antifurosemide", "Lasixx"])
def test_drugs_text_needs_whole_words(table, text):
    assert table.match_text(text) is None


def test_drugs_multi_word_ingredient(table):
    match = table.match_text("ETHACRYNIC ACID 25 MG Oral Tablet")
    assert match.ingredients == {"ethacrynic acid"} and match.classes == {"loop"}


def test_drugs_text_naming_two_ingredients_maps_to_both(table):
    match = table.match_text("hydrochlorothiazide 12.5 MG / lisinopril 10 MG Oral Tablet; spironolactone")
    assert match.ingredients == {"hydrochlorothiazide", "spironolactone"}
    assert match.classes == {"thiazide", "potassium-sparing"}


def test_drugs_no_match_is_none(table):
    assert table.match_medication([(RXNORM, "1", "Lisinopril 10 MG Oral Tablet")], "lisinopril") is None
    assert table.match_text(None) is None
    assert table.match_text("") is None


def test_drugs_from_rows():
    table = DrugTable.from_rows(
        [{"ingredient": "furosemide", "rxcui": "4603", "classes": "loop"}],
        [{"rxcui": "313988", "display": "furosemide 40 MG Oral Tablet", "ingredients": "furosemide", "classes": "loop"}],
        [{"brand": "Lasix", "ingredients": "furosemide", "classes": "loop"}],
    )
    assert table.match_code(RXNORM, "313988").classes == {"loop"}
    assert table.match_text("lasix").matched == "Lasix"
    assert table.ingredient_names == {"furosemide"}


# ---------------------------------------------------------------- the shipped table vs its sources


@needs_shared
def test_drugs_shipped_csvs_equal_a_fresh_build(build_run):
    _stdout, out = build_run
    for name in CSV_NAMES:
        assert (out / name).read_bytes() == (DATA / name).read_bytes(), f"{name} drifted: rerun the builder"


@needs_shared
def test_drugs_every_vsac_rxnorm_code_is_in_the_table(table):
    for path in sorted((SHARED_CLINICAL / "vsac").glob("valueset-*.json")):
        contains = json.loads(path.read_text(encoding="utf-8")).get("expansion", {}).get("contains", [])
        for item in contains:
            if item.get("system") == RXNORM:
                assert table.match_code(RXNORM, item["code"]) is not None, (path.name, item)


# ---------------------------------------------------------------- each ingredient under its own class


def _by_ingredient(table: DrugTable, ingredients) -> tuple:
    return tuple((name, table.classes_of(name)) for name in sorted(ingredients))


@pytest.mark.parametrize("how", ["code", "text"])
def test_drugs_dyazide_keeps_each_ingredient_under_its_own_class(table, how):
    # 208124 is "Hydrochlorothiazide 25 MG / Triamterene 37.5 MG Oral Capsule [Dyazide]"
    match = table.match_code(RXNORM, "208124") if how == "code" else table.match_text("Dyazide 37.5/25")
    assert match.by_ingredient == (("hydrochlorothiazide", frozenset({"thiazide"})),
                                   ("triamterene", frozenset({"potassium-sparing"})))
    assert match.ingredients_in("thiazide") == ("hydrochlorothiazide",)
    assert match.ingredients_in("potassium-sparing") == ("triamterene",)
    assert match.ingredients_in("loop") == ()


def test_drugs_union_of_codes_keeps_per_ingredient_classes(table):
    match = table.match_medication([(RXNORM, "208124", None), (RXNORM, "313988", None)], None)
    assert match.ingredients_in("loop") == ("furosemide",)
    assert dict(match.by_ingredient)["triamterene"] == {"potassium-sparing"}


def test_drugs_unclassed_ingredient_is_listed_without_class(table):
    match = table.match_text("Aspirin 81 MG / warfarin 5 MG")
    assert match.by_ingredient == (("aspirin", frozenset()), ("warfarin", frozenset({"anticoagulant"})))


def test_drugs_from_rows_refuses_a_class_no_ingredient_has():
    with pytest.raises(ValueError, match="313988"):
        DrugTable.from_rows(
            [{"ingredient": "furosemide", "rxcui": "4603", "classes": "loop"}],
            [{"rxcui": "313988", "ingredients": "furosemide", "classes": "loop+thiazide"}],
            [],
        )


# ---------------------------------------------------------------- the RxNorm name parser

PARSED = [
    # name, term type, (ingredient text, strength) per component, brand, dose form, quantity
    ("Quinine 325 MG", "SCDC", [("Quinine", "325 MG")], None, None, None),
    ("Quinine Sulfate 324 MG [Qualaquin]", "SBDC", [("Quinine Sulfate", "324 MG")], "Qualaquin", None, None),
    ("Quinine Sulfate 260 MG Oral Tablet", "SCD", [("Quinine Sulfate", "260 MG")], None, "Oral Tablet", None),
    ("Quinine Sulfate 324 MG Oral Capsule [Qualaquin]", "SBD", [("Quinine Sulfate", "324 MG")], "Qualaquin",
     "Oral Capsule", None),
    ("24 HR Lovastatin 20 MG / Niacin 1000 MG Extended Release Oral Tablet [Advicor]", "SBD",
     [("Lovastatin", "20 MG"), ("Niacin", "1000 MG")], "Advicor", "Extended Release Oral Tablet", "24 HR"),
    ("10 ML Furosemide 10 MG/ML Injection", "SCD", [("Furosemide", "10 MG/ML")], None, "Injection", "10 ML"),
    ("120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler", "SCD",
     [("Fluticasone propionate", "0.044 MG/ACTUAT")], None, "Metered Dose Inhaler", "120 ACTUAT"),
    ("Hydrochlorothiazide / Triamterene Pill", "SCDG", [("Hydrochlorothiazide", None), ("Triamterene Pill", None)],
     None, None, None),
    ("Quinine Oral Product", "SCDG", [("Quinine Oral Product", None)], None, None, None),
    ("Quinine Oral Capsule [Qualaquin]", "SBDF", [("Quinine Oral Capsule", None)], "Qualaquin", None, None),
    ("{7 (Quinine 5 MG Oral Tablet) / 7 (Inert Ingredients 1 MG Oral Tablet) } Pack [Example]", "BPCK",
     [("Quinine", "5 MG"), ("Inert Ingredients", "1 MG")], "Example", "Pack", None),
    ("Quinine 5 MG Oral Tablet / Niacin 5 MG", "?", [("Quinine 5 MG Oral Tablet", None), ("Niacin 5 MG", None)],
     None, None, None),
]


@pytest.mark.parametrize("name, tty, components, brand, form, quantity", PARSED, ids=[p[0] for p in PARSED])
def test_rxnorm_name_parser(name, tty, components, brand, form, quantity):
    parsed = _load_tool("rxnorm_names").parse_name(name)
    assert parsed.term_type == tty
    assert [(c.text, c.strength) for c in parsed.components] == components
    assert (parsed.brand, parsed.dose_form, parsed.quantity) == (brand, form, quantity)


@pytest.fixture(scope="module")
def mapper():
    """The builder's name mapper over a small table: quinine, aspirin, hydrochlorothiazide, triamterene."""
    builder = _load_tool("build_drug_table")
    table = {name: builder.Ingredient(name, classes=classes) for name, classes in [
        ("quinine", {"quinine"}), ("aspirin", set()), ("hydrochlorothiazide", {"thiazide"}),
        ("triamterene", {"potassium-sparing"}), ("ethacrynic acid", {"loop"})]}
    mapper = builder.NameMapper(table, [("Qualaquin", {"quinine"}, {"quinine"}),
                                        ("Dyazide", {"hydrochlorothiazide", "triamterene"}, set())])
    mapper.learn_brands([("1", "Aspirin 81 MG Oral Tablet [Bayer Aspirin]")])
    return mapper


@pytest.mark.parametrize("name, tty, ingredients", [
    ("Quinine Sulfate 260 MG Oral Tablet", "SCD", {"quinine"}),
    ("Quinine Sulfate 324 MG [Qualaquin]", "SBDC", {"quinine"}),
    ("Qualaquin Pill", "SBDG", {"quinine"}),
    ("Quinine Pill", "SCDG", {"quinine"}),
    ("Bayer Aspirin Pill", "SBDG", {"aspirin"}),  # a brand learned from its branded drugs
    ("Triamterene / Hydrochlorothiazide Pill", "SCDG", {"hydrochlorothiazide", "triamterene"}),
    ("Hydrochlorothiazide 25 MG / Triamterene 37.5 MG Oral Capsule [Dyazide]", "SBD",
     {"hydrochlorothiazide", "triamterene"}),
    ("Amlodipine 5 MG / Quinine 5 MG Oral Tablet", "SCD", {"quinine"}),  # amlodipine is of no interest
    ("Ethacrynic Acid 25 MG Oral Tablet", "SCD", {"ethacrynic acid"}),
    ("Quinidine Sulfate 200 MG Oral Tablet", "SCD", set()),
    ("quinine", "IN", {"quinine"}),
    ("Quinine Sulfate", "PIN", {"quinine"}),
    ("Quinine Oral Capsule", "SCDF", {"quinine"}),
    ("Qualaquin", "BN", {"quinine"}),
])
def test_builder_maps_rxnorm_names_to_ingredients(mapper, name, tty, ingredients):
    mapped = mapper.map("1", name)
    assert (mapped.tty, mapped.ingredients) == (tty, ingredients)


@pytest.mark.parametrize("name, error", [
    ("Quinine Gluconite 5 MG Oral Tablet", "SALT_WORDS"),  # an unknown word after an ingredient is not guessed
    ("Hydrochlorothiazide 25 MG Oral Tablet [Dyazide]", "brand-names.csv"),  # brand disagrees with its drug
    ("Quinine 5 MG Oral Tablet / Niacin 5 MG", "not an RxNorm normal-form name"),
    ("Extra Quinine 5 MG Oral Tablet", "not as its ingredient"),
])
def test_builder_refuses_names_it_cannot_read(mapper, name, error):
    with pytest.raises(ValueError, match=error):
        mapper.map("1", name)


# ---------------------------------------------------------------- the whole sandbox list


def _sandbox_rows() -> list[dict[str, str]]:
    if not SANDBOX_CSV.is_file():
        return []
    with SANDBOX_CSV.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _brand_ingredients() -> dict[str, frozenset[str]]:
    with BRANDS_CSV.open(newline="", encoding="utf-8") as f:
        return {r["brand"].lower(): frozenset(r["ingredients"].split("+")) for r in csv.DictReader(f)}


@lru_cache(maxsize=1)
def _name_search() -> tuple[re.Pattern[str], dict[str, frozenset[str]]]:
    brands = _brand_ingredients()
    words = sorted([*DrugTable.load_default().ingredient_names, *brands], key=len, reverse=True)
    return re.compile(r"\b(?:%s)\b" % "|".join(map(re.escape, words)), re.IGNORECASE), brands


def _ingredients_named(name: str) -> frozenset[str]:
    """The table's ingredients a name holds, by a plain whole-word search of ingredient and brand names
    (independent of the builder's parser)."""
    pattern, brands = _name_search()
    found = {m.group(0).lower() for m in pattern.finditer(name)}
    return frozenset().union(*(brands.get(n, frozenset({n})) for n in found))


def _classes(table: DrugTable, ingredients) -> frozenset[str]:
    return frozenset().union(*(table.classes_of(i) for i in ingredients))


@needs_shared
def test_drugs_sandbox_list_is_the_documented_size():
    assert len(_sandbox_rows()) == 1140


@needs_shared
def test_drugs_every_sandbox_concept_maps_to_the_ingredients_its_name_holds(table, build_run):
    stdout, _out = build_run
    no_interest = set(re.findall(r"^  of no interest: (\d+) ", stdout, re.M))
    wrong = []
    for row in _sandbox_rows():
        expected = _ingredients_named(row["name"])
        listed = row["rxcui"] in no_interest
        if listed == bool(_classes(table, expected)):
            wrong.append((row["rxcui"], row["name"], f"listed as of no interest: {listed}"))
        # of interest or not, the code maps to the ingredients its name holds (aspirin: no class)
        match = table.match_code(RXNORM, row["rxcui"])
        got = (match.ingredients, match.by_ingredient) if match else None
        if got != (expected, _by_ingredient(table, expected)):
            wrong.append((row["rxcui"], row["name"], got, sorted(expected)))
    assert not wrong, f"{len(wrong)} concepts wrong, first: {wrong[:5]}"


def _coarse_term_type(name: str, ingredient_names) -> str:
    """Term type by the few shapes this list holds (oral solids): branded = ends in [Brand]; a group ends
    in Pill (a brand's group is one name that starts with no ingredient); a drug names a tablet or capsule;
    else a component."""
    body, branded = (name.rsplit(" [", 1)[0], True) if name.endswith("]") else (name, False)
    if body.endswith(" Pill"):
        text = body.lower()
        by_ingredient = " / " in text or any(text.startswith(i + " ") for i in ingredient_names)
        return "SCDG" if by_ingredient else "SBDG"
    kind = "D" if re.search(r"\b(?:Tablet|Capsule)\b", body) else "DC"
    return ("SB" if branded else "SC") + kind


def _summary_counts(line: str) -> Counter:
    return Counter({tty: int(n) for tty, n in re.findall(r"([A-Z]+) (\d+)", line.split(":", 1)[1])})


@needs_shared
def test_drugs_build_summary_counts_each_term_type(table, build_run):
    stdout, _out = build_run
    rows = _sandbox_rows()
    head = re.search(r"^rxnorm-sandbox-medications.csv: (\d+) concepts, (\d+) mapped .*, (\d+) of no interest$",
                     stdout, re.M)
    assert head, stdout
    total, mapped, no_interest = map(int, head.groups())
    want_mapped, want_none = Counter(), Counter()
    for row in rows:
        tty = _coarse_term_type(row["name"], table.ingredient_names)
        has_class = _classes(table, _ingredients_named(row["name"]))
        (want_mapped if has_class else want_none)[tty] += 1
    assert (total, mapped, no_interest) == (len(rows), sum(want_mapped.values()), sum(want_none.values()))
    assert _summary_counts(re.search(r"^  mapped, by term type: .*$", stdout, re.M).group(0)) == want_mapped
    assert _summary_counts(re.search(r"^  of no interest, by term type: .*$", stdout, re.M).group(0)) == want_none


@needs_shared
@pytest.mark.parametrize("rxcui, tty", [
    ("997157", "SCD"), ("997012", "SBD"), ("330556", "SCDC"), ("997011", "SBDC"), ("1164191", "SCDG"),
    ("1185312", "SBDG"),
])
def test_drugs_shipped_table_records_the_term_type(rxcui, tty):
    with (DATA / "clinical_drugs.csv").open(newline="", encoding="utf-8") as f:
        rows = {r["rxcui"]: r for r in csv.DictReader(f)}
    assert rows[rxcui]["tty"] == tty
    assert rows[rxcui]["classes"] == "quinine"


def test_drugs_thiazide_and_thiazide_like_stay_distinct(table):
    assert table.match_code(RXNORM, "197383").ingredients == {"chlorthalidone"}  # atenolol / chlorthalidone
    assert table.match_code(RXNORM, "310798").ingredients == {"hydrochlorothiazide"}


def test_drugs_quinine_is_not_quinapril(table):
    # "Hydrochlorothiazide 12.5 MG / quinapril 10 MG Oral Tablet"
    assert table.match_code(RXNORM, "310796").classes == {"thiazide"}
    assert table.match_text("quinapril 10 MG Oral Tablet") is None


# ---------------------------------------------------------------- patient-view facts, by every CSV concept


@lru_cache(maxsize=1)
def _default_ruleset():
    return load_default_ruleset()


def _facts_for(medication: dict) -> PatientFacts:
    ruleset = _default_ruleset()
    chart = build_chart(
        "p1",
        {"patient": [{"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}],
         "medicationRequests": [medication]},
        observation_codes=frozenset(ruleset.observation_codes),
    )
    return extract_facts(chart, ruleset, _default_table(), datetime(2026, 6, 15, 12, tzinfo=timezone.utc))


def _active_order(coding: dict | None = None, text: str | None = None) -> dict:
    concept = {"coding": [coding]} if coding else {}
    if text:
        concept["text"] = text
    return {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": concept,
            "authoredOn": "2026-05-01"}


@lru_cache(maxsize=1)
def _default_table() -> DrugTable:
    return DrugTable.load_default()


def _sandbox_rows_holding(drug_class: str) -> list[dict[str, str]]:
    if not SHARED_CLINICAL.is_dir():
        return []
    table = _default_table()
    return [r for r in _sandbox_rows() if drug_class in _classes(table, _ingredients_named(r["name"]))]


@needs_shared
@pytest.mark.parametrize("row", _sandbox_rows_holding("anticoagulant"), ids=lambda r: r["rxcui"])
def test_facts_anticoagulant_by_every_sandbox_concept(row):
    facts = _facts_for(_active_order({"system": RXNORM, "code": row["rxcui"]}))
    (record,) = facts.medications
    assert record.method == "code" and record.counted
    assert "anticoagulant" in facts.drug_classes(), row["name"]
    assert record.ingredients_in("anticoagulant")


@needs_shared
def test_drugs_sandbox_anticoagulants_cover_the_oral_ones():
    held = {i for r in _sandbox_rows_holding("anticoagulant") for i in _ingredients_named(r["name"])}
    assert {"warfarin", "apixaban", "rivaroxaban", "dabigatran"} <= held


@needs_shared
def test_drugs_sandbox_holds_no_laba_product():
    # the picker holds no LABA (rxnorm-sandbox-medications.md): LABAs are known by ingredient and name
    assert _sandbox_rows_holding("laba") == []


@pytest.mark.parametrize("text", ["salmeterol", "formoterol", "arformoterol", "vilanterol", "olodaterol",
                                  "indacaterol", "Serevent Diskus", "Advair 250/50", "Symbicort 160/4.5",
                                  "Breo Ellipta", "Striverdi Respimat", "Arcapta Neohaler"])
def test_facts_laba_by_name(text):
    facts = _facts_for(_active_order(text=text))
    assert "laba" in facts.drug_classes() and facts.medications[0].method == "text"


def test_facts_laba_by_salmeterol_ingredient_code():
    facts = _facts_for(_active_order({"system": RXNORM, "code": "36117"}))
    assert "laba" in facts.drug_classes() and facts.medications[0].method == "code"
    assert facts.medications[0].ingredients_in("laba") == ("salmeterol",)
