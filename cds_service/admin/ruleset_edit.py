"""Apply the Rules form's changes (numbers, lists of codes, wording) to a rule set's YAML text, keeping every
comment, key order and line the change does not touch (docs/admin-rules.md).

A change is ``field -> value``: the field is the dotted path the validator names (``venous_index.threshold``,
``value_sets.leg_cramp.codes``, ``cards.possible-dvt.suppress_days``); the value a form string (a list: one
entry a line or comma-separated) or an already typed value. Each field's type comes from the rule-set
schema (``ruleset/schema.py``), so a wrong type is refused naming the field, and a path the schema does not
have is refused as unknown. Ranges and cross-field rules stay the validator's (``parse_ruleset``).

The new value is spliced into the text at its node's span (PyYAML's composer keeps each node's start
and end) rather than re-dumped: ruamel.yaml's round-trip dump, tried first, keeps the comments but re-flows
every wrapped flow list (measured on the bundled rule set: 19 lists joined into one line each at a wide
line width, 28 places changed at its default width), which would bury the one real change in the version
diff. All the changes of one form are spliced in one pass (from the end of the text backwards, so earlier
offsets stay valid), then read back and compared.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Union

import yaml
from pydantic import BaseModel

from cds_service.ruleset.schema import RuleSetSpec

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: ~20x faster
_WIDTH = 118  # wrap spliced flow lists like the bundled file (lines up to ~118 characters)


class EditError(ValueError):
    """A change cannot be applied; ``field`` names the form field (or "(document)")."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class FieldType:
    kind: str  # integer | number | boolean | text | list

    def describe(self) -> str:
        return {"integer": "a whole number", "number": "a number", "boolean": "true or false",
                "text": "text", "list": "a list"}[self.kind]


# ---------------------------------------------------------------- field types from the schema

def _split(path: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not part for part in parts):
        raise EditError(path or "(empty)", "unknown field")
    return parts


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def field_type(path: str) -> FieldType:
    """The type of a rule-set field, from the schema; EditError (unknown field / not editable) otherwise."""
    annotation: Any = RuleSetSpec
    for part in _split(path):
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in annotation.model_fields:
                raise EditError(path, "unknown field")
            annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            raise EditError(path, "unknown field")
    annotation = _unwrap(annotation)
    if annotation is bool:
        return FieldType("boolean")
    if annotation is int:
        return FieldType("integer")
    if annotation is float:
        return FieldType("number")
    if annotation is str:
        return FieldType("text")
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        return FieldType("list")
    raise EditError(path, "not editable in the form: edit it in the YAML")


# ---------------------------------------------------------------- form values -> typed values

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}


def parse_value(path: str, kind: FieldType, raw: Any) -> Any:
    """A form value (string) or typed value as the field's type; EditError naming the field otherwise."""
    expected = f"expected {kind.describe()}, got {raw!r}"
    if kind.kind == "list":
        if isinstance(raw, str):
            return [entry.strip() for entry in re.split(r"[\n,]", raw) if entry.strip()]
        if isinstance(raw, (list, tuple)) and all(isinstance(entry, str) for entry in raw):
            return [entry.strip() for entry in raw if entry.strip()]
        raise EditError(path, expected)
    if kind.kind == "text":
        if isinstance(raw, str) and "\n" not in raw.strip():
            return raw.strip()
        raise EditError(path, f"expected one line of text, got {raw!r}")
    if kind.kind == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise EditError(path, expected)
    if isinstance(raw, bool):
        raise EditError(path, expected)
    if kind.kind == "integer":
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            return int(raw.strip())
        raise EditError(path, expected)
    if isinstance(raw, (int, float)) and math.isfinite(raw):
        return raw
    if isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            raise EditError(path, expected) from None
        if math.isfinite(number):
            return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", raw.strip()) else number
    raise EditError(path, expected)


# ---------------------------------------------------------------- emitting YAML

