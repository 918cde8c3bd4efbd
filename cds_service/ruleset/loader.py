"""The rule set: a validated YAML file holding every clinical parameter (RULES.md), and its
compiled form (value sets as fast matchers).

The schema is strict: unknown keys, wrong types and negative weights are errors that name the path.
``load_ruleset(path)`` returns a ``RuleSet``; ``load_default_ruleset()`` the one shipped in the package.

Validation runs in two passes, and every problem is reported with its path and, where the file has it,
its YAML line (``RuleSetError.located``):

1. the pydantic schema (unknown keys, wrong types, ranges);
2. ``checks.semantic_problems``: code references (known system alias, ``alias|code`` form), negative weights,
   unknown item ids in ``points`` (the ids the rules know: ``VENOUS_INDEX_ITEMS``, ``CONTRIBUTOR_ITEMS``),
   value sets the rules read, value-set files (``file:``), thresholds no combination of items can reach,
   and the card text of every enabled card in the ``cards`` package (``card_text_problems``);
   ``order_rules`` (order hooks): known order classes, drug-table classes and order card ids (the former
   single ``cramp-associated-drug-order`` id named as split); ``procedures``: FHIR R4 statuses;
   ``condition_text``: terms only for value sets that exist and can never raise a critical card
   (``CRITICAL_VALUE_SETS``), no empty cue, no term holding a cue.

ICD-10-CM codes are normalised (``normalize_code``: no dot, upper case) when a value set is compiled and at
every lookup, so records match with or without the dot, in any case (RULES.md, Codes).

``docs/rule-set.md`` documents every key. The package, one concept a module::

    loader.py       parse_ruleset / load_ruleset / load_default_ruleset, RuleSet, RuleSetError (with YAML lines)
    schema.py       the pydantic models of the file and the ids the rules know
    checks.py       the semantic checks (pass 2) and card_text_problems
    valuesets.py    value-set files (FHIR ValueSet JSON)
    index.py        compiled value sets (ValueSet, ConceptIndex), normalize_code
    card_ids.py     every card id, defined once
    text_match.py   the Condition text fallback matcher
"""

from __future__ import annotations

from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cds_service.ruleset.checks import card_text_problems, semantic_problems
from cds_service.ruleset.index import CompiledLaterality, ConceptIndex, ValueSet, compile_value_set, normalize_code, resolve_code_ref
from cds_service.ruleset.schema import CARD_IDS, CONTRIBUTOR_CONDITION_ITEMS, CONTRIBUTOR_DRUG_ITEMS, VENOUS_CONDITION_ITEMS, DocumentPath, RuleSetSpec
from cds_service.ruleset.text_match import TextMatcher
from cds_service.ruleset.valuesets import valueset_file_codes

# Names other packages still import from here; their home is the module named above.
__all__ = [
    "CARD_IDS", "CONTRIBUTOR_CONDITION_ITEMS", "CONTRIBUTOR_DRUG_ITEMS", "VENOUS_CONDITION_ITEMS",
    "RuleSet", "RuleSetError", "card_text_problems", "line_of", "load_default_ruleset", "load_ruleset",
    "normalize_code", "parse_ruleset",
]


class RuleSetError(ValueError):
    """The rule-set file is invalid; ``problems`` lists (path, message) pairs and ``lines`` the YAML line
    of each (None where the file has no such place, e.g. a missing key's parent is not found)."""

    def __init__(self, source: str, problems: list[tuple[str, str]], lines: list[int | None] | None = None) -> None:
        self.source = source
        self.problems = problems
        self.lines = list(lines) if lines is not None else [None] * len(problems)
        listed = "\n".join(
            f"  {f'line {line}: ' if line else ''}{path}: {message}"
            for (path, message), line in zip(problems, self.lines)
        )
        super().__init__(f"{source}: invalid rule set\n{listed}")

    @property
    def located(self) -> list[tuple[int | None, str, str]]:
        """(line, path, message) for each problem."""
        return [(line, path, message) for (path, message), line in zip(self.problems, self.lines)]



