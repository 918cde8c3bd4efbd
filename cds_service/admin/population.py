"""Patients from files: FHIR transaction/collection Bundles (one patient each, e.g. Synthea) turned
into the prefetch a CDS client would send, with ``urn:uuid:`` references rewritten to ``Type/id``.

Used by the tests, the benchmarks and the admin tooling (``rules simulate``); the service itself never
reads files of patients.
"""

from __future__ import annotations

import gc
import json
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson

from cds_service.engine.registry import chart_templates

TEMPLATE_TYPES = {
    "conditions": "Condition",
    "medicationRequests": "MedicationRequest",
    "medicationStatements": "MedicationStatement",
    "observations": "Observation",
    "procedures": "Procedure",
    "serviceRequests": "ServiceRequest",
}
# The resource types a prefetch holds: the only ones parsed, rewritten and kept (Claims, EOBs ... are not).
READ_TYPES = frozenset({"Patient", "Medication", *TEMPLATE_TYPES.values()})


@dataclass(frozen=True)
class PatientRecord:
    patient_id: str
    source: str
    prefetch: dict[str, Any]

    def hook_request(self, hook: str = "patient-view", user: str = "Practitioner/example") -> dict[str, Any]:
        return {
            "hook": hook,
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": user, "patientId": self.patient_id},
            "prefetch": self.prefetch,
        }

    def __reduce__(self) -> tuple[Any, tuple[str, str, bytes]]:
        # Sent to worker processes as orjson bytes: unpickling a large dict tree costs twice orjson's parse.
        return _record_from_json, (self.patient_id, self.source, orjson.dumps(self.prefetch))


def _record_from_json(patient_id: str, source: str, prefetch: bytes) -> PatientRecord:
    return PatientRecord(patient_id, source, orjson.loads(prefetch))


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """While building many JSON trees: they hold no reference cycles, so the cyclic collector finds
    nothing in them and only rescans the growing heap (it took half the time of reading bulk data)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class BundleError(ValueError):
    """The file is not a Bundle holding exactly one Patient; the message names the file."""


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def _rewrite_references(node: Any, urn_to_ref: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: (urn_to_ref.get(value, value) if key == "reference" and isinstance(value, str)
                  else _rewrite_references(value, urn_to_ref))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_references(item, urn_to_ref) for item in node]
    return node


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def record_from_bundle(bundle: dict[str, Any], source: str = "<bundle>") -> PatientRecord:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BundleError(f"{source}: not a FHIR Bundle")
    urn_to_ref = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if isinstance(e, dict) and str(e.get("fullUrl", "")).startswith("urn:uuid:")
        and isinstance(e.get("resource"), dict) and e["resource"].get("id")
    }
    read = [r for r in _resources(bundle) if r.get("resourceType") in READ_TYPES]
    # Only the resources the prefetch keeps are rewritten; none at all when nothing uses urn:uuid.
    resources = [_rewrite_references(r, urn_to_ref) for r in read] if urn_to_ref else read
    return record_from_resources(resources, source)


def record_from_resources(resources: list[dict[str, Any]], source: str) -> PatientRecord:
    """One patient's resources (exactly one Patient; other types than ``READ_TYPES`` ignored) as a record."""
    by_type: dict[str | None, list[dict[str, Any]]] = {}  # None: a record without a resourceType
    for resource in resources:
        by_type.setdefault(resource.get("resourceType"), []).append(resource)
    patients = by_type.get("Patient", [])
    if len(patients) != 1:
        raise BundleError(f"{source}: expected one Patient, found {len(patients)}")
    patient = patients[0]
    prefetch: dict[str, Any] = {"patient": patient}
    for key, resource_type in TEMPLATE_TYPES.items():
        prefetch[key] = searchset(by_type.get(resource_type, []))
    medications = by_type.get("Medication", [])
    if medications:
        prefetch["medicationRequests"]["entry"] += [{"resource": m, "search": {"mode": "include"}} for m in medications]
    return PatientRecord(str(patient["id"]), source, prefetch)


def read_bundle_file(path: Path) -> PatientRecord:
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot be read as JSON ({exc})") from None
    return record_from_bundle(bundle, str(path))


def iter_bundle_files(paths: list[Path]) -> Iterator[PatientRecord]:
    for path in paths:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            yield read_bundle_file(file)


def latest_record_date(bundle_or_record: PatientRecord) -> str:
    """The latest date in a patient's data (YYYY-MM-DD): the natural 'as of' for a historical set."""
    latest = ""
    for key in ("conditions", *TEMPLATE_TYPES):
        value = bundle_or_record.prefetch.get(key) or {}
        for entry in value.get("entry", []):
            resource = entry["resource"]
            for field in ("recordedDate", "onsetDateTime", "authoredOn", "effectiveDateTime", "issued"):
                stamp = resource.get(field)
                if isinstance(stamp, str) and stamp[:10] > latest:
                    latest = stamp[:10]
    return latest


__all__ = ["PatientRecord", "BundleError", "READ_TYPES", "record_from_bundle", "record_from_resources", "cyclic_gc_paused", "read_bundle_file", "iter_bundle_files",
           "searchset", "latest_record_date", "chart_templates"]