def _flow_scalar(value: Any, quote: str | None = None) -> str:
    """One scalar as YAML writes it inside a flow list or after ``key:``: a string in the quotes the
    original used (``quote``: '"' or "'"), else quoted only when it must be."""
    if isinstance(value, str) and quote == '"':
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and quote == "'":
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    dumped = yaml.safe_dump([value], default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return dumped[1:-1]


def _flow_list(values: list[str], column: int, quote: str | None = None) -> str:
    """``[a, b, ...]`` wrapped below ``_WIDTH`` with continuation lines under the first entry."""
    items = [_flow_scalar(value, quote) for value in values]
    if not items:
        return "[]"
    lines: list[str] = []
    current = "[" + items[0]
    for item in items[1:]:
        if column + len(current) + len(item) + 3 > _WIDTH:
            lines.append(current + ",")
            current = " " * (column + 1) + item
        else:
            current += ", " + item
    lines.append(current + "]")
    return "\n".join(lines)


# ---------------------------------------------------------------- the edit

def _load(text: str) -> tuple[dict[str, Any], Any]:
    """(data, composed root node) of the document; EditError naming "(document)" when it is not a mapping."""
    try:
        data = yaml.load(text, Loader=_LOADER)
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise EditError("(document)", f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise EditError("(document)", "expected a mapping of rule-set keys")
    return data, root


def _node_at(root: Any, path: list[str]) -> Any | None:
    """The composed node of the value at ``path`` (its marks give its span in the text), or None when a key
    on the way is absent."""
    node = root
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((value for key, value in node.value if key.value == part), None)
        if node is None:
            return None
    return node


def _quote_of(node: Any) -> str | None:
    """The quote style of a scalar node, or of a sequence's first entry (kept for the new value)."""
    if isinstance(node, yaml.SequenceNode):
        node = node.value[0] if node.value else None
    if isinstance(node, yaml.ScalarNode) and node.style in ('"', "'"):
        return node.style
    return None


def _replacement(text: str, start: int, node: Any, value: Any) -> str:
    column = start - text.rfind("\n", 0, start) - 1
    quote = _quote_of(node)
    if isinstance(value, list):
        if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
            indent = " " * column
            return ("\n" + indent).join(f"- {_flow_scalar(entry, quote)}" for entry in value) if value else "[]"
        return _flow_list(value, column, quote)
    return _flow_scalar(value, quote)


def _splice_of(text: str, node: Any, value: Any) -> tuple[int, int, str]:
    """(start, end, new text) replacing ``node``'s span with ``value``."""
    start, end = node.start_mark.index, node.end_mark.index
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">") and text[start:end].endswith("\n"):
        end = text.rfind("\n", start, end)  # a block scalar's span runs to the next key: keep its line break
    replacement = _replacement(text, start, node, value)
    if start == end and text[start - 1:start] == ":":  # an empty value (``codes:``): keep "key: value"
        replacement = " " + replacement
    return start, end, replacement


def _nested(keys: list[str], value: Any) -> str:
    """``value`` under ``keys`` as nested flow mappings: ``{a: {b: 1}}`` without the outer braces."""
    rendered = _flow_list(value, 0) if isinstance(value, list) else _flow_scalar(value)
    for key in reversed(keys[1:]):
        rendered = "{" + f"{_flow_scalar(key)}: {rendered}" + "}"
    return f"{_flow_scalar(keys[0])}: {rendered}"


def _insert_key(text: str, path: list[str], value: Any) -> str:
    """Add ``key: value`` to the deepest mapping of ``path`` the document has (a new points item, an absent
    optional key or section)."""
    field = ".".join(path)
    _, root = _load(text)
    for depth in range(len(path) - 1, -1, -1):  # depth 0: the document itself
        parent = _node_at(root, path[:depth])
        if parent is not None:
            break
    else:
        raise EditError(field, "unknown field: its section is not in the document")
    start, end = parent.start_mark.index, parent.end_mark.index
    if not isinstance(parent, yaml.MappingNode):
        raise EditError(field, "unknown field: its parent is not a mapping")
    entry = _nested(path[depth:], value)
    if parent.flow_style:
        close = text.rfind("}", start, end)
        return text[:close] + (", " if parent.value else "") + entry + text[close:]
    if not parent.value:
        raise EditError(field, "cannot add to an empty mapping: edit it in the YAML")
    last_key, last_value = parent.value[-1]
    value_end = last_value.end_mark.index
    if value_end > 0 and text[value_end - 1] == "\n":  # a nested block ends at the next line's start
        insert_at = value_end - 1
    else:  # after the last entry's line, its trailing comment included
        line_end = text.find("\n", value_end)
        insert_at = len(text) if line_end < 0 else line_end
    return text[:insert_at] + "\n" + " " * last_key.start_mark.column + entry + text[insert_at:]


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool) and old == new
    return bool(old == new)


