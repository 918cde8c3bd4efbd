"""The rule set: a validated YAML file holding every clinical parameter (RULES.md), and its
compiled form (value sets as fast matchers).

The schema is strict: unknown keys, wrong types and negative weights are errors that name the path.
``load_ruleset(path)`` returns a ``RuleSet``; ``load_default_ruleset()`` the one shipped in the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CARD_IDS = ("possible-dvt", "venous-duplex-workup", "conservative-care", "elevated-cramp-risk")
_CODE_REF = re.compile(r"^(?P<alias>[a-z0-9_]+)\|(?P<code>[^\s|]+)$")


class RuleSetError(ValueError):
    """The rule-set file is invalid; ``problems`` lists (path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"{source}: invalid rule set\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueSetSpec(_Strict):
    source: str = Field(min_length=1)
    codes: list[str] = []
    prefixes: list[str] = []
    ranges: list[str] = []
    exclude: list[str] = []


class Windows(_Strict):
    recent_days: int = Field(ge=0)
    chronic_edema_min_days: int = Field(ge=0)
    dehydration_days: int = Field(ge=0)
    recent_surgery_days: int = Field(ge=0)
    lab_lookback_days: int = Field(ge=0)


class LastCharacterSides(_Strict):
    prefix: str
    sides: dict[str, str]


class Laterality(_Strict):
    code_sides: dict[str, list[str]]
    last_character_sides: list[LastCharacterSides] = []
    body_site_sides: dict[str, list[str]]


class ObservationSpec(_Strict):
    codes: list[str] = Field(min_length=1)
    window_days: int = Field(ge=0)
    low_below: dict[str, float] = {}
    units: list[str] = []


class Observations(_Strict):
    pregnancy_status: ObservationSpec
    smoking_status: ObservationSpec
    potassium: ObservationSpec
    magnesium: ObservationSpec
    bmi: ObservationSpec


class MedicationSpec(_Strict):
    request_intents: list[str]
    request_statuses: list[str]
    statement_statuses: list[str]


class RedFlag(_Strict):
    signs: list[str]
    signs_needed_alone: int = Field(ge=1)
    wells_items: list[str]


class VenousIndex(_Strict):
    threshold: float = Field(gt=0)
    points: dict[str, float]
    chronic_leg_edema_with_heart_failure: float = Field(ge=0)
    objective_signs: list[str]
    age_years: int = Field(ge=0)
    bmi_at_least: float = Field(gt=0)


class LabCheck(_Strict):
    drug_classes: list[str]
    conditions: list[str]


class Contributors(_Strict):
    threshold: float = Field(gt=0)
    points: dict[str, float]
    age_years: int = Field(ge=0)
    drug_classes: dict[str, str]
    lab_check: LabCheck


class CardSettings(_Strict):
    enabled: bool = True
    indicator: str
    suppress_days: int = Field(ge=0)

    @field_validator("indicator")
    @classmethod
    def _known_indicator(cls, value: str) -> str:
        if value not in {"info", "warning", "critical"}:
            raise ValueError("must be one of info, warning, critical")
        return value


class RuleSetSpec(_Strict):
    version: str = Field(min_length=1)
    title: str
    code_systems: dict[str, str]
    windows: Windows
    value_sets: dict[str, ValueSetSpec]
    laterality: Laterality
    observations: Observations
    medications: MedicationSpec
    red_flag: RedFlag
    venous_index: VenousIndex
    contributors: Contributors
    cards: dict[str, CardSettings]

    @field_validator("venous_index", "contributors")
    @classmethod
    def _no_negative_points(cls, value: Any) -> Any:
        negative = [name for name, points in value.points.items() if points < 0]
        if negative:
            raise ValueError(f"negative points for {', '.join(sorted(negative))}")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> "RuleSetSpec":
        problems: list[str] = []
        for name, spec in self.value_sets.items():
            for entry in [*spec.codes, *spec.prefixes, *spec.ranges, *spec.exclude]:
                problem = _check_code_ref(entry, self.code_systems)
                if problem:
                    problems.append(f"value_sets.{name}: {problem}")
        for spec_name, spec in self.observations:
            for entry in spec.codes:
                problem = _check_code_ref(entry, self.code_systems)
                if problem:
                    problems.append(f"observations.{spec_name}: {problem}")
        missing_cards = [card for card in CARD_IDS if card not in self.cards]
        if missing_cards:
            problems.append(f"cards: missing settings for {', '.join(missing_cards)}")
        unknown_cards = sorted(set(self.cards) - set(CARD_IDS))
        if unknown_cards:
            problems.append(f"cards: unknown card ids {', '.join(unknown_cards)}")
        for sign in self.venous_index.objective_signs:
            if sign not in self.venous_index.points:
                problems.append(f"venous_index.objective_signs: {sign} has no points")
        if sum(self.venous_index.points.values()) < self.venous_index.threshold:
            problems.append("venous_index.threshold: no combination of items can reach it")
        if sum(self.contributors.points.values()) < self.contributors.threshold:
            problems.append("contributors.threshold: no combination of items can reach it")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _check_code_ref(entry: str, systems: dict[str, str]) -> str | None:
    match = _CODE_REF.match(entry)
    if not match:
        return f"{entry!r} is not of the form '<system alias>|<code>'"
    if match["alias"] not in systems:
        return f"{entry!r} uses an unknown code system {match['alias']!r} (known: {', '.join(sorted(systems))})"
    return None


@dataclass(frozen=True)
class ValueSet:
    """A compiled value set: exact codes, prefixes and category ranges per system URI."""

    name: str
    codes: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    ranges: tuple[tuple[str, str, str], ...]
    excludes: tuple[tuple[str, str], ...]

    def contains(self, system: str | None, code: str | None) -> bool:
        if not system or not code:
            return False
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


class RuleSet:
    """A validated rule set with compiled value sets."""

    def __init__(self, spec: RuleSetSpec, source: str) -> None:
        self.spec = spec
        self.source = source
        self.value_sets = {name: _compile(name, vs, spec.code_systems) for name, vs in spec.value_sets.items()}

    @property
    def version(self) -> str:
        return self.spec.version

    def value_set(self, name: str) -> ValueSet:
        return self.value_sets[name]

    def system(self, alias: str) -> str:
        return self.spec.code_systems[alias]

    def resolve(self, ref: str) -> tuple[str, str]:
        alias, code = ref.split("|", 1)
        return self.spec.code_systems[alias], code

    @cached_property
    def observation_codes(self) -> dict[tuple[str, str], str]:
        """(system, code) -> observation kind (pregnancy_status, potassium, ...)."""
        table: dict[tuple[str, str], str] = {}
        for kind, spec in self.spec.observations:
            for ref in spec.codes:
                table[self.resolve(ref)] = kind
        return table


def _compile(name: str, spec: ValueSetSpec, systems: dict[str, str]) -> ValueSet:
    def pairs(entries: list[str]) -> list[tuple[str, str]]:
        return [(systems[e.split("|", 1)[0]], e.split("|", 1)[1]) for e in entries]

    ranges = []
    for system, span in pairs(spec.ranges):
        low, _, high = span.partition("-")
        ranges.append((system, low, high or low))
    return ValueSet(
        name=name,
        codes=frozenset(pairs(spec.codes)),
        prefixes=tuple(pairs(spec.prefixes)),
        ranges=tuple(ranges),
        excludes=tuple(pairs(spec.exclude)),
    )


def parse_ruleset(text: str, source: str) -> RuleSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise RuleSetError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(data, dict):
        raise RuleSetError(source, [("(top)", "expected a mapping of rule-set keys")])
    try:
        spec = RuleSetSpec.model_validate(data)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in error["loc"]) or "(top)", _message(error)) for error in exc.errors()
        ]
        raise RuleSetError(source, problems) from None
    return RuleSet(spec, source)


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def load_ruleset(path: Path | str) -> RuleSet:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleSetError(str(path), [("(file)", f"cannot be read: {exc.strerror}")]) from None
    return parse_ruleset(text, str(path))


def load_default_ruleset() -> RuleSet:
    text = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")
    return parse_ruleset(text, "cds_service/data/ruleset.yaml")
