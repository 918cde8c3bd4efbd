"""The rule set's value sets compiled for lookup: ``ValueSet`` (one set), ``ConceptIndex`` (all of them, one
probe per code), ``CompiledLaterality``; code references (``alias|code``) resolved and ICD-10-CM codes
normalised (``normalize_code``: no dot, upper case) at compile time and at every lookup (RULES.md, Codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from cds_service.ruleset.schema import ValueSetSpec

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def normalize_code(system: str | None, code: str) -> str:
    """A code as the value sets hold it: ICD-10-CM without its dot, in upper case (RULES.md, Codes: ``R252``,
    ``r25.2`` and ``R25.2`` are one code); other systems exactly as given."""
    if system == ICD10CM:
        return code.replace(".", "").strip().upper()
    return code


@dataclass(frozen=True)
class ValueSet:
    """A compiled value set: exact codes, prefixes and category ranges per system URI (codes normalised by
    ``normalize_code``, here and at lookup)."""

    name: str
    codes: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    ranges: tuple[tuple[str, str, str], ...]
    excludes: tuple[tuple[str, str], ...]

    def contains(self, system: str | None, code: str | None) -> bool:
        if not system or not code:
            return False
        code = normalize_code(system, code)
        if any(system == ex_system and code.startswith(ex_code) for ex_system, ex_code in self.excludes):
            return False
        if (system, code) in self.codes:
            return True
        if any(system == p_system and code.startswith(prefix) for p_system, prefix in self.prefixes):
            return True
        category = code[:3]
        return any(
            system == r_system and low <= category <= high and len(code) >= 3
            for r_system, low, high in self.ranges
        )

    def first_match(self, codings: Iterable[tuple[str | None, str | None, str | None]]):
        for coding in codings:
            if self.contains(coding[0], coding[1]):
                return coding
        return None


class ConceptIndex:
    """All value sets compiled into one lookup: which of them hold a (system, code).

    The same answers as asking every ``ValueSet.contains`` in turn, for a fraction of the cost: engine/facts.py asks
    it for every Condition coding and engine/chart.py for every Condition it receives, where looping over 35 value
    sets and each of their prefixes was ~10 % of a call. Exact codes are one dict probe; prefixes (and
    exclusions) one probe per distinct prefix length, ``code[:length]`` against a dict of prefixes.
    """

    def __init__(self, value_sets: dict[str, ValueSet]) -> None:
        self._order = {name: index for index, name in enumerate(value_sets)}
        exact: dict[tuple[str, str], set[str]] = {}
        prefixes: dict[tuple[str, str], set[str]] = {}
        excludes: dict[tuple[str, str], set[str]] = {}
        self._ranges: list[tuple[str, str, str, str]] = []  # system, low, high, value set
        for name, value_set in value_sets.items():
            for pair in value_set.codes:
                exact.setdefault(pair, set()).add(name)
            for pair in value_set.prefixes:
                prefixes.setdefault(pair, set()).add(name)
            for pair in value_set.excludes:
                excludes.setdefault(pair, set()).add(name)
            self._ranges += [(system, low, high, name) for system, low, high in value_set.ranges]
        self._exact = {pair: frozenset(names) for pair, names in exact.items()}
        self._prefixes = {pair: frozenset(names) for pair, names in prefixes.items()}
        self._excludes = {pair: frozenset(names) for pair, names in excludes.items()}
        # A hit on code[:n] means the code starts with that prefix, also when the code is shorter than n.
        self._prefix_lengths = sorted({len(prefix) for _, prefix in prefixes})
        self._exclude_lengths = sorted({len(prefix) for _, prefix in excludes})

    def names(self, system: str | None, code: str | None) -> frozenset[str]:
        """The value sets that hold this coding (``ValueSet.contains``)."""
        if not system or not code:
            return frozenset()
        code = normalize_code(system, code)
        found = set(self._exact.get((system, code), ()))
        for length in self._prefix_lengths:
            found.update(self._prefixes.get((system, code[:length]), ()))
        if len(code) >= 3:
            category = code[:3]
            found.update(name for r_system, low, high, name in self._ranges
                         if system == r_system and low <= category <= high)
        if found:
            for length in self._exclude_lengths:
                found.difference_update(self._excludes.get((system, code[:length]), ()))
        return frozenset(found)

    def holds(self, system: str | None, code: str | None) -> bool:
        """Whether any value set holds this coding."""
        return bool(self.names(system, code))

    def first_matches(self, codings: Iterable[tuple[str | None, str | None, str | None]]) -> dict[str, Any]:
        """Value set name -> the first of ``codings`` it holds (``ValueSet.first_match`` for each value set),
        in the rule set's order of value sets."""
        hits: dict[str, Any] = {}
        for coding in codings:
            for name in self.names(coding[0], coding[1]):
                hits.setdefault(name, coding)
        return {name: hits[name] for name in sorted(hits, key=self._order.__getitem__)}


@dataclass(frozen=True)
class CompiledLaterality:
    """``laterality`` of the rule set as (side, resolved (system, code) pairs), in the file's order."""

    code_sides: tuple[tuple[str, frozenset[tuple[str, str]]], ...]
    last_character_sides: tuple[tuple[str, str, dict[str, str]], ...]  # system, prefix, last char -> side
    body_site_sides: tuple[tuple[str, frozenset[tuple[str, str]]], ...]



def resolve_code_ref(ref: str, systems: dict[str, str]) -> tuple[str, str]:
    """``alias|code`` as (system URI, normalised code)."""
    alias, code = ref.split("|", 1)
    system = systems[alias]
    return system, normalize_code(system, code)


def compile_value_set(name: str, spec: ValueSetSpec, systems: dict[str, str],
             file_codes: frozenset[tuple[str, str]] = frozenset()) -> ValueSet:
    def pairs(entries: list[str]) -> list[tuple[str, str]]:
        return [resolve_code_ref(e, systems) for e in entries]

    ranges = []
    for system, span in pairs(spec.ranges):
        low, _, high = span.partition("-")
        ranges.append((system, low, high or low))
    return ValueSet(
        name=name,
        codes=frozenset(pairs(spec.codes)) | {(system, normalize_code(system, code)) for system, code in file_codes},
        prefixes=tuple(pairs(spec.prefixes)),
        ranges=tuple(ranges),
        excludes=tuple(pairs(spec.exclude)),
    )

