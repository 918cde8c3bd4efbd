"""What changed between two rule sets' YAML, as an admin asks it: which parameter of which card went from
what to what, which codes each value set gained or lost; plus the unified text diff (docs/admin-rules.md).

Works on the texts alone (a draft that does not validate yet still has a diff); pure, no Flask.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import yaml

from cds_service.admin.ruleset_view import cards_reading, display_of

CODE_KINDS = ("codes", "prefixes", "ranges", "exclude")


class DiffError(ValueError):
    """One of the texts is not a YAML mapping; ``side`` is "before" or "after"."""

    def __init__(self, side: str, message: str) -> None:
        self.side = side
        super().__init__(f"{side}: {message}")


@dataclass(frozen=True)
class ParameterChange:
    field: str  # dotted path: "venous_index.threshold"
    before: Any  # None: the field was added
    after: Any  # None: the field was removed
    cards: tuple[str, ...]  # the cards whose rule reads it; (): every card (version, code systems ...)

    @property
    def change(self) -> str:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "changed"


@dataclass(frozen=True)
class CodeRef:
    ref: str  # "icd10cm|R25.2"
    display: str | None


@dataclass(frozen=True)
class CodeChange:
    value_set: str
    kind: str  # codes | prefixes | ranges | exclude
    added: tuple[CodeRef, ...]
    removed: tuple[CodeRef, ...]
    cards: tuple[str, ...]


@dataclass(frozen=True)
class RuleSetDiff:
    before_version: str | None
    after_version: str | None
    parameters: tuple[ParameterChange, ...]
    codes: tuple[CodeChange, ...]
    text: tuple[str, ...]  # unified diff lines, without line ends

    @property
    def empty(self) -> bool:
        return not self.parameters and not self.codes

    def cards_changed(self) -> tuple[str, ...]:
        """Every card named by a change, in first-mention order."""
        seen: dict[str, None] = {}
        changes: tuple[ParameterChange | CodeChange, ...] = (*self.parameters, *self.codes)
        for change in changes:
            seen.update(dict.fromkeys(change.cards))
        return tuple(seen)


def _load(text: str, side: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DiffError(side, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise DiffError(side, "expected a mapping of rule-set keys")
    return data


def _flatten(data: Any, path: str = "") -> dict[str, Any]:
    """Dotted path -> leaf (a scalar, or a whole list): mappings are walked, lists compared whole."""
    if isinstance(data, dict):
        leaves: dict[str, Any] = {}
        for key, value in data.items():
            leaves.update(_flatten(value, f"{path}.{key}" if path else str(key)))
        return leaves
    return {path: data}


def _is_code_list(field: str) -> bool:
    parts = field.split(".")
    return len(parts) == 3 and parts[0] == "value_sets" and parts[2] in CODE_KINDS


def _code_ref(ref: Any, systems: dict[str, str]) -> CodeRef:
    alias, _, code = str(ref).partition("|")
    system = systems.get(alias) if isinstance(systems, dict) else None
    return CodeRef(str(ref), display_of(system, code)[0] if system and code else None)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _code_change(field: str, before: Any, after: Any, systems: dict[str, str]) -> CodeChange | None:
    old, new = _as_list(before), _as_list(after)
    added = tuple(_code_ref(ref, systems) for ref in new if ref not in old)
    removed = tuple(_code_ref(ref, systems) for ref in old if ref not in new)
    if not added and not removed:
        return None  # the same codes in another order: the rules read a set
    _, name, kind = field.split(".")
    return CodeChange(name, kind, added, removed, cards_reading(field))


def text_diff(before: str, after: str, before_name: str = "before", after_name: str = "after") -> tuple[str, ...]:
    return tuple(line.rstrip("\n") for line in difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), fromfile=before_name, tofile=after_name))


def diff_rulesets(before: str, after: str) -> RuleSetDiff:
    """The structured and the text diff from ``before`` to ``after`` (both rule-set YAML texts)."""
    old, new = _load(before, "before"), _load(after, "after")
    old_leaves, new_leaves = _flatten(old), _flatten(new)
    systems = new.get("code_systems") or old.get("code_systems") or {}
    parameters: list[ParameterChange] = []
    codes: list[CodeChange] = []
    for field in [*old_leaves, *(f for f in new_leaves if f not in old_leaves)]:
        was, now = old_leaves.get(field), new_leaves.get(field)
        if was == now and (field in old_leaves) == (field in new_leaves):
            continue
        if _is_code_list(field):
            change = _code_change(field, was, now, systems)
            if change is not None:
                codes.append(change)
        else:
            parameters.append(ParameterChange(field, was, now, cards_reading(field)))
    before_version, after_version = old.get("version"), new.get("version")
    return RuleSetDiff(
        before_version=None if before_version is None else str(before_version),
        after_version=None if after_version is None else str(after_version),
        parameters=tuple(parameters), codes=tuple(codes),
        text=text_diff(before, after, f"version {before_version}", f"version {after_version}"),
    )
