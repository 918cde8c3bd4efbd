"""``cramp-cds rules``: validate (every problem with its line), explain one patient, simulate a population
(bundles, NDJSON, FHIR server; --against), and reload of a changed rules file without downtime."""

from __future__ import annotations

import json
import logging
import re
import threading
from importlib import resources
from pathlib import Path

import pytest
import responses
import yaml
from click.testing import CliRunner

from cds_service.admin.bulk import write_ndjson
from cds_service.cli.main import main
from cds_service.clock import fixed_clock
from cds_service.ruleset.checks import card_text_problems
from cds_service.ruleset.loader import RuleSetError, load_default_ruleset, load_ruleset
from cds_service.settings import Settings
from cds_service.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
DEFAULT_RULES = resources.files("cds_service").joinpath("data/ruleset.yaml")
FIXTURE_06 = ROOT / "fhir_fixtures" / "06-cramps-venous-icd10"
needs_synthea = pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared Synthea data not found at {SYNTHEA}")
# docs/synthea-firing.md: the three patients at 2.5, shown the card when the threshold is 2.5
AT_2_5 = {"2ec622d5-095b-44d4-9cb2-c0e7e451cd74": "Angelic_Mueller",
          "948e608d-e408-4788-8cf2-8157c49c2940": "Dirk_Kuhlman",
          "ab4e7a7d-8b0d-41e1-9ce9-3877d7615aed": "Renea_Quigley"}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def default_text() -> str:
    return DEFAULT_RULES.read_text(encoding="utf-8")


def write_rules(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), start=1) if needle in line)


# ---------------------------------------------------------------- validate

