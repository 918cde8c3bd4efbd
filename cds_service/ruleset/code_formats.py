"""Does a code fit its code system's format? A rule set that lists ``sct|I80.2`` (an ICD-10-CM code under
SNOMED CT) never matches a record; ``rules validate`` and the console's live validation say so at its line.

Formats, by code system URI (a system not listed here is not checked):

    ICD-10-CM   a letter, a digit, a letter or digit, then optionally a dot and up to 4 letters or digits
                (R25.2, I82.4Z, Z3A, with or without the dot, any case: the rule set normalises them).
                A prefix may stop earlier (I8, I82., F17.2); a range is two 3-character categories (C00-C96).
    SNOMED CT   6-18 digits, no leading zero, a valid Verhoeff check digit (the last digit), and a concept
                partition identifier (the two digits before it: 00, or 10 with a 7-digit namespace before it);
                a description (01, 11) or relationship (02, 12) id is not a concept.
    LOINC       digits, a hyphen and the mod-10 check digit (2823-3); answer and part codes (LA15173-0,
                LP...) too, their letters counted as their character value minus 48, as Regenstrief does.
    RxNorm      digits (an RxCUI), no leading zero.
    CPT         5 digits, or 4 digits and F, T or U (category II, III, PLA codes).
    HCPCS       a letter A-V and 4 digits (level II).

``code_format_problem(system_uri, code, kind)`` returns the message for a code that does not fit (with the
system it looks like, when one fits: "I80.2 is not a SNOMED CT code (ICD-10-CM format?)"), or None.
"""

from __future__ import annotations

