"""Patients from files: FHIR transaction/collection Bundles (one patient each, e.g. Synthea) turned
into the prefetch a CDS client would send, with ``urn:uuid:`` references rewritten to ``Type/id``.

Used by the tests, the benchmarks and the admin tooling (``rules simulate``); the service itself never
reads files of patients.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cds_service.engine.registry import chart_templates

TEMPLATE_TYPES = {
    "conditions": "Condition",
    "medicationRequests": "MedicationRequest",
    "medicationStatements": "MedicationStatement",
    "observations": "Observation",
    "procedures": "Procedure",
    "serviceRequests": "ServiceRequest",
}


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
    resources = [_rewrite_references(r, urn_to_ref) for r in _resources(bundle)]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1:
        raise BundleError(f"{source}: expected one Patient, found {len(patients)}")
    patient = patients[0]
    prefetch: dict[str, Any] = {"patient": patient}
    for key, resource_type in TEMPLATE_TYPES.items():
        prefetch[key] = searchset([r for r in resources if r.get("resourceType") == resource_type])
    medications = [r for r in resources if r.get("resourceType") == "Medication"]
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


__all__ = ["PatientRecord", "BundleError", "record_from_bundle", "read_bundle_file", "iter_bundle_files",
           "searchset", "latest_record_date", "chart_templates"]
