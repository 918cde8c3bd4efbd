"""ruleset/code_formats.py: each code fits its system's format (check digits included), and a misplaced code
is a rule-set problem at its line and field, naming the system it looks like."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from cds_service.ruleset.code_formats import (CODE, CPT, HCPCS, ICD10CM, LOINC, PREFIX, RANGE, RXNORM, SNOMED,
                                              code_format_problem, file_code_problems, loinc_check_digit, looks_like,
                                              verhoeff_valid)
from cds_service.ruleset.loader import RuleSetError, load_default_ruleset, parse_ruleset
from cds_service.ruleset.valuesets import read_valueset_codes

DEFAULT_TEXT = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")

VALID = [
    (SNOMED, "128053003", CODE), (SNOMED, "55300003", CODE), (SNOMED, "404223003", CODE),
    (SNOMED, "428041000124106", CODE),  # an extension concept: partition 10, namespace 1000124
    (SNOMED, "132281000119108", CODE),
    (LOINC, "2823-3", CODE), (LOINC, "46364-6", CODE), (LOINC, "82810-3", CODE), (LOINC, "72166-2", CODE),
    (LOINC, "LA15173-0", CODE), (LOINC, "LA26683-5", CODE), (LOINC, "LA4489-6", CODE), (LOINC, "LA33-6", CODE),
    (ICD10CM, "R25.2", CODE), (ICD10CM, "R252", CODE), (ICD10CM, "r25.2", CODE), (ICD10CM, "I82.4Z", CODE),
    (ICD10CM, "Z86.718", CODE), (ICD10CM, "S72.001A", CODE), (ICD10CM, "Z3A", PREFIX), (ICD10CM, "I82.", PREFIX),
    (ICD10CM, "F17.2", PREFIX), (ICD10CM, "C00-C96", RANGE), (ICD10CM, "O09-O48", RANGE),
    (RXNORM, "197417", CODE), (CPT, "93970", CODE), (CPT, "0001U", CODE), (CPT, "1234F", CODE),
    (HCPCS[0], "J1815", CODE), ("http://example.org/local", "anything at all", CODE),
]

INVALID = [
    (SNOMED, "128053004", CODE, "128053004 is not a SNOMED CT code: its check digit (the last, Verhoeff) is wrong"),
    (SNOMED, "I80.2", CODE, "I80.2 is not a SNOMED CT code (ICD-10-CM format?)"),
    (SNOMED, "2823-3", CODE, "2823-3 is not a SNOMED CT code (LOINC format?)"),
    (SNOMED, "12345", CODE, "12345 is not a SNOMED CT code (CPT format?)"),
    (SNOMED, "1234", CODE, "1234 is not a SNOMED CT code: expected 6 to 18 digits, not starting with 0"),
    (SNOMED, "055300003", CODE, "not starting with 0"),
    (SNOMED, "55300013", CODE, "partition identifier 01 is a description id, not a concept (00 or 10)"),
    (SNOMED, "1234101", CODE, "partition 10 (an extension id) needs a 7-digit namespace"),
    (LOINC, "2823-4", CODE, "2823-4 is not a LOINC code: its check digit is wrong (mod 10 gives 2823-3)"),
    (LOINC, "LA15173-1", CODE, "mod 10 gives LA15173-0"),
    (LOINC, "2823", CODE, "2823 is not a LOINC code: expected digits, a hyphen and a check digit, as 2823-3 "
                          "(or an answer code, as LA15173-0) (RxNorm format?)"),
    (LOINC, "R25.2", CODE, "R25.2 is not a LOINC code (ICD-10-CM format?)"),
    (ICD10CM, "128053003", CODE, "128053003 is not an ICD-10-CM code (SNOMED CT format?)"),
    (ICD10CM, "2823-3", CODE, "2823-3 is not an ICD-10-CM code (LOINC format?)"),
    (ICD10CM, "R25.21234", CODE, "R25.21234 is not an ICD-10-CM code: expected a letter, a digit"),
    (ICD10CM, "RR5.2", CODE, "expected a letter, a digit"),
    (ICD10CM, "C00-C9", RANGE, "an ICD-10-CM range is two 3-character categories"),
    (ICD10CM, "C96-C00", RANGE, "from the lower category to the higher"),
    (ICD10CM, "I8Z", PREFIX, None),  # a letter as the third character is allowed (Z3A); listed to keep it so
    (RXNORM, "R25.2", CODE, "R25.2 is not an RxNorm code (ICD-10-CM format?)"),
    (RXNORM, "0197417", CODE, "expected an RxCUI"),
    (CPT, "9397", CODE, "9397 is not a CPT code: expected 5 digits, or 4 digits and F, T or U"),
    (CPT, "128053003", CODE, "128053003 is not a CPT code (SNOMED CT format?)"),
    (HCPCS[0], "93970", CODE, "93970 is not an HCPCS code (CPT format?)"),
]


@pytest.mark.parametrize("system, code, kind", VALID, ids=[f"{c}" for _, c, _ in VALID])
def test_valid_codes_fit(system, code, kind):
    assert code_format_problem(system, code, kind) is None


@pytest.mark.parametrize("system, code, kind, message", INVALID, ids=[f"{c}" for _, c, _, _ in INVALID])
def test_invalid_codes_are_named_with_the_reason_or_the_system_they_look_like(system, code, kind, message):
    problem = code_format_problem(system, code, kind)
    if message is None:
        assert problem is None
    else:
        assert problem is not None and message in problem, problem


def test_check_digit_algorithms():
    assert verhoeff_valid("1280530033") is False and verhoeff_valid("128053003") is True
    assert [loinc_check_digit(body) for body in ("2823", "12345", "LA18976", "LA6576")] == [3, 5, 3, 8]
    assert looks_like("I80.2") == "ICD-10-CM" and looks_like("quite wrong") is None


def test_every_bundled_code_fits_its_format():
    """The bundled rule set loads (the check runs in parse_ruleset), and so do the codes of the shipped
    value-set files (not yet checked by the loader: their (system, code) pairs are checked here)."""
    assert load_default_ruleset().version
    folder = resources.files("cds_service").joinpath("data/valuesets")
    checked = 0
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            for system, code in read_valueset_codes(entry.read_text(encoding="utf-8")):
                assert code_format_problem(system, code) is None, (entry.name, code)
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("old, new, path, message", [
    ("sct|128053003,", "sct|I80.2,", "value_sets.dvt_acute.codes[2]",
     "I80.2 is not a SNOMED CT code (ICD-10-CM format?)"),
    ("prefixes: [icd10cm|I82.4,", "prefixes: [icd10cm|1282.4,", "value_sets.dvt_acute.prefixes[0]",
     "1282.4 is not an ICD-10-CM code prefix"),
    ("ranges: [icd10cm|C00-C96]", "ranges: [icd10cm|C00-C9]", "value_sets.active_cancer.ranges[0]",
     "C00-C9 is not an ICD-10-CM range"),
    ("codes: [loinc|2823-3,", "codes: [loinc|2823-4,", "observations.potassium.codes[0]",
     "its check digit is wrong (mod 10 gives 2823-3)"),
    ("    right: [sct|62175007,", "    right: [sct|62175008,", "laterality.body_site_sides.right[0]",
     "62175008 is not a SNOMED CT code: its check digit"),
    ("  - prefix: icd10cm|I82.4\n", "  - prefix: icd10cm|82.4\n", "laterality.last_character_sides[0].prefix",
     "82.4 is not an ICD-10-CM code prefix"),
])
def test_a_misplaced_code_is_a_problem_at_its_line_and_field(old, new, path, message):
    assert old in DEFAULT_TEXT
    text = DEFAULT_TEXT.replace(old, new, 1)
    with pytest.raises(RuleSetError) as info:
        parse_ruleset(text, "rules.yaml")
    located = [(line, p, m) for line, p, m in info.value.located if p == path]
    assert len(located) == 1 and message in located[0][2], info.value.located
    expected_line = next(n for n, line in enumerate(text.splitlines(), start=1) if new.strip().split()[-1] in line)
    assert located[0][0] == expected_line
    assert len(info.value.problems) == 1  # nothing else in the file is flagged


def test_a_code_of_a_system_without_a_format_is_not_checked():
    text = DEFAULT_TEXT.replace("  cpt: http://www.ama-assn.org/go/cpt\n",
                                "  cpt: http://www.ama-assn.org/go/cpt\n  local: urn:example:local\n", 1)
    text = text.replace("codes: [sct|387713003]", "codes: [sct|387713003, local|whatever-1]", 1)
    assert parse_ruleset(text, "rules.yaml").value_set("surgical_procedure_category")


def test_file_code_problems_lists_a_few_and_counts_the_rest():
    pairs = [(SNOMED, "128053003"), *[(SNOMED, f"I80.{n}") for n in range(7)]]
    problems = file_code_problems(pairs, limit=5)
    assert problems[0] == "I80.0 is not a SNOMED CT code (ICD-10-CM format?)"
    assert len(problems) == 6 and problems[-1] == "and 2 more code(s) that do not fit their system's format"


@pytest.mark.parametrize(("system", "prefix", "fits"), [
    (CPT, "9397", True),      # 93970, 93971 (venous duplex) start with it
    (CPT, "9397x", False),
    (CPT, "939701", False),   # longer than any CPT code
    (SNOMED, "12805", True),  # a prefix has no check digit to verify
    (SNOMED, "012", False),
])
def test_a_prefix_outside_icd10cm_fits_when_a_well_formed_code_starts_with_it(system, prefix, fits):
    assert (code_format_problem(system, prefix, PREFIX) is None) is fits