def test_rules_validate_ok(runner, tmp_path):
    path = write_rules(tmp_path, default_text())
    result = runner.invoke(main, ["rules", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == f"OK: {path} (version 2026.12.1, 36 value sets)\n"


# (name, replace old -> new in the default text, needle locating the expected line, path, message)
PROBLEMS = [
    ("negative weight", ("    statin: 0.5", "    statin: -0.5"), "    statin: -0.5", "contributors.points.statin",
     "negative points for statin"),
    ("unknown item", ("    statin: 0.5", "    statin: 0.5\n    magic_beans: 1"), "magic_beans",
     "contributors.points.magic_beans", "unknown item 'magic_beans'"),
    ("unknown code system", ("codes: [icd10cm|Z33.1,", "codes: [read|Z33.1,"), "read|Z33.1",
     "value_sets.pregnancy.codes[0]", "unknown code system 'read'"),
    ("malformed code", ("codes: [icd10cm|Z33.1,", "codes: [Z33 1,"), "[Z33 1,",
     "value_sets.pregnancy.codes[0]", "not of the form"),
    ("unreachable threshold", ("  threshold: 3\n  points:\n    varicose_veins",
                               "  threshold: 30\n  points:\n    varicose_veins"), "threshold: 30",
     "venous_index.threshold", "no combination of items can reach it"),
    ("unknown key", ("  recent_days: 14 ", "  recent_dayz: 14 "), "recent_dayz", "windows.recent_dayz", "unknown key"),
    ("wrong type", ("  recent_days: 14 ", "  recent_days: two weeks "), "recent_days: two", "windows.recent_days",
     "integer"),
    ("missing value-set file", ("  paralysis:\n", "  paralysis:\n    file: valuesets/nowhere.json\n"),
     "nowhere.json", "value_sets.paralysis.file", "not found"),
]


@pytest.mark.parametrize("name, change, needle, path, message", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_rules_validate_reports_file_line_path_and_message(runner, tmp_path, name, change, needle, path, message):
    text = default_text()
    assert change[0] in text
    text = text.replace(change[0], change[1], 1)
    rules = write_rules(tmp_path, text)
    result = runner.invoke(main, ["rules", "validate", str(rules)])
    assert result.exit_code == 1, result.output
    expected = f"{rules}:{line_of(text, needle)}: {path}: "
    lines = [line for line in result.stdout.splitlines() if line.startswith(expected)]
    assert lines and message in lines[0], result.stdout
    assert "Traceback" not in result.output


def test_rules_validate_missing_card_text(tmp_path):
    spec = load_default_ruleset().spec
    folder = tmp_path / "cards"
    folder.mkdir()
    for card in ("untreated-dvt", "possible-dvt", "venous-duplex-workup", "conservative-care"):
        (folder / f"{card}.yaml").write_text("summary: x\nsource_url: https://example.org\n")
    problems = card_text_problems(spec, folder)
    assert problems == [(("cards", "elevated-cramp-risk"),
                         "card text missing: no cards/elevated-cramp-risk.yaml in the cards package")]
    disabled = spec.model_copy(update={"cards": {**spec.cards, "elevated-cramp-risk":
                                                 spec.cards["elevated-cramp-risk"].model_copy(update={"enabled": False})}})
    assert card_text_problems(disabled, folder) == []


def test_rules_validate_value_set_file_next_to_rules_and_shipped(tmp_path):
    valueset = {"resourceType": "ValueSet", "compose": {"include": [
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "concept": [{"code": "G80.1"}]}]}}
    (tmp_path / "valuesets").mkdir()
    (tmp_path / "valuesets" / "extra.json").write_text(json.dumps(valueset))
    text = default_text().replace("  paralysis:\n", "  paralysis:\n    file: valuesets/extra.json\n", 1)
    text = text.replace("  dialysis_or_eskd:\n", "  dialysis_or_eskd:\n    file: valuesets/vsac-end-stage-renal-disease.json\n", 1)
    ruleset = load_ruleset(write_rules(tmp_path, text))
    assert ruleset.value_set("paralysis").contains("http://hl7.org/fhir/sid/icd-10-cm", "G80.1")
    assert ruleset.value_set("paralysis").contains("http://hl7.org/fhir/sid/icd-10-cm", "G81.0")
    assert ruleset.value_set("dialysis_or_eskd").contains("http://snomed.info/sct", "236434000")  # shipped file
    (tmp_path / "valuesets" / "extra.json").write_text("{not json")
    with pytest.raises(RuleSetError) as info:
        load_ruleset(tmp_path / "rules.yaml")
    assert info.value.problems[0][0] == "value_sets.paralysis.file"
    assert info.value.lines[0] == line_of(text, "valuesets/extra.json")


def test_rules_validate_usage_errors_exit_2(runner, tmp_path):
    result = runner.invoke(main, ["rules", "validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2 and "absent.yaml" in result.output


# ---------------------------------------------------------------- explain

def test_rules_explain_fixture_shows_facts_records_items_and_outcome(runner, tmp_path):
    now = yaml.safe_load((FIXTURE_06 / "expected.yaml").read_text())["now"]
    rules = write_rules(tmp_path, default_text())
    result = runner.invoke(main, ["rules", "explain", "--rules", str(rules), "--as-of", now[:10],
                                  str(FIXTURE_06 / "request.json")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Patient/fixture-06" in out and "version 2026.12.1" in out and "as of 2026-06-15" in out
    assert "Condition/c1, 2024-09-15: Cramp and spasm (ICD-10-CM R25.2)" in out
    assert "venous-duplex-workup: FIRED, score 9 vs threshold 3" in out
    for item, points in (("venous_skin_changes", 4), ("venous_insufficiency", 3), ("age_50_or_over", 1),
                         ("bmi_30_or_over", 1)):
        assert f"{item}: {points} point(s)" in out
    assert "Card shown after precedence: venous-duplex-workup" in out
    assert "Medication records: 0 (by code 0, by text 0, not mapped 0)" in out
    assert "Skipped records: 0" in out and "Fixture" not in out  # the name is never printed


@needs_synthea
def test_rules_explain_bundle_counts_medication_mapping(runner):
    bundle = next(SYNTHEA.glob("Dennis_Durgan_*.json"))
    result = runner.invoke(main, ["rules", "explain", "--rules", str(DEFAULT_RULES), "--as-of", "2021-03-11",
                                  str(bundle)])
    assert result.exit_code == 0, result.output
    assert "mapped by code" in result.output and "classes loop" in result.output
    assert "elevated-cramp-risk: FIRED, score 3.5 vs threshold 3" in result.output


@pytest.mark.parametrize("content, message", [("{bad", "not valid JSON"),
                                              ('{"resourceType": "Patient"}', "field 'hook' is missing")])
def test_rules_explain_bad_input_is_one_line_exit_2(runner, tmp_path, content, message):
    patient = tmp_path / "patient.json"
    patient.write_text(content)
    result = runner.invoke(main, ["rules", "explain", "--rules", str(DEFAULT_RULES), str(patient)])
    assert result.exit_code == 2
    assert str(patient) in result.output and message in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- simulate

def simulate(runner, *args):
    result = runner.invoke(main, ["rules", "simulate", "--as-of", "2021-03-11", *args])
    assert result.exit_code == 0, result.output
    return result


@needs_synthea
def test_rules_simulate_synthea_rates(runner):
    result = simulate(runner, "--rules", str(DEFAULT_RULES), "--jobs", "2", str(SYNTHEA))
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("possible-dvt", "venous-duplex-workup", "conservative-care",
                                                     "elevated-cramp-risk")}
    assert rows == {"possible-dvt": ["0/31", "0.0%"], "venous-duplex-workup": ["0/31", "0.0%"],
                    "conservative-care": ["0/31", "0.0%"], "elevated-cramp-risk": ["4/31", "12.9%"]}


def threshold_2_5(tmp_path: Path) -> Path:
    data = yaml.safe_load(default_text())
    data["contributors"]["threshold"] = 2.5
    data["version"] = "2026.11.1-c2.5"
    return write_rules(tmp_path, yaml.safe_dump(data), "threshold-2.5.yaml")


@needs_synthea
def test_rules_simulate_against_lists_changed_patients_and_why(runner, tmp_path):
    result = simulate(runner, "--rules", str(DEFAULT_RULES), "--against", str(threshold_2_5(tmp_path)),
                      "--format", "json", "--jobs", "1", str(SYNTHEA))
    report = json.loads(result.stdout)
    assert [entry["patients"] for entry in report["cards"]["elevated-cramp-risk"]] == [4, 7]
    changes = {c["patientId"]: c for c in report["changes"]}
    assert set(changes) == set(AT_2_5)
    for patient_id, name in AT_2_5.items():
        change = changes[patient_id]
        assert change["source"].startswith(name)
        assert (change["before"], change["after"]) == ([], ["elevated-cramp-risk"])
        assert "score 2.5 vs threshold 3, does not fire -> elevated-cramp-risk score 2.5 vs threshold 2.5, fires" \
            in change["reasons"][0]
    assert "thiazide_diuretic 1.5" in changes["948e608d-e408-4788-8cf2-8157c49c2940"]["reasons"][0]
    table = simulate(runner, "--rules", str(DEFAULT_RULES), "--against", str(threshold_2_5(tmp_path)), str(SYNTHEA))
    assert "Patients whose card changes: 3" in table.stdout
    assert "elevated-cramp-risk   4/31    12.9%  7/31   22.6%  +3" in table.stdout


@needs_synthea
def test_rules_simulate_html_is_self_contained(runner, tmp_path):
    output = tmp_path / "report.html"
    simulate(runner, "--rules", str(DEFAULT_RULES), "--against", str(threshold_2_5(tmp_path)), "--format", "html",
             "--output", str(output), str(SYNTHEA))
    html = output.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<style>" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    assert "Renea_Quigley" in html  # file names identify patients; no names from the records
    assert "Quigley</" not in html.replace("Renea_Quigley_", "")


def synthea_to_ndjson(bundles: list[Path], folder: Path) -> None:
    """A bulk export of the bundles: urn:uuid references made Type/id, one file per resource type."""
    resources_out = []
    for path in bundles:
        bundle = json.loads(path.read_text())
        refs = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
        text = json.dumps([e["resource"] for e in bundle["entry"]])
        for urn, ref in refs.items():
            text = text.replace(f'"{urn}"', json.dumps(ref))
        resources_out += json.loads(text)
    write_ndjson(resources_out, folder)


@needs_synthea
def test_rules_simulate_ndjson_equals_bundles(runner, tmp_path):
    bundles = sorted(SYNTHEA.glob("*.json"))
    chosen = [next(SYNTHEA.glob(f"{name}_*.json")) for name in ("Dennis_Durgan", "Dirk_Kuhlman", "Cathryn_Windler")]
    assert all(path in bundles for path in chosen)
    synthea_to_ndjson(chosen, tmp_path / "bulk")
    against = str(threshold_2_5(tmp_path))

    def cards(*sources):
        report = json.loads(simulate(runner, "--rules", str(DEFAULT_RULES), "--against", against,
                                     "--format", "json", "--jobs", "1", *sources).stdout)
        return report["patients"], {card: [e["patients"] for e in entries] for card, entries in report["cards"].items()}, \
            sorted((c["patientId"], c["after"]) for c in report["changes"])

    from_bundles = cards(*map(str, chosen))
    assert from_bundles[0] == 3 and from_bundles[1]["elevated-cramp-risk"] == [1, 2]
    assert cards(str(tmp_path / "bulk")) == from_bundles
    assert cards(*map(str, sorted((tmp_path / "bulk").glob("*.ndjson")))) == from_bundles


@needs_synthea
@responses.activate
def test_rules_simulate_fhir_server_source(runner):
    base = "https://fhir.example.org/r4"
    bundle = json.loads(next(SYNTHEA.glob("Dennis_Durgan_*.json")).read_text())
    refs = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for urn, ref in refs.items():
        text = text.replace(f'"{urn}"', json.dumps(ref))
    every = json.loads(text)

    def searchset(kind, next_url=None):
        body = {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": r} for r in every if r["resourceType"] == kind]}
        if next_url:
            body["link"] = [{"relation": "next", "url": next_url}]
        return body

    responses.get(f"{base}/Patient", json=searchset("Patient", f"{base}/Patient?page=2"))
    responses.get(f"{base}/Patient?page=2", json={"resourceType": "Bundle", "type": "searchset", "entry": []})
    for kind in ("Condition", "MedicationRequest", "MedicationStatement", "Observation", "Procedure", "ServiceRequest"):
        responses.get(f"{base}/{kind}", json=searchset(kind))
    result = simulate(runner, "--rules", str(DEFAULT_RULES), "--jobs", "1", base)
    assert "elevated-cramp-risk   1/1" in result.stdout


def test_rules_simulate_missing_source_is_exit_2(runner, tmp_path):
    result = runner.invoke(main, ["rules", "simulate", "--rules", str(DEFAULT_RULES), str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere: no such file" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- reload

def call(client, body):
    return client.post("/cds-services/leg-cramp-patient-view", json=body)


def version_of(response) -> str:
    extension = response.get_json()["cards"][0]["extension"]
    return next(iter(extension.values()))["ruleSetVersion"]


@pytest.fixture
def fixture_request():
    return json.loads((FIXTURE_06 / "request.json").read_text())


def reloading_app(tmp_path):
    rules = write_rules(tmp_path, default_text())
    app = create_app(Settings(development_mode=True, rules_path=rules, rules_source="file"),
                     clock=fixed_clock("2026-06-15T12:00:00Z"))
    return rules, app, app.extensions["leg_cramp_engines"]


def test_reload_changed_file_takes_effect_on_next_request(tmp_path, fixture_request):
    rules, app, switch = reloading_app(tmp_path)
    client = app.test_client()
    assert version_of(call(client, fixture_request)) == "2026.12.1"
    rules.write_text(default_text().replace('version: "2026.12.1"', 'version: "2026.12.2"')
                     .replace("    varicose_veins: 3", "    varicose_veins: 2"))
    switch._next_check = 0  # the file check is due (normally at most every RULES_CHECK_SECONDS)
    assert version_of(call(client, fixture_request)) == "2026.12.2"
    assert app.extensions["leg_cramp_engine"].ruleset.spec.venous_index.points["varicose_veins"] == 2


def test_reload_invalid_change_keeps_old_version_and_warns(tmp_path, fixture_request, caplog):
    rules, app, switch = reloading_app(tmp_path)
    client = app.test_client()
    rules.write_text(default_text().replace('version: "2026.12.1"', 'version: "2026.12.9"')
                     .replace("    statin: 0.5", "    statin: -1"))
    with caplog.at_level(logging.WARNING, logger="cds_service.engine.reload"):
        switch.request_reload()  # as SIGHUP does
        assert version_of(call(client, fixture_request)) == "2026.12.1"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "cds_service.engine.reload"]
    assert len(warnings) == 1 and "contributors.points.statin" in warnings[0].getMessage()


def test_reload_concurrent_requests_all_succeed(tmp_path, fixture_request):
    rules, app, switch = reloading_app(tmp_path)
    switch._check_every = 0  # every request checks the file
    statuses: list[int] = []
    versions: set[str] = set()
    lock = threading.Lock()

    def worker():
        client = app.test_client()
        for _ in range(8):
            response = call(client, fixture_request)
            with lock:
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(version_of(response))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(3):
        rules.write_text(default_text().replace('version: "2026.12.1"', f'version: "2026.13.{n}"'))
        switch.reload("test")
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 32
    assert versions <= {"2026.12.1", "2026.13.0", "2026.13.1", "2026.13.2"}
    assert version_of(call(app.test_client(), fixture_request)) == "2026.13.2"


def test_start_refused_on_invalid_rules_file(tmp_path):
    rules = write_rules(tmp_path, default_text().replace("    statin: 0.5", "    statin: -1"), "fresh-invalid.yaml")
    with pytest.raises(RuleSetError, match="contributors.points.statin"):
        create_app(Settings(development_mode=True, rules_path=rules))


def test_rules_explain_shows_revision_2026_12_reasons(runner, tmp_path):
    """Text-matched records marked, conditions counted by how they were recognised, the duplex that stops B,
    the keys each rule could not check and the missing data that could change the card."""
    from support.chart_builder import CPT, condition, hook_request, service_request, text_condition
    body = hook_request([condition("R252"), text_condition("Varicose veins"), text_condition("Chronic sinusitis"),
                         condition("L03.116", age=1), service_request((CPT, "93970"), age=30)], omit=("procedures",))
    patient = tmp_path / "patient.json"
    patient.write_text(json.dumps(body))
    result = runner.invoke(main, ["rules", "explain", "--rules", str(DEFAULT_RULES), "--as-of", "2026-06-15",
                                  str(patient)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Conditions: 4 (recognised by code 2, by text 1, not recognised 1)" in out
    assert "Varicose veins (recognised by its name)" in out
    assert "venous duplex on record: ServiceRequest/" in out and "(CPT 93970) [active]" in out
    assert "keys this rule reads that could not be checked: procedures" in out
    assert "missing (possible-dvt): surgery_not_checked recent_surgery" in out
    assert "Card shown after precedence: conservative-care" in out
