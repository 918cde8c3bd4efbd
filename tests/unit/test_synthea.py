"""The 31 shared Synthea patients sent as prefetch, one clock for all set to the data's last date.

The facts found for each patient are checked against MANIFEST.csv, whose flags mean "ever recorded"
(not "active"); the firing rate of each card is reported and pinned.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from support.card_kinds import card_id
from cds_service.admin.population import iter_bundle_files, latest_record_date
from cds_service.clock import fixed_clock
from cds_service.engine.pipeline import Engine
from cds_service.hooks.cards import CdsResponse
from cds_service.hooks.request import parse_hook_request
from cds_service.ruleset.card_ids import PATIENT_VIEW_CARD_IDS

SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea-r4"
pytestmark = [
    pytest.mark.synthea,
    pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared Synthea data not found at {SYNTHEA}"),
]

# MANIFEST flag -> concepts / drug classes of which one must be ever recorded
MANIFEST_CONCEPTS = {
    "diabetes": {"diabetes"},
    "liver_disease": {"liver_disease"},
    "diuretic": {"loop", "thiazide", "potassium-sparing"},
    "statin": {"statin"},
    "pregnancy": {"pregnancy"},
    "smoker_current": {"smoking_current"},
    "smoker_former": {"smoking_former"},
    "leg_cramps": {"leg_cramp"},
    "venous_varicose_DVT": {"varicose_veins", "venous_insufficiency", "dvt_acute", "dvt_history",
                            "post_thrombotic_syndrome"},
    "heart_failure": {"heart_failure"},
    "ckd": {"ckd_any", "dialysis_or_eskd"},
    "hypothyroid": {"hypothyroidism"},
}


# Where the manifest's "ever recorded" and RULES.md's concepts part on purpose, with the reason.
KNOWN_DIFFERENCES = {
    ("54034a85-d558-4047-b32a-ad82008f7199", "pregnancy"):
        "only abortive-outcome records (79586000 tubal pregnancy, 19169002 miscarriage): RULES.md excludes "
        "pregnancy with abortive outcome (O00-O08) from pregnancy",
}


@pytest.fixture(scope="module")
def population():
    records = list(iter_bundle_files([SYNTHEA]))
    as_of = max(latest_record_date(r) for r in records)
    engine = Engine.default(clock=fixed_clock(f"{as_of}T12:00:00Z"))
    service = engine.registry.get("leg-cramp-patient-view")
    results = {r.patient_id: engine.run(service, parse_hook_request(r.hook_request())) for r in records}
    return as_of, results


def _manifest():
    with (SYNTHEA / "MANIFEST.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_synthea_as_of_is_the_last_date_in_the_data(population):
    as_of, results = population
    assert as_of == "2021-03-11"
    assert len(results) == 31


@pytest.mark.parametrize("row", _manifest() if SYNTHEA.is_dir() else [], ids=lambda r: r["source_file"][:24])
def test_synthea_facts_match_manifest(population, row):
    _, results = population
    facts = results[row["patient_id"]].facts
    for flag, concepts in MANIFEST_CONCEPTS.items():
        recorded = bool(facts.ever_recorded & concepts)
        if (row["patient_id"], flag) in KNOWN_DIFFERENCES:
            assert not recorded, KNOWN_DIFFERENCES[(row["patient_id"], flag)]
            continue
        assert recorded == (row[flag] == "1"), f"{flag}: manifest {row[flag]}, found {sorted(facts.ever_recorded & concepts)}"


def test_synthea_medication_mapping_counts(population):
    """drug-codes-seen.csv lists every relevant drug code in the set with its count: exactly those records
    map by code; none needs the text fallback; every other medication record is a drug of no interest."""
    _, results = population
    mapping = Counter()
    for result in results.values():
        mapping.update(result.facts.medication_mapping)
    with (SYNTHEA.parent.parent / "clinical" / "drug-codes-seen.csv").open() as handle:
        relevant = sum(int(row["count_in_shared_synthea"]) for row in csv.DictReader(handle))
    total = sum(len(r.facts.medications) for r in results.values())
    assert mapping["code"] == relevant == 40
    assert mapping["text"] == 0
    assert mapping["unmapped"] == total - relevant
    print(f"\nmedication records: by code {mapping['code']}, by text {mapping['text']}, not mapped {mapping['unmapped']}")


def test_synthea_card_firing_rates(population):
    """Pinned firing rates (worked through per patient in docs/synthea-firing.md)."""
    _, results = population
    fired = Counter()
    for result in results.values():
        CdsResponse.model_validate(result.response)
        fired.update(card_id(c) for c in result.response["cards"])
    rates = {card: fired[card] / len(results) for card in PATIENT_VIEW_CARD_IDS}
    print("\nfiring rate per card over 31 Synthea patients:", {k: f"{v:.1%}" for k, v in rates.items()})
    assert fired == Counter({"elevated-cramp-risk": 4})
    scores = {pid: r.evaluation.contributors.score for pid, r in results.items() if r.response["cards"]}
    assert scores == pytest.approx(HAND_WORKED_SCORES)


# docs/synthea-firing.md: the contributor arithmetic for each patient at or above 2 points, by hand.
HAND_WORKED_SCORES = {
    "39234650-0229-4aee-975b-c8ee68bab40b": 3.0,  # Christopher: HCTZ 1.5 + simvastatin 0.5 + age 100 1
    "0ac13d55-d566-450a-aea0-f6a71f1ad73b": 3.5,  # Dennis: HCTZ 1.5 + furosemide 1 + age 71 1
    "77155e2b-5d21-4b47-86f0-4004183d68b2": 3.0,  # Gayla: HCTZ 1.5 + simvastatin 0.5 + age 83 1
    "f46d1649-8a02-4de8-8cff-f76fae267d3a": 4.0,  # Trey Berge: HCTZ 1.5 + simvastatin 0.5 + hypothyroid 1 + age 108 1
}


def test_synthea_every_patient_answered_without_skips(population):
    _, results = population
    for result in results.values():
        assert result.facts.skipped == []
        assert result.facts.not_checked == ()


def test_synthea_revision_2026_12_inputs(population):
    """What Revision 2026-12 reads in this set (docs/synthea-firing.md): Procedures and ServiceRequests are
    prefetched (188 Procedures, none with a category, so no recent surgery; no ServiceRequest, no duplex); the
    Condition text fallback reads the 177 of 195 Conditions that no value set codes, and matches none."""
    _, results = population
    conditions = [record for r in results.values() for record in r.facts.conditions]
    assert len(conditions) == 195
    assert sum(1 for r in results.values() for record in r.facts.conditions if record.method == "text") == 0
    assert not any(r.facts.has("recent_surgery") or r.facts.has("venous_duplex_on_record") for r in results.values())
    assert not any(r.facts.has("recent_acute_dvt") or r.facts.has("previous_dvt") for r in results.values())
    shown = Counter(o.card_id for r in results.values() for o in r.evaluation.shown)
    assert shown == Counter({"elevated-cramp-risk": 4})  # as before the revision: no patient's card changed
    missing = {pid: sorted((m.reason, m.test) for o in r.evaluation.shown for m in o.missing)
               for pid, r in results.items() if r.evaluation.shown}
    # the four elevated-risk patients have no potassium or magnesium result in the 12 months before 2021-03-11
    assert missing == {pid: [("lab_absent", "magnesium"), ("lab_absent", "potassium")] for pid in HAND_WORKED_SCORES}
