"""``cramp-cds rules validate``: a code that does not fit its system's format (an ICD-10-CM code under SNOMED
CT, a wrong check digit) is one ``FILE:LINE: path: message`` line, naming the system it looks like."""

from __future__ import annotations

from importlib import resources

from click.testing import CliRunner

from cds_service.cli.main import main

DEFAULT_TEXT = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_validate_names_misplaced_codes_at_their_line(tmp_path):
    text = DEFAULT_TEXT.replace("sct|128053003,", "sct|I80.2,", 1).replace("loinc|2823-3,", "loinc|2823-4,", 1)
    rules = tmp_path / "rules.yaml"
    rules.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["rules", "validate", str(rules)])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"{rules}:{line_of(text, 'sct|I80.2')}: value_sets.dvt_acute.codes[2]: "
        "I80.2 is not a SNOMED CT code (ICD-10-CM format?)",
        f"{rules}:{line_of(text, 'loinc|2823-4')}: observations.potassium.codes[0]: "
        "2823-4 is not a LOINC code: its check digit is wrong (mod 10 gives 2823-3)",
    ]
    assert f"{rules}: 2 problem(s)" in result.stderr


def test_validate_bundled_rule_set_codes_all_fit(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(DEFAULT_TEXT, encoding="utf-8")
    result = CliRunner().invoke(main, ["rules", "validate", str(rules)])
    assert result.exit_code == 0 and result.stdout.startswith("OK: ")
