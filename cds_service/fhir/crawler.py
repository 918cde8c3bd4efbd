"""Patients from a FHIR server, for ``rules simulate``: ``Patient?_count=`` pages, then for each patient
the searches of the patient-view prefetch (Condition, MedicationRequest with its Medications,
MedicationStatement, Observation, Procedure, ServiceRequest), following ``next`` links on the same server only.

One ``requests.Session`` with retries on the adapter and a timeout on every call. The service itself
never uses this module (the hook path fetches through the prefetch ``Fetcher``).
"""

from __future__ import annotations

from typing import Any, Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from cds_service.admin.population import PatientRecord, record_from_bundle

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
    """The FHIR server could not be read; the message names the URL."""


def is_server_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _session() -> requests.Session:
    session = requests.Session()
    retry = Retry(total=3, backoff_factor=0.3, status_forcelist=(429, 502, 503, 504), allowed_methods=("GET",))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    session.headers["Accept"] = "application/fhir+json"
    return session


class ServerPopulation:
    def __init__(self, base_url: str, loinc_codes: list[str], page_size: int = 100,
                 session: requests.Session | None = None) -> None:
        self.base = base_url.rstrip("/") + "/"
        self.loinc = ",".join(loinc_codes)
        self.page_size = page_size
        self.session = session or _session()

    def _get(self, url: str) -> dict[str, Any]:
        try:
            response = self.session.get(url, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise ServerSourceError(f"{url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ServerSourceError(f"{url}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise ServerSourceError(f"{url}: not JSON") from None
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise ServerSourceError(f"{url}: not a FHIR Bundle")
        return body

    def _pages(self, query: str) -> Iterator[dict[str, Any]]:
        url: str | None = self.base + query
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            bundle = self._get(url)
            yield bundle
            url = next((link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
            if url and not url.startswith(self.base):
                raise ServerSourceError(f"{self.base}: a next link leaves the server ({url}); not followed")

    def _resources(self, query: str) -> list[dict[str, Any]]:
        return [entry["resource"] for page in self._pages(query) for entry in page.get("entry") or []
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)]

    def patients(self) -> Iterator[PatientRecord]:
        for patient in self._resources(f"Patient?_count={self.page_size}"):
            if patient.get("resourceType") != "Patient" or not patient.get("id"):
                continue
            resources = [patient]
            for query in PER_PATIENT_QUERIES:
                resources += self._resources(query.format(id=patient["id"], loinc=self.loinc))
            unique = {(r.get("resourceType"), r.get("id")): r for r in resources}
            bundle = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": r} for r in unique.values()]}
            yield record_from_bundle(bundle, self.base.rstrip("/"))
