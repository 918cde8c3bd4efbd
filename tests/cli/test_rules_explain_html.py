"""``cramp-cds rules explain --format html [--output FILE]``: a standalone page with the cards and the
explanation; ``--format text`` (the default) prints what it always printed."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml
from click.testing import CliRunner

from cds_service.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = str(resources.files("cds_service").joinpath("data/ruleset.yaml"))
FIXTURE_06 = ROOT / "fhir_fixtures" / "06-cramps-venous-icd10"


def explain(*args: str):
    now = yaml.safe_load((FIXTURE_06 / "expected.yaml").read_text())["now"]
    return CliRunner().invoke(main, ["rules", "explain", "--rules", DEFAULT_RULES, "--as-of", now[:10], *args,
                                     str(FIXTURE_06 / "request.json")])


def test_explain_html_to_a_file_is_a_standalone_page(tmp_path):
    output = tmp_path / "explain.html"
    result = explain("--format", "html", "--output", str(output))
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"Explanation written to {output}" in result.stderr
    page = output.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and "<link" not in page and not re.search(r"\ssrc\s*=", page)
    assert 'data-card-id="venous-duplex-workup"' in page  # the card as a CDS client shows it
    assert '<section class="evaluation fired" data-card-id="venous-duplex-workup"' in page
    assert "Condition/c1" in page and "Fixture" not in page  # the records, never the patient's name


def test_explain_text_is_the_default_and_html_goes_to_stdout_without_output():
    text, explicit = explain(), explain("--format", "text")
    assert text.exit_code == explicit.exit_code == 0
    assert text.stdout == explicit.stdout and text.stdout.startswith("Patient/fixture-06 from request.json\n")
    html = explain("--format", "html")
    assert html.exit_code == 0 and html.stdout.startswith("<!DOCTYPE html>")


def test_explain_output_not_writable_is_exit_2(tmp_path):
    result = explain("--output", str(tmp_path / "missing-folder" / "x.txt"))
    assert result.exit_code == 2 and "cannot be written" in result.output and "Traceback" not in result.output