def apply_changes(text: str, changes: Mapping[str, Any]) -> str:
    """``text`` with each field set to its value; unchanged fields leave the text as it is. Raises
    EditError (naming the first field that cannot be applied) for an unknown field or a wrong type."""
    typed = {path: parse_value(path, field_type(path), raw) for path, raw in changes.items()}
    data, root = _load(text)
    splices: list[tuple[int, int, str]] = []
    inserts: list[tuple[list[str], Any]] = []
    applied: dict[str, Any] = {}
    for path, value in typed.items():
        parts = _split(path)
        present, old = _lookup(data, parts)
        if present and _same(old, value):
            continue
        if present and isinstance(old, dict):
            raise EditError(path, "not editable in the form: edit it in the YAML")
        applied[path] = value
        if present:
            splices.append(_splice_of(text, _node_at(root, parts), value))
        else:
            inserts.append((parts, value))
    for start, end, replacement in sorted(splices, reverse=True):  # from the end: earlier offsets stay valid
        text = text[:start] + replacement + text[end:]
    for parts, value in inserts:  # rare (a new points item, a value set's first codes): one at a time
        text = _insert_key(text, parts, value)
    _check_applied(text, applied)
    return text


def _check_applied(text: str, applied: dict[str, Any]) -> None:
    """The spliced text must read back as the values asked for (a guard against a mis-placed splice)."""
    if not applied:
        return
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:  # pragma: no cover - a bug in the splice, never the admin's input
        raise EditError(next(iter(applied)), f"the change would not be valid YAML: {exc}") from None
    for path, value in applied.items():
        found = _lookup(data, path.split("."))[1]
        if found != value:  # pragma: no cover - same
            raise EditError(path, f"the change could not be written (read back {found!r})")


# ---------------------------------------------------------------- the form against its YAML

def _lookup(data: Any, path: list[str]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def form_string(value: Any) -> str:
    """A YAML value as the form's input holds it (a list: one entry a line)."""
    if isinstance(value, list):
        return "\n".join(str(entry) for entry in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def form_values(text: str, fields: list[str]) -> dict[str, str] | None:
    """Each field's value in ``text`` as a form string ("" when absent); None when ``text`` is not YAML."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    return {field: form_string(_lookup(data, field.split("."))[1]) for field in fields}


def changed_fields(base_text: str, submitted: Mapping[str, str]) -> dict[str, Any]:
    """The submitted form fields whose value differs from the one the form was rendered with (read from
    ``base_text``), typed: an admin who edits the YAML and the form in one go keeps both, the form winning
    where they touch the same field. EditError for a wrong type or unknown field, naming it."""
    try:
        base = yaml.safe_load(base_text)
    except yaml.YAMLError:
        base = None
    changed: dict[str, Any] = {}
    for path, raw in submitted.items():
        kind = field_type(path)
        present, old = _lookup(base, path.split(".")) if isinstance(base, dict) else (False, None)
        if not present and isinstance(raw, str) and not raw.strip():
            continue  # an empty input for an absent key (a value set without prefixes, a key the YAML lost)
        value = parse_value(path, kind, raw)
        if present and _same(old, value):
            continue
        changed[path] = value
    return changed
