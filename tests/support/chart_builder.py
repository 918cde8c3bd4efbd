"""Small builders for FHIR R4 test charts, so rule tables read like RULES.md."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TODAY = date(2026, 6, 15)
NOW = "2026-06-15T12:00:00Z"
PATIENT_ID = "p1"
_ids = itertools.count(1)


def days_ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def _system(code: str) -> str:
    return SNOMED if code.isdigit() else ICD10


def condition(code: str, *, age: int | None = 100, status: str | None = "active",
              verification: str | None = None, abated: bool = False, body_site: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": f"c{next(_ids)}",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": {"coding": [{"system": _system(code), "code": code, "display": f"code {code}"}]},
    }
    if status:
        resource["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    if age is not None:
        resource["onsetDateTime"] = days_ago(age)
    if abated:
        resource["abatementDateTime"] = days_ago(1)
    if body_site:
        resource["bodySite"] = [{"text": body_site}]
    return resource


def med_request(*, rxcui: str | None = None, text: str | None = None, status: str = "active",
                intent: str = "order") -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if rxcui:
        concept["coding"] = [{"system": RXNORM, "code": rxcui}]
    if text:
        concept["text"] = text
    return {"resourceType": "MedicationRequest", "id": f"m{next(_ids)}", "status": status, "intent": intent,
            "subject": {"reference": f"Patient/{PATIENT_ID}"}, "medicationCodeableConcept": concept,
            "authoredOn": days_ago(100)}


def med_statement(*, text: str, status: str = "active", ended_days_ago: int | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "MedicationStatement", "id": f"s{next(_ids)}", "status": status,
                                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                                "medicationCodeableConcept": {"text": text}}
    if ended_days_ago is not None:
        resource["effectivePeriod"] = {"start": days_ago(400), "end": days_ago(ended_days_ago)}
    else:
        resource["effectiveDateTime"] = days_ago(100)
    return resource


def observation(loinc: str, *, value: float | None = None, unit: str | None = None, age: int = 10,
                answer: tuple[str, str] | None = None, comparator: str | None = None,
                interpretation: str | None = None, status: str = "final") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "id": f"o{next(_ids)}", "status": status,
                                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                                "code": {"coding": [{"system": LOINC, "code": loinc}]},
                                "effectiveDateTime": days_ago(age)}
    if value is not None:
        quantity: dict[str, Any] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
        if comparator:
            quantity["comparator"] = comparator
        resource["valueQuantity"] = quantity
    if answer:
        resource["valueCodeableConcept"] = {"coding": [{"system": answer[0], "code": answer[1]}]}
    if interpretation:
        resource["interpretation"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": interpretation}]}]
    return resource


CPT = "http://www.ama-assn.org/go/cpt"


def text_condition(text: str | None = None, *, displays: tuple[str, ...] = (), code: tuple[str, str] | None = None,
                   age: int | None = 100, status: str | None = "active") -> dict[str, Any]:
    """A Condition known by its text (``code.text``, each ``coding.display``), optionally with a coding in no
    value set (``code``: system, code)."""
    resource = condition("R69", age=age, status=status)
    codings = [{"display": display} for display in displays]
    if code is not None:
        codings.insert(0, {"system": code[0], "code": code[1]})
    resource["code"] = {"coding": codings} if codings else {}
    if text is not None:
        resource["code"]["text"] = text
    return resource


def procedure(code: tuple[str, str] = (SNOMED, "80146002"), *, age: int | None = 10, status: str = "completed",
              surgical: bool = False, period_end_age: int | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Procedure", "id": f"pr{next(_ids)}", "status": status,
                                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                                "code": {"coding": [{"system": code[0], "code": code[1], "display": f"code {code[1]}"}]}}
    if surgical:
        resource["category"] = {"coding": [{"system": SNOMED, "code": "387713003"}]}
    if period_end_age is not None:
        resource["performedPeriod"] = {"start": days_ago(period_end_age + 40), "end": days_ago(period_end_age)}
    elif age is not None:
        resource["performedDateTime"] = days_ago(age)
    return resource


def service_request(code: tuple[str, str] = (CPT, "93970"), *, age: int | None = 10,
                    status: str = "active") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "ServiceRequest", "id": f"sr{next(_ids)}", "status": status,
                                "intent": "order", "subject": {"reference": f"Patient/{PATIENT_ID}"},
                                "code": {"coding": [{"system": code[0], "code": code[1], "display": f"code {code[1]}"}]}}
    if age is not None:
        resource["authoredOn"] = days_ago(age)
    return resource


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def hook_request(resources: list[dict[str, Any]] = (), *, birth_date: str | None = "1980-01-01",
                 omit: tuple[str, ...] = ()) -> dict[str, Any]:
    """A patient-view request with every prefetch key filled (an empty Bundle when no resource has that
    type), except the keys in ``omit``: those are not sent (so, with no fhirServer, not checked)."""
    by_key = {"conditions": [], "medicationRequests": [], "medicationStatements": [], "observations": [],
              "procedures": [], "serviceRequests": []}
    key_of = {"Condition": "conditions", "MedicationRequest": "medicationRequests",
              "MedicationStatement": "medicationStatements", "Observation": "observations",
              "Procedure": "procedures", "ServiceRequest": "serviceRequests"}
    for resource in resources:
        by_key[key_of[resource["resourceType"]]].append(resource)
    for key in omit:
        by_key.pop(key, None)
    patient: dict[str, Any] = {"resourceType": "Patient", "id": PATIENT_ID}
    if birth_date is not None:
        patient["birthDate"] = birth_date
    prefetch: dict[str, Any] = {"patient": patient}
    prefetch.update({key: bundle(items) for key, items in by_key.items()})
    return {"hook": "patient-view", "hookInstance": "00000000-0000-4000-8000-000000000001",
            "context": {"userId": "Practitioner/x", "patientId": PATIENT_ID}, "prefetch": prefetch}
