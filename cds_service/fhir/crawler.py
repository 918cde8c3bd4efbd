"""Patients from a FHIR server, for ``rules simulate`` (as Bundles: ``admin/simulation.py`` makes them records): ``Patient?_count=`` pages, then for each patient
the searches of the patient-view prefetch (Condition, MedicationRequest with its Medications,
MedicationStatement, Observation, Procedure, ServiceRequest), through ``fhir/reader.py`` (the one session
policy: a timeout on every call, one retry rule, no redirects, next links on the same server only).
The service itself never uses this module (the hook path fetches through the prefetch ``Fetcher``).
"""

from __future__ import annotations

from typing import Any, Iterator

import requests

from cds_service.fhir.errors import FhirError
from cds_service.fhir.reader import FhirReader

TIMEOUT_SECONDS = 30
PER_PATIENT_QUERIES = (
    "Condition?patient={id}&_count=200",
    "MedicationRequest?patient={id}&_include=MedicationRequest:medication&_count=200",
    "MedicationStatement?patient={id}&_count=200",
    "Observation?patient={id}&code={loinc}&_count=200",
    "Procedure?patient={id}&_count=200",
    "ServiceRequest?patient={id}&_count=200",
)


class ServerSourceError(RuntimeError):
    """The FHIR server could not be read; the message names the URL, ``error`` is the typed cause."""

    def __init__(self, message: str, error: FhirError) -> None:
        super().__init__(message)
        self.error = error


def is_server_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class ServerPopulation:
    def __init__(self, base_url: str, loinc_codes: list[str], page_size: int = 100,
                 session: requests.Session | None = None) -> None:
        self.base = base_url.rstrip("/") + "/"
        self.loinc = ",".join(loinc_codes)
        self.page_size = page_size
        try:
            self.reader = FhirReader(self.base, session=session, timeout=TIMEOUT_SECONDS)
        except FhirError as error:
            raise ServerSourceError(f"{base_url}: {error.reason}", error) from None

    def _resources(self, query: str) -> list[dict]:
        try:
            return self.reader.search(query)
        except FhirError as error:  # the CLI prints it: the URL is the operator's own server
            raise ServerSourceError(f"{error.url or self.base}: {error.reason}", error) from None

    def patient_bundles(self) -> Iterator[dict[str, Any]]:
        """One collection Bundle per patient: the Patient and what the searches found (admin/population.py
        reads each as a record)."""
        for patient in self._resources(f"Patient?_count={self.page_size}"):
            if patient.get("resourceType") != "Patient" or not patient.get("id"):
                continue
            resources = [patient]
            for query in PER_PATIENT_QUERIES:
                resources += self._resources(query.format(id=patient["id"], loinc=self.loinc))
            unique = {(r.get("resourceType"), r.get("id")): r for r in resources}
            bundle = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": r} for r in unique.values()]}
            yield bundle
