"""Value-set files (``value_sets.<name>.file``): FHIR ValueSet JSON beside the rule-set file or shipped in
``cds_service/data/valuesets/``, read into (system, code) pairs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from cds_service.ruleset.code_formats import file_code_problems
from cds_service.ruleset.schema import DocumentPath, RuleSetSpec


def _shipped_valuesets() -> Any:
    return resources.files("cds_service").joinpath("data")


def _resolve_valueset_file(name: str, base_dir: Path | None) -> Any | None:
    """``file:`` relative to the rule-set file's folder, else to the package's ``data/`` folder (for
    ``valuesets/<name>.json`` shipped with the package)."""
    candidates: list[Any] = []
    if base_dir is not None:
        candidates.append(base_dir / name)
    candidates.append(_shipped_valuesets().joinpath(name))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def read_valueset_codes(text: str) -> list[tuple[str, str]]:
    """(system, code) pairs of a FHIR ValueSet: ``expansion.contains`` (nested ``contains`` too), else
    ``compose.include[].concept``. Raises ValueError with what is wrong."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("resourceType") != "ValueSet":
        raise ValueError("not a FHIR ValueSet (resourceType must be ValueSet)")
    pairs: list[tuple[str, str]] = []

    def walk(entries: Any) -> None:
        for entry in entries or []:
            if not isinstance(entry, dict):
                raise ValueError("expansion.contains holds a non-object")
            if entry.get("code") and not entry.get("abstract"):
                if not entry.get("system"):
                    raise ValueError(f"expansion code {entry['code']!r} has no system")
                pairs.append((str(entry["system"]), str(entry["code"])))
            walk(entry.get("contains"))

    expansion = data.get("expansion")
    if isinstance(expansion, dict) and expansion.get("contains"):
        walk(expansion["contains"])
        return pairs
    for index, include in enumerate((data.get("compose") or {}).get("include") or []):
        if include.get("filter") or include.get("valueSet"):
            raise ValueError(f"compose.include[{index}] uses filter/valueSet: only explicit codes are supported "
                             "(ship an expansion)")
        system = include.get("system")
        concepts = include.get("concept") or []
        if concepts and not system:
            raise ValueError(f"compose.include[{index}] has concepts but no system")
        pairs += [(system, str(c["code"])) for c in concepts if isinstance(c, dict) and c.get("code")]
    if not pairs:
        raise ValueError("holds no codes (expected expansion.contains or compose.include.concept)")
    return pairs


def valueset_file_codes(spec: RuleSetSpec, base_dir: Path | None,
                         problems: list[tuple[DocumentPath, str]]) -> dict[str, frozenset[tuple[str, str]]]:
    known_systems = set(spec.code_systems.values())
    codes: dict[str, frozenset[tuple[str, str]]] = {}
    for name, value_set in spec.value_sets.items():
        if not value_set.file:
            continue
        where = ("value_sets", name, "file")
        found = _resolve_valueset_file(value_set.file, base_dir)
        if found is None:
            looked = [str(base_dir / value_set.file)] if base_dir is not None else []
            looked.append(f"cds_service/data/{value_set.file} (shipped)")
            problems.append((where, f"value-set file {value_set.file!r} not found (looked in {', '.join(looked)})"))
            continue
        try:
            pairs = read_valueset_codes(found.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((where, f"value-set file {value_set.file!r} cannot be read: {exc}"))
            continue
        except ValueError as exc:
            problems.append((where, f"value-set file {value_set.file!r}: {exc}"))
            continue
        unknown = sorted({system for system, _ in pairs} - known_systems)
        if unknown:
            problems.append((where, f"value-set file {value_set.file!r} uses code systems not in code_systems: "
                             f"{', '.join(unknown)}"))
            continue
        # Each code must fit its system's format, as codes written in the rule set itself do (checks.py).
        problems.extend((where, f"value-set file {value_set.file!r}: {problem}")
                        for problem in file_code_problems(list(pairs)))
        codes[name] = frozenset(pairs)
    return codes