class RuleSet:
    """A validated rule set with compiled value sets."""

    def __init__(self, spec: RuleSetSpec, source: str,
                 file_codes: dict[str, frozenset[tuple[str, str]]] | None = None) -> None:
        self.spec = spec
        self.source = source
        file_codes = file_codes or {}
        self.value_sets = {
            name: compile_value_set(name, vs, spec.code_systems, file_codes.get(name, frozenset()))
            for name, vs in spec.value_sets.items()
        }
        self.concepts = ConceptIndex(self.value_sets)

    @property
    def version(self) -> str:
        return self.spec.version

    def value_set(self, name: str) -> ValueSet:
        return self.value_sets[name]

    def system(self, alias: str) -> str:
        return self.spec.code_systems[alias]

    def resolve(self, ref: str) -> tuple[str, str]:
        """``alias|code`` as (system URI, code normalised as the value sets hold it)."""
        return resolve_code_ref(ref, self.spec.code_systems)

    @cached_property
    def condition_text(self) -> TextMatcher:
        """The Condition text fallback (RULES.md): terms per value set and the negation / uncertainty cues."""
        spec = self.spec.condition_text
        return TextMatcher(spec.terms, spec.cues)

    @cached_property
    def laterality(self) -> "CompiledLaterality":
        """The laterality tables with their code references resolved once (engine/facts.py reads them per record)."""
        spec = self.spec.laterality

        def resolved(sides: dict[str, list[str]]) -> tuple[tuple[str, frozenset[tuple[str, str]]], ...]:
            return tuple((side, frozenset(self.resolve(ref) for ref in refs)) for side, refs in sides.items())

        return CompiledLaterality(
            code_sides=resolved(spec.code_sides),
            last_character_sides=tuple((*self.resolve(rule.prefix), rule.sides) for rule in spec.last_character_sides),
            body_site_sides=resolved(spec.body_site_sides),
        )

    @cached_property
    def procedure_codes(self) -> frozenset[tuple[str, str]] | None:
        """The (system, code) pairs that make a Procedure or ServiceRequest readable by a rule (surgical
        category, venous duplex), for engine/chart.py to skip validating the rest; None when one of those value sets
        uses prefixes or ranges (then every record is read)."""
        sets = [self.value_sets[name] for name in ("surgical_procedure_category", "venous_duplex")]
        if any(vs.prefixes or vs.ranges for vs in sets):
            return None
        return frozenset().union(*(vs.codes for vs in sets))

    @cached_property
    def observation_codes(self) -> dict[tuple[str, str], str]:
        """(system, code) -> observation kind (pregnancy_status, potassium, ...)."""
        table: dict[tuple[str, str], str] = {}
        for kind, spec in self.spec.observations:
            for ref in spec.codes:
                table[self.resolve(ref)] = kind
        return table



# ---------------------------------------------------------------- YAML lines

def _line_index(text: str) -> dict[DocumentPath, int]:
    """Path (keys and list indices) -> 1-based line of that node (a mapping entry: its key's line)."""
    index: dict[DocumentPath, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: DocumentPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for position, item in enumerate(node.value):
                child = (*path, position)
                index[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        index[()] = root.start_mark.line + 1
        walk(root, ())
    return index


def line_of(index: dict[DocumentPath, int], path: DocumentPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor present in the file (a missing key: its parent)."""
    for end in range(len(path), -1, -1):
        line = index.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


def _format_path(path: DocumentPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _raise(source: str, text: str, problems: list[tuple[DocumentPath, str]]) -> None:
    index = _line_index(text)
    raise RuleSetError(
        source,
        [(_format_path(path), message) for path, message in problems],
        [line_of(index, path) for path, _ in problems],
    )


# ---------------------------------------------------------------- entry points

def parse_ruleset(text: str, source: str, base_dir: Path | None = None) -> RuleSet:
    """Validate and compile a rule set; ``base_dir`` is the folder ``value_sets.*.file`` are relative to."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise RuleSetError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")],
                           [mark.line + 1 if mark else None]) from None
    if not isinstance(data, dict):
        raise RuleSetError(source, [("(top)", "expected a mapping of rule-set keys")], [1])
    try:
        spec = RuleSetSpec.model_validate(data)
    except ValidationError as exc:
        _raise(source, text, [(tuple(error["loc"]), _message(error)) for error in exc.errors()])
        raise  # unreachable: _raise always raises
    problems = semantic_problems(spec)
    file_codes = valueset_file_codes(spec, base_dir, problems)
    if problems:
        _raise(source, text, problems)
    return RuleSet(spec, source, file_codes)


def _message(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def load_ruleset(path: Path | str) -> RuleSet:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise RuleSetError(str(path), [("(file)", f"cannot be read: {reason}")]) from None
    return parse_ruleset(text, str(path), base_dir=path.resolve().parent)


def load_default_ruleset() -> RuleSet:
    text = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")
    return parse_ruleset(text, "cds_service/data/ruleset.yaml")
