"""The order hooks' context (CDS Hooks library: ``order-select``, ``order-sign``), checked where the request
model is: what pydantic cannot say alone, as ``BadRequest`` (400) naming the field.

    check_order_context(hook, draft_orders, selections)   draftOrders entries carry R4 resources with a
                                                          resourceType; each selection is ``Type/id``, an R4
                                                          type, and points at a resource in draftOrders
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource

from cds_service.errors import BadRequest

MAX_IDENTIFIER = 256  # characters of each context identifier or reference (STATUS.md); request.py uses it too
_REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})$")  # FHIR R4 id syntax
# Resource types FHIR R4 retired that old examples still send, with their R4 successor (for the message).
_RETIRED = {"MedicationOrder": "MedicationRequest", "DiagnosticOrder": "ServiceRequest",
            "ProcedureRequest": "ServiceRequest", "ReferralRequest": "ServiceRequest",
            "DeviceUseRequest": "DeviceRequest"}


def check_order_context(hook: str, draft_orders: dict[str, Any], selections: list[Any] | None) -> None:
    """The parts of an order-hook context the request model cannot check alone; raises ``BadRequest``
    naming the field. ``draft_orders`` is already known to be a Bundle."""
    entries = draft_orders.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest("context.draftOrders.entry must be an array.", expression="context.draftOrders.entry")
    present: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"context.draftOrders.entry[{index}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise BadRequest(f"{where}.resource must be a FHIR resource (a JSON object).", expression=f"{where}.resource")
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or not resource_type:
            raise BadRequest(f"{where}.resource.resourceType is required.", expression=f"{where}.resource.resourceType")
        if isinstance(resource.get("id"), str):
            present.add(f"{resource_type}/{resource['id']}")
    if hook == "order-select":
        _check_selections(selections or [], present)
    for index, entry in enumerate(entries):
        resource_type = entry["resource"]["resourceType"]
        if not is_r4_resource_type(resource_type):
            where = f"context.draftOrders.entry[{index}].resource.resourceType"
            raise BadRequest(f"{where}: {_not_r4(resource_type)}", expression=where)


def _check_selections(selections: list[Any], present: set[str]) -> None:
    if not selections:
        raise BadRequest("context.selections must name at least one draft order.", expression="context.selections")
    for index, selection in enumerate(selections):
        where = f"context.selections[{index}]"
        if isinstance(selection, str) and len(selection) > MAX_IDENTIFIER:
            raise BadRequest(f"{where} is longer than {MAX_IDENTIFIER} characters.", expression=where)
        match = _REFERENCE.match(selection) if isinstance(selection, str) else None
        if match is None:
            raise BadRequest(f"{where} must be a reference of the form Type/id into context.draftOrders.",
                             expression=where)
        if not is_r4_resource_type(match["type"]):
            raise BadRequest(f"{where} names {_not_r4(match['type'])}", expression=where)
        if selection not in present:
            raise BadRequest(f"{where} ({selection}) points at no resource in context.draftOrders.", expression=where)


def is_r4_resource_type(name: str) -> bool:
    """A FHIR R4 (R4B) resource type: a model fhir.resources knows that is a Resource, not a data type."""
    try:
        model = get_fhir_model_class(name)
    except (KeyError, ValueError):
        return False
    return issubclass(model, Resource)


def _not_r4(name: str) -> str:
    if len(name) > 64:  # no resource type is this long: say so without echoing it
        return "it is not a FHIR R4 resource type (longer than any)."
    successor = _RETIRED.get(name)
    retired = f" (retired; {successor} replaced it)" if successor else ""
    return f"{name!r} is not a FHIR R4 resource type{retired}."
