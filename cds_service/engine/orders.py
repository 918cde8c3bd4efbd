"""Draft orders of the order hooks (CDS Hooks library: ``order-select``, ``order-sign``) read as typed
records (their context is checked before, by the request model: hooks/order_context.py).

    read_draft_orders(request, ruleset, drugs, today)     -> DraftOrders: every MedicationRequest validated
                                                          with fhir.resources R4B (an invalid one skipped and
                                                          reported), its medication matched like the chart's
                                                          (code, then text; a medicationReference resolved to
                                                          a contained Medication or a Medication entry of
                                                          draftOrders); other order types ignored

Like chart.py (and with its ``validate_resource``), only the elements the rules read are validated
(``chart.READ_ELEMENTS``): a draft quinine order with a malformed dosage still gets its warning.
``fhir.resources`` models stop here: order_rules.py sees ``DraftOrder`` records only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from cds_service.engine.chart import (INVALID_RESOURCE, Chart, SkippedRecord, invalid_reason, is_other_patient,
                                      record_id, validate_resource)
from cds_service.engine.drugs import DrugTable
from cds_service.engine.facts import MedicationRecord, medication_record
from cds_service.hooks.request import HookRequest
from cds_service.ruleset.loader import RuleSet


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
        if is_other_patient(raw, request.patient_id):
            _skip(drafts, resource_id, "refers to another patient")
            continue
        try:
            resource = validate_resource("MedicationRequest", raw)
        except INVALID_RESOURCE as exc:
            _skip(drafts, resource_id, invalid_reason(exc))
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
            medication = validate_resource("Medication", raw)
        except INVALID_RESOURCE as exc:
            drafts.skipped.append(SkippedRecord("Medication", resource_id or "?", invalid_reason(exc)))
            continue
        if resource_id:
            found[f"Medication/{resource_id}"] = medication
        if isinstance(entry.get("fullUrl"), str):
            found[entry["fullUrl"]] = medication
    return found


def _skip(drafts: DraftOrders, resource_id: str | None, reason: str) -> None:
    drafts.skipped.append(SkippedRecord("MedicationRequest", resource_id or "?", reason))  # logged with the chart's
