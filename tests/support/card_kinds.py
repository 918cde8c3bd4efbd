"""Read back what the tests compare: a card's stable id, explanation and suggestion kinds, and whether
it reads as a clinician reads a chart (no resource ids; each record cited by its code or name)."""

from __future__ import annotations

import re
from typing import Any

from cds_service.engine.cards import EXPLANATION_EXTENSION

SUGGESTION_KINDS = {
    "48691-0": "duplex-right",
    "48692-8": "duplex-left",
    "46364-6": "duplex-bilateral",
    "48065-7": "d-dimer",
    "51990-0": "lab-bmp",
    "2601-3": "lab-magnesium",
}


def card_id(card: dict[str, Any]) -> str:
    return card["source"]["topic"]["code"]


def explanation(card: dict[str, Any]) -> dict[str, Any]:
    return card["extension"][EXPLANATION_EXTENSION]


def suggestion_kinds(card: dict[str, Any]) -> list[str]:
    kinds = []
    for suggestion in card.get("suggestions", []):
        for action in suggestion.get("actions", []):
            codes = [c["code"] for c in action["resource"]["code"]["coding"]]
            kinds += [SUGGESTION_KINDS[c] for c in codes if c in SUGGESTION_KINDS]
    return sorted(kinds)


# Resource references as they appear in FHIR ("Condition/abc"): never in what a clinician reads.
RESOURCE_REFERENCE = re.compile(
    r"\b(?:Patient|Condition|Observation|MedicationRequest|MedicationStatement|Medication|Procedure|"
    r"ServiceRequest|Encounter|Practitioner)/[A-Za-z0-9\-.]+")


def readable_texts(card: dict[str, Any]) -> list[str]:
    """Everything of a card a CDS client shows: summary, detail, suggestion and action wording, links."""
    texts = [card["summary"], card.get("detail", ""), card["source"]["label"]]
    for suggestion in card.get("suggestions", []):
        texts.append(suggestion["label"])
        texts += [action.get("description", "") for action in suggestion.get("actions", [])]
    texts += [link["label"] for link in card.get("links", [])]
    return texts


def assert_no_resource_ids(card: dict[str, Any]) -> None:
    for text in readable_texts(card):
        found = RESOURCE_REFERENCE.findall(text)
        assert not found, f"resource id(s) {found} in what the clinician reads:\n{text}"


def _request_resources(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Resources of a hook request by reference: prefetch (searchsets or single) and draft orders."""
    found: dict[str, dict[str, Any]] = {}

    def add(resource: Any, fallback: str | None = None) -> None:
        if isinstance(resource, dict) and "resourceType" in resource:
            if resource.get("id"):
                found[f"{resource['resourceType']}/{resource['id']}"] = resource
            if fallback:
                found[fallback] = resource

    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            for entry in value.get("entry", []):
                add(entry.get("resource"))
        else:
            add(value)
    for index, entry in enumerate(((request.get("context") or {}).get("draftOrders") or {}).get("entry", [])):
        add(entry.get("resource"), f"context.draftOrders.entry[{index}]")
    return found


def _concept_of(resource: dict[str, Any], resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for key in ("code", "medicationCodeableConcept"):
        if isinstance(resource.get(key), dict):
            return resource[key]
    reference = (resource.get("medicationReference") or {}).get("reference", "")
    if reference.startswith("#"):
        medication = next((c for c in resource.get("contained", []) if c.get("id") == reference[1:]), {})
    else:
        medication = resources.get(reference, {})
    return medication.get("code") or {}


def assert_detail_cites_records(card: dict[str, Any], request: dict[str, Any]) -> None:
    """Each record of the card's explanation is cited in the detail as a clinician reads it: the patient
    by age and birth year, another record by one of its codes or (with no code) its text."""
    detail = card["detail"]
    assert "Rule set " in detail
    resources = _request_resources(request)
    refs = [r for item in explanation(card)["items"] for r in item["records"]]
    refs += explanation(card).get("cramps", [])
    for ref in refs:
        resource = resources.get(ref)
        if resource is None:
            continue  # fetched from a FHIR server, not in the request
        if resource["resourceType"] == "Patient":
            assert f"(born {resource['birthDate'][:4]})" in detail, f"age evidence for {ref} not cited"
            continue
        concepts = [_concept_of(resource, resources), resource.get("valueCodeableConcept") or {}]
        codes = [c["code"] for concept in concepts for c in concept.get("coding", []) if c.get("code")]
        names = [n for concept in concepts for n in [concept.get("text")] + [c.get("display") for c in concept.get("coding", [])]]
        cited = any(code in detail for code in codes) or any(n and n in detail for n in names)
        assert cited, f"{ref} ({codes or names}) not cited in the detail:\n{detail}"
