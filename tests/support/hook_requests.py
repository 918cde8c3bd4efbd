"""Hook requests for HTTP-level tests: ``minimal_request`` (a valid patient-view request with prefetch),
the Patient and searchset builders it uses, and the ids and clock they share.

``minimal_request(hook=DROP)`` removes a key; other keyword arguments replace top-level fields.
"""

from __future__ import annotations

import copy
from typing import Any

NOW = "2026-06-15T12:00:00Z"
SERVICE_ID = "leg-cramp-patient-view"
SERVICE_URL = f"/cds-services/{SERVICE_ID}"
PATIENT_ID = "p-zq-1"
# A distinctive name: tests assert it never appears in any response body (no PHI echoed back).
PATIENT_NAME = ("Zebulon", "Quixote")
DROP = object()  # ``minimal_request(hook=DROP)`` removes the key


def patient_resource(**fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "name": [{"given": [PATIENT_NAME[0]], "family": PATIENT_NAME[1]}],
        "gender": "male",
        "birthDate": "1960-03-02",
    }
    resource.update(fields)
    return resource


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def minimal_request(**overrides: Any) -> dict[str, Any]:
    """A valid patient-view request: Patient with birthDate and an empty Condition searchset.

    Keyword arguments replace top-level fields (``prefetch=...``, ``context=...``); ``DROP`` removes one.
    """
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient_resource(), "conditions": searchset()},
    }
    for key, value in overrides.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = copy.deepcopy(value)
    return body
