"""admin/dry_run.py without a worker: which sources may be used, files that really lie under an allowed
directory, the bundled fixtures as a population, and the CSV (no spreadsheet formula out of the data)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import date
from importlib import resources
from pathlib import Path

import pytest

from cds_service.admin.dry_run import (FIXTURES_DIR, DryRunError, DryRunResult, RuleText, Source, check_source,
                                       fixture_records, render_csv, run_dry_run)
from cds_service.settings import Settings

ACTIVE = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")
SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea-r4"


def settings(**values) -> Settings:
    return Settings(**values)


def test_folders_only_under_an_allowed_directory(tmp_path) -> None:
    inside, outside = tmp_path / "allowed", tmp_path / "other"
    inside.mkdir()
    outside.mkdir()
    env = {"CRAMP_DRY_RUN_DIRS": str(inside)}
    assert check_source(Source("folder", str(inside)), settings(), env) is None
    assert "not under an allowed directory" in check_source(Source("folder", str(outside)), settings(), env)
    assert check_source(Source("folder", "relative/path"), settings(), env) == "give an absolute path"
    assert check_source(Source("folder", str(inside / "missing")), settings(), env) == "no such file or folder"
    escape = inside / "link"
    escape.symlink_to(outside, target_is_directory=True)
    assert "not under an allowed directory" in check_source(Source("folder", str(escape)), settings(), env)
    assert "not under an allowed directory" in check_source(Source("ndjson", str(inside / ".." / "other")),
                                                            settings(), env)
    assert check_source(Source("nonsense"), settings(), env).startswith("choose one of")


def test_servers_only_on_the_fhir_allowlist() -> None:
    allowed = settings(fhir_server_allowlist=("https://ehr.example.org/fhir",))
    assert check_source(Source("bulk", "https://ehr.example.org/fhir"), allowed) is None
    assert check_source(Source("fhir", "https://ehr.example.org/fhir/"), allowed) is None
    assert "allowlist" in check_source(Source("bulk", "https://ehr.example.org.evil.com/fhir"), allowed)
    assert "https" in check_source(Source("fhir", "http://127.0.0.1:8080/fhir"),
                                   settings(fhir_server_allowlist=("http://127.0.0.1:8080/fhir",)))
    assert check_source(Source("bulk", "https://ehr.example.org/fhir", "a/b"), allowed) == "not a usable Group id"


def test_a_file_linked_from_outside_is_not_read(tmp_path) -> None:
    if not SYNTHEA.is_dir():
        pytest.skip(f"shared Synthea data not found at {SYNTHEA}")
    folder, elsewhere = tmp_path / "population", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    first, second = sorted(SYNTHEA.glob("*.json"))[:2]
    shutil.copy(first, folder / first.name)
    shutil.copy(second, elsewhere / second.name)
    (folder / "linked.json").symlink_to(elsewhere / second.name)
    result = run_dry_run(RuleText(ACTIVE, "a"), RuleText(ACTIVE, "b"), Source("folder", str(folder)),
                         date(2021, 3, 11), processes=1, allowed=(folder.resolve(),))
    assert result.patients == 1  # the linked file was left out
    with pytest.raises(DryRunError, match="no Bundle"):
        run_dry_run(RuleText(ACTIVE, "a"), RuleText(ACTIVE, "b"), Source("folder", str(elsewhere)),
                    date(2021, 3, 11), processes=1, allowed=(folder.resolve(),))


def test_the_bundled_fixtures_are_a_population() -> None:
    if not FIXTURES_DIR.is_dir():
        pytest.skip("fhir_fixtures/ not in this installation")
    records = fixture_records()
    requests = [json.loads(p.read_text()) for p in FIXTURES_DIR.glob("*/request.json")]
    assert len(records) == sum(1 for r in requests if r.get("hook") == "patient-view") > 20
    assert all(r.prefetch.get("patient") for r in records)


def test_an_invalid_rule_set_is_a_dry_run_error_naming_its_line() -> None:
    broken = ACTIVE.replace("  threshold: 3\n", "  threshold: -1\n", 1)
    with pytest.raises(DryRunError, match=r"draft: invalid rule set \(line \d+"):
        run_dry_run(RuleText(ACTIVE, "active"), RuleText(broken, "draft"), Source("fixtures"), date(2026, 6, 15))


def test_csv_rows_and_no_formula_from_the_data() -> None:
    result = DryRunResult(
        as_of="2026-06-15", source="x", rule_sets=[{"label": "a", "version": "1"}, {"label": "d", "version": "2"}],
        patients=10, cards=[{"card": "elevated-cramp-risk", "counts": [1, 3], "rates": [0.1, 0.3]}],
        changes=[{"source": "=HYPERLINK(\"http://evil\")", "patientId": "@p1", "before": [],
                  "after": ["elevated-cramp-risk"], "reasons": ["contributors: score 2.5 -> fires"]}],
        changes_total=1)
    rows = list(csv.reader(io.StringIO(render_csv(result))))
    assert rows[1][:6] == ["card", "elevated-cramp-risk", "1", "0.1000", "3", "0.3000"]
    assert rows[2][0] == "change" and rows[2][6].startswith("'=") and rows[2][7] == "'@p1"
    assert rows[2][8:10] == ["none", "elevated-cramp-risk"]
