"""Patients from FHIR bulk data (NDJSON: one resource per line, e.g. a ``$export`` output folder), grouped
per patient by the ``subject`` / ``patient`` reference, and turned into the same ``PatientRecord`` a
Bundle file gives (``population.record_from_resources``).

Only the resource types a prefetch holds (``population.READ_TYPES``) are parsed: a bulk export is mostly
Claims, ExplanationOfBenefits and Encounters, which no rule reads. A line that begins with its
``resourceType`` (as bulk exports write them) is skipped from that prefix without JSON parsing when its
type is not read; any other line is parsed (orjson) to learn its type. A malformed line of a skipped
type is therefore not reported. No reference is rewritten: bulk data already uses ``Type/id``.

Used by the admin tooling (``rules simulate``); the service itself never reads files of patients.
``Medication`` resources (which name no patient) are attached to every patient whose medication records
reference them; other resources that name no patient are skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import orjson

from cds_service.admin.population import (
    READ_TYPES, BundleError, PatientRecord, cyclic_gc_paused, record_from_resources,
)

NDJSON_SUFFIXES = (".ndjson", ".jsonl")
# `{"resourceType":"Claim",` at the start of a line: the top-level type, read without parsing the line.
_LEADING_TYPE = re.compile(rb'[ \t]*\{[ \t]*"resourceType"[ \t]*:[ \t]*"([A-Za-z]{1,64})"[ \t]*[,}]')
_SKIPPED = object()


def is_ndjson(path: Path) -> bool:
    return path.name.lower().endswith(NDJSON_SUFFIXES)


def _patient_id(reference: Any) -> str | None:
    """``Patient/123``, ``https://x/fhir/Patient/123`` or ``Patient/123/_history/2`` -> ``123``."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/")
    if "Patient" in parts:
        index = len(parts) - 1 - parts[::-1].index("Patient")
        if index + 1 < len(parts) and parts[index + 1]:
            return parts[index + 1]
    return None


def _medication_refs(resource: dict[str, Any]) -> list[str]:
    reference = (resource.get("medicationReference") or {}).get("reference")
    if isinstance(reference, str) and not reference.startswith("#"):
        return [reference.rsplit("/", 1)[-1]]
    return []


def _parse_line(line: bytes, where: str) -> dict[str, Any] | object | None:
    """The resource on ``line``; ``_SKIPPED`` for a type the prefetch does not read; None for a blank line."""
    leading = _LEADING_TYPE.match(line)
    if leading is not None and leading.group(1).decode() not in READ_TYPES:
        return _SKIPPED
    if not line.strip():
        return None
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise BundleError(f"{where}: not a FHIR resource (no resourceType)")
    return resource if resource["resourceType"] in READ_TYPES else _SKIPPED


def _read_file(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, resource) for each resource of a read type in one NDJSON file."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            resource = _parse_line(line, f"{path}:{number}")
            if resource is not None and resource is not _SKIPPED:
                yield number, resource  # type: ignore[misc]


def read_ndjson(paths: list[Path]) -> Iterator[PatientRecord]:
    """Every patient in ``paths`` (read together: a Patient file and its Condition, Observation ... files),
    in the order their Patient resources appear. Raises ``BundleError`` naming the file and line."""
    patients: list[tuple[str, dict[str, Any]]] = []  # (source file name, Patient)
    by_patient: dict[str, list[dict[str, Any]]] = {}
    medications: dict[str, dict[str, Any]] = {}
    with cyclic_gc_paused():
        for path in paths:
            for number, resource in _read_file(path):
                kind = resource["resourceType"]
                if kind == "Patient":
                    if not resource.get("id"):
                        raise BundleError(f"{path}:{number}: Patient without an id")
                    patients.append((path.name, resource))
                elif kind == "Medication":
                    if resource.get("id"):
                        medications[str(resource["id"])] = resource
                else:
                    owner = _patient_id(resource.get("subject")) or _patient_id(resource.get("patient"))
                    if owner is not None:
                        by_patient.setdefault(owner, []).append(resource)
        records = []
        for source, patient in patients:
            resources = by_patient.get(str(patient["id"]), [])
            wanted = {ref for r in resources for ref in _medication_refs(r)}
            entries = [patient, *resources, *(medications[m] for m in sorted(wanted) if m in medications)]
            records.append(record_from_resources(entries, source))
    yield from records


def write_ndjson(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Write resources as one NDJSON file per resource type (``<Type>.ndjson``), as a bulk export does."""
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in records:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    written = []
    for kind, resources in sorted(by_type.items()):
        path = folder / f"{kind}.ndjson"
        path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in resources), encoding="utf-8")
        written.append(path)
    return written
