"""The drug table: code first, whole-word text fallback, and no drift from the shared sources."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.drugs import RXNORM, DrugMatch, DrugTable

REPO = Path(__file__).resolve().parents[1]
SHARED_CLINICAL = REPO.parent / "shared" / "clinical"
SEEN_CSV = SHARED_CLINICAL / "drug-codes-seen.csv"
DATA = REPO / "cds_service" / "data" / "drugs"
CSV_NAMES = ("ingredients.csv", "clinical_drugs.csv", "brand_names.csv")
DIURETIC_CLASSES = {"loop", "thiazide", "potassium-sparing"}

needs_shared = pytest.mark.skipif(not SHARED_CLINICAL.is_dir(), reason="../shared/clinical not present")


@pytest.fixture(scope="module")
def table() -> DrugTable:
    return DrugTable.load_default()


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
        frozenset({"furosemide"}), frozenset({"loop"}), "code", "4603"
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
    assert match == DrugMatch(frozenset({"furosemide"}), frozenset({"loop"}), "text", "Lasix")


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
def test_drugs_shipped_csvs_equal_a_fresh_build(tmp_path):
    script = REPO / "tools" / "build_drug_table.py"
    subprocess.run(
        [sys.executable, str(script), "--shared", str(SHARED_CLINICAL.parent), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    for name in CSV_NAMES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name} drifted: rerun the builder"


@needs_shared
def test_drugs_every_vsac_rxnorm_code_is_in_the_table(table):
    for path in sorted((SHARED_CLINICAL / "vsac").glob("valueset-*.json")):
        contains = json.loads(path.read_text(encoding="utf-8")).get("expansion", {}).get("contains", [])
        for item in contains:
            if item.get("system") == RXNORM:
                assert table.match_code(RXNORM, item["code"]) is not None, (path.name, item)
