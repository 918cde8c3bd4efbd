"""Codes read from a value-set file (`file:`) are format-checked like codes written in the rule set."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from cds_service.ruleset.loader import RuleSetError, load_ruleset

DEFAULT_TEXT = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


def _valueset(codes: list[tuple[str, str]]) -> dict:
    return {"resourceType": "ValueSet", "status": "active",
            "expansion": {"contains": [{"system": system, "code": code} for system, code in codes]}}


def _rules_with_file(tmp_path, codes):
    (tmp_path / "valuesets").mkdir()
    (tmp_path / "valuesets" / "extra.json").write_text(json.dumps(_valueset(codes)))
    rules = tmp_path / "rules.yaml"
    rules.write_text(DEFAULT_TEXT.replace("  paralysis:\n", "  paralysis:\n    file: valuesets/extra.json\n", 1))
    return rules


def test_a_value_set_file_with_an_icd_code_under_snomed_is_refused_at_its_file_line(tmp_path):
    rules = _rules_with_file(tmp_path, [("http://snomed.info/sct", "I80.2")])
    with pytest.raises(RuleSetError) as info:
        load_ruleset(rules)
    located = [(path, message) for _line, path, message in info.value.located]
    assert any(path == "value_sets.paralysis.file" and "I80.2" in message and "SNOMED CT" in message
               for path, message in located), located


def test_a_value_set_file_with_well_formed_codes_loads(tmp_path):
    # 128053003 (SNOMED CT, valid Verhoeff check digit) and I80.2 under ICD-10-CM
    rules = _rules_with_file(tmp_path, [("http://snomed.info/sct", "128053003"),
                                        ("http://hl7.org/fhir/sid/icd-10-cm", "I80.2")])
    ruleset = load_ruleset(rules)
    assert ruleset.value_set("paralysis").contains("http://snomed.info/sct", "128053003")
