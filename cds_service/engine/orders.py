"""Draft orders of the order hooks (CDS Hooks library: ``order-select``, ``order-sign``): the context
checked, and the draft MedicationRequests read as typed records.

    check_order_context(hook, draft_orders, selections)   400 naming the field (request-model layer):
                                                          draftOrders entries carry R4 resources with a
                                                          resourceType; each selection is ``Type/id`` and
                                                          points at a resource in draftOrders
    read_draft_orders(request, ruleset, drugs, today)     -> DraftOrders: every MedicationRequest validated
                                                          with fhir.resources R4B (an invalid one skipped and
                                                          reported), its medication matched like the chart's
                                                          (code, then text; a medicationReference resolved to
                                                          a contained Medication or a Medication entry of
                                                          draftOrders); other order types ignored

Like chart.py (and with its ``_validate``), only the elements the rules read are validated
(``chart.READ_ELEMENTS``): a draft quinine order with a malformed dosage still gets its warning.
``fhir.resources`` models stop here: order_rules.py sees ``DraftOrder`` records only.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from cds_service.engine.chart import Chart, SkippedRecord, _field_of, _is_other_patient, _validate, record_id
from cds_service.engine.drugs import DrugTable
from cds_service.engine.facts import MedicationRecord, medication_record
from cds_service.errors import BadRequest
from cds_service.ruleset.loader import RuleSet

if TYPE_CHECKING:  # hook_request imports this module (check_order_context)
    from cds_service.hooks.request import HookRequest


MAX_IDENTIFIER = 256  # characters of each context identifier or reference (STATUS.md); hook_request uses it too
_REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})$")  # FHIR R4 id syntax
# Resource types FHIR R4 retired that old examples still send, with their R4 successor (for the message).
_RETIRED = {"MedicationOrder": "MedicationRequest", "DiagnosticOrder": "ServiceRequest",
            "ProcedureRequest": "ServiceRequest", "ReferralRequest": "ServiceRequest",
            "DeviceUseRequest": "DeviceRequest"}


@dataclass(frozen=True)
class DraftOrder:
    """A draft MedicationRequest as the order rules see it."""

    reference: str  # "MedicationRequest/<id>", or "context.draftOrders.entry[<i>]" when it has no id
    resource_id: str | None
    status: str | None
    selected: bool  # order-select: named in selections; order-sign: always
    record: MedicationRecord


@dataclass
class DraftOrders:
    orders: list[DraftOrder] = field(default_factory=list)  # the MedicationRequests judged
    skipped: list[SkippedRecord] = field(default_factory=list)  # invalid or another patient's: reported
    not_judged: Counter = field(default_factory=Counter)  # resource type (or "MedicationRequest (status)") -> n

    @property
    def mapping(self) -> Counter:
        """How the judged orders' medications were recognised: by code, by text, or not at all."""
        return Counter(order.record.method or "unmapped" for order in self.orders)


# ---------------------------------------------------------------- context checks (400)

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


# ---------------------------------------------------------------- reading draft MedicationRequests

def read_draft_orders(request: HookRequest, ruleset: RuleSet, drugs: DrugTable, today: date) -> DraftOrders:
    """Every MedicationRequest in draftOrders with a status the rule set judges (``order_rules.statuses``),
    matched against the drug table. Call after ``check_order_context`` (``parse_hook_request`` runs it)."""
    context = request.context
    entries = [e["resource"] for e in (context.draftOrders or {}).get("entry", [])]
    selected = set(context.selections or []) if request.hook == "order-select" else None
    drafts = DraftOrders()
    medications = _bundle_medications((context.draftOrders or {}).get("entry", []), drafts)
    lookup = Chart(patient=None, medications=medications)  # resolves medicationReference like the chart
    statuses = set(ruleset.spec.order_rules.statuses)
    for index, raw in enumerate(entries):
        resource_type = raw["resourceType"]
        if resource_type == "Medication":
            continue
        if resource_type != "MedicationRequest":
            drafts.not_judged[resource_type] += 1
            continue
        resource_id = None if record_id(raw) == "?" else record_id(raw)
        reference = f"MedicationRequest/{resource_id}" if resource_id else f"context.draftOrders.entry[{index}]"
        if _is_other_patient(raw, request.patient_id):
            _skip(drafts, resource_id, "refers to another patient")
            continue
        try:
            resource = _validate("MedicationRequest", raw)
        except (ValidationError, ValueError, TypeError, RecursionError) as exc:
            _skip(drafts, resource_id, f"invalid FHIR R4 ({_field_of(exc)})")
            continue
        if resource.status not in statuses:
            drafts.not_judged[f"MedicationRequest ({resource.status})"] += 1
            continue
        drafts.orders.append(DraftOrder(
            reference=reference,
            resource_id=resource_id,
            status=resource.status,
            selected=selected is None or reference in selected,
            record=medication_record(resource, lookup, ruleset, drugs, today),
        ))
    return drafts


def _bundle_medications(entries: list[dict[str, Any]], drafts: DraftOrders) -> dict[str, Any]:
    """Medication entries of draftOrders, by "Medication/<id>" and by fullUrl (a reference may use either)."""
    found: dict[str, Any] = {}
    for entry in entries:
        raw = entry["resource"]
        if raw.get("resourceType") != "Medication":
            continue
        resource_id = None if record_id(raw) == "?" else record_id(raw)
        try:
            medication = _validate("Medication", raw)
        except (ValidationError, ValueError, TypeError, RecursionError) as exc:
            drafts.skipped.append(SkippedRecord("Medication", resource_id or "?", f"invalid FHIR R4 ({_field_of(exc)})"))
            continue
        if resource_id:
            found[f"Medication/{resource_id}"] = medication
        if isinstance(entry.get("fullUrl"), str):
            found[entry["fullUrl"]] = medication
    return found


def _skip(drafts: DraftOrders, resource_id: str | None, reason: str) -> None:
    drafts.skipped.append(SkippedRecord("MedicationRequest", resource_id or "?", reason))  # logged with the chart's