import re
from typing import Callable

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = ("https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
         "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "urn:oid:2.16.840.1.113883.6.285")

# Entry kinds of a rule set: an exact code, a prefix (ICD-10-CM), a category range (ICD-10-CM).
CODE, PREFIX, RANGE = "code", "prefix", "range"

_ICD10CM_CODE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$", re.IGNORECASE)
_ICD10CM_PREFIX = re.compile(r"^[A-Z]([0-9]([0-9A-Z](\.?[0-9A-Z]{0,4})?)?)?$", re.IGNORECASE)
_ICD10CM_CATEGORY = re.compile(r"^[A-Z][0-9][0-9A-Z]$", re.IGNORECASE)
_LOINC = re.compile(r"^(?P<body>(L[AP])?[0-9]{1,7})-(?P<check>[0-9])$")
_RXNORM = re.compile(r"^[1-9][0-9]{0,8}$")
_CPT = re.compile(r"^[0-9]{4}[0-9FTU]$")
_HCPCS = re.compile(r"^[A-V][0-9]{4}$")

# ---------------------------------------------------------------- check digits

_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit of ``digits`` is the Verhoeff check digit of the rest (SNOMED CT ids)."""
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def loinc_check_digit(body: str) -> int:
    """The LOINC mod-10 check digit of ``body`` (the code before its hyphen): from the right, every other
    character (the first, third, ...) doubled, the digits of every result summed, and the difference to the
    next multiple of ten. A letter (LA, LP codes) counts as its character value minus 48."""
    total = 0
    for position, char in enumerate(reversed(body)):
        value = ord(char) - 48
        if position % 2 == 0:
            total += sum(int(d) for d in str(2 * value))
        else:
            total += value
    return (10 - total % 10) % 10


# ---------------------------------------------------------------- one system each

def _icd10cm(code: str, kind: str) -> str | None:
    if kind == RANGE:
        ends = code.split("-")
        if len(ends) != 2 or not all(_ICD10CM_CATEGORY.match(end) for end in ends):
            return "an ICD-10-CM range is two 3-character categories, as C00-C96"
        if ends[0].upper() > ends[1].upper():
            return "an ICD-10-CM range runs from the lower category to the higher"
        return None
    pattern = _ICD10CM_PREFIX if kind == PREFIX else _ICD10CM_CODE
    if not pattern.match(code):
        return "expected a letter, a digit, a letter or digit, then optionally a dot and up to 4 letters or digits"
    return None


def _snomed(code: str, kind: str) -> str | None:
    if not code.isdigit() or not 6 <= len(code) <= 18 or code.startswith("0"):
        return "expected 6 to 18 digits, not starting with 0"
    partition = code[-3:-1]
    if partition[0] == "1" and len(code) < 11:
        return f"partition {partition} (an extension id) needs a 7-digit namespace: at least 11 digits"
    if partition not in ("00", "10"):
        kinds = {"01": "a description id", "11": "a description id", "02": "a relationship id",
                 "12": "a relationship id"}
        what = kinds.get(partition, "no known partition")
        return f"partition identifier {partition} is {what}, not a concept (00 or 10)"
    if not verhoeff_valid(code):
        return "its check digit (the last, Verhoeff) is wrong"
    return None


def _loinc(code: str, kind: str) -> str | None:
    match = _LOINC.match(code)
    if not match:
        return "expected digits, a hyphen and a check digit, as 2823-3 (or an answer code, as LA15173-0)"
    expected = loinc_check_digit(match["body"])
    if int(match["check"]) != expected:
        return f"its check digit is wrong (mod 10 gives {match['body']}-{expected})"
    return None


def _rxnorm(code: str, kind: str) -> str | None:
    return None if _RXNORM.match(code) else "expected an RxCUI: digits, not starting with 0"


def _cpt(code: str, kind: str) -> str | None:
    return None if _CPT.match(code) else "expected 5 digits, or 4 digits and F, T or U"


def _hcpcs(code: str, kind: str) -> str | None:
    return None if _HCPCS.match(code.upper()) else "expected a letter A-V and 4 digits (HCPCS level II)"


# A prefix of a code in a system other than ICD-10-CM (whose checker knows prefixes itself) fits when some
# well-formed code starts with it: CPT 9397 (93970, 93971), never a check digit to verify.
_PREFIX_SHAPES: dict[str, tuple[re.Pattern[str], str]] = {
    SNOMED: (re.compile(r"^[1-9]\d{0,17}$"), "1 to 18 digits, not starting with 0"),
    LOINC: (re.compile(r"^(?:L[AP])?\d+(?:-\d?)?$"), "the start of a LOINC code, as 2823 or 2823-"),
    RXNORM: (re.compile(r"^[1-9]\d*$"), "digits, not starting with 0"),
    CPT: (re.compile(r"^(?:\d{1,5}|\d{4}[FTU])$"), "1 to 5 digits (or 4 digits and F, T or U)"),
    **{uri: (re.compile(r"^[A-V]\d{0,4}$"), "a letter A-V and up to 4 digits") for uri in HCPCS},
}


def _prefix_shape_problem(system: str, code: str) -> str | None:
    pattern, expected = _PREFIX_SHAPES[system]
    return None if pattern.match(code.upper()) else f"expected {expected}"


Checker = Callable[[str, str], "str | None"]
FORMATS: dict[str, tuple[str, Checker]] = {
    ICD10CM: ("ICD-10-CM", _icd10cm),
    SNOMED: ("SNOMED CT", _snomed),
    LOINC: ("LOINC", _loinc),
    RXNORM: ("RxNorm", _rxnorm),
    CPT: ("CPT", _cpt),
    **{uri: ("HCPCS", _hcpcs) for uri in HCPCS},
}
# The systems a misplaced code is compared with, most telling first (every string of digits is an RxCUI).
_HINT_ORDER = (ICD10CM, LOINC, SNOMED, CPT, HCPCS[0], RXNORM)


def looks_like(code: str, kind: str = CODE, *, besides: str | None = None) -> str | None:
    """The name of the first system (other than ``besides``) whose format ``code`` fits, or None."""
    for uri in _HINT_ORDER:
        name, check = FORMATS[uri]
        if uri != besides and FORMATS.get(besides or "", ("",))[0] != name and check(code, kind) is None:
            return name
    return None


def code_format_problem(system: str, code: str, kind: str = CODE) -> str | None:
    """Why ``code`` (an exact code, a prefix or a range: ``kind``) does not fit the format of ``system`` (a
    code-system URI), or None when it fits or the system has no known format."""
    known = FORMATS.get(system)
    if known is None:
        return None
    name, check = known
    reason = _prefix_shape_problem(system, code) if kind == PREFIX and system in _PREFIX_SHAPES else check(code, kind)
    if reason is None:
        return None
    # Any string of digits is an RxCUI: no hint for a SNOMED CT or CPT code that is merely wrong.
    other = looks_like(code, kind, besides=system)
    if other == "RxNorm" and name in ("SNOMED CT", "CPT"):
        other = None
    noun = {CODE: "code", PREFIX: "code prefix", RANGE: "range"}[kind]
    # The reason too when no other format fits, the hint is weak (an RxCUI) or the shape is right but the check fails.
    detail = f": {reason}" if other in (None, "RxNorm") or reason.startswith("its check digit") else ""
    hint = f" ({other} format?)" if other else ""
    article = "an" if name in ("ICD-10-CM", "RxNorm", "HCPCS") else "a"
    return f"{code} is not {article} {name} {noun}{detail}{hint}"


def file_code_problems(pairs: "list[tuple[str, str]]", limit: int = 5) -> list[str]:
    """The format problems of a value-set file's (system, code) pairs, at most ``limit`` of them and a count of
    the rest (for ``valuesets.valueset_file_codes`` to report at the file's ``file:`` line)."""
    found = [problem for system, code in pairs if (problem := code_format_problem(system, code))]
    shown = found[:limit]
    if len(found) > limit:
        shown.append(f"and {len(found) - limit} more code(s) that do not fit their system's format")
    return shown
