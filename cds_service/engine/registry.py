"""The services this CDS service offers (discovery is data, not code), and dispatch by service id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds_service.engine.prefetch import PrefetchTemplate
from cds_service.errors import UnknownService
from cds_service.ruleset.loader import RuleSet

PATIENT_VIEW_SERVICE = "leg-cramp-patient-view"
ORDER_SELECT_SERVICE = "leg-cramp-order-select"
ORDER_SIGN_SERVICE = "leg-cramp-order-sign"


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    templates: tuple[PrefetchTemplate, ...]
    usage_requirements: str | None = None

    def discovery_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": {t.key: t.query for t in self.templates},
        }
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry



def chart_templates(ruleset: RuleSet) -> tuple[PrefetchTemplate, ...]:
    """RULES.md, Inputs: the prefetch templates, within the CDS Hooks 2.0 query subset."""
    loinc = ",".join(code for _, code in ruleset.observation_codes)
    return (
        PrefetchTemplate("patient", "Patient/{{context.patientId}}", required=True),
        PrefetchTemplate("conditions", "Condition?patient={{context.patientId}}", required=True),
        PrefetchTemplate(
            "medicationRequests", "MedicationRequest?patient={{context.patientId}}&status=active", required=False
        ),
        PrefetchTemplate("medicationStatements", "MedicationStatement?patient={{context.patientId}}", required=False),
        PrefetchTemplate("observations", f"Observation?patient={{{{context.patientId}}}}&code={loinc}", required=False),
        # Recent surgery (a Wells item) and a venous duplex done or ordered (RULES.md, Revision 2026-12 point 4)
        PrefetchTemplate("procedures", "Procedure?patient={{context.patientId}}", required=False),
        PrefetchTemplate("serviceRequests", "ServiceRequest?patient={{context.patientId}}", required=False),
    )


def order_templates(ruleset: RuleSet) -> tuple[PrefetchTemplate, ...]:
    """RULES.md, Order hooks: the chart is read for the patient's cramp record only. Conditions are optional
    here, so a missing chart never blocks the quinine warning."""
    return (
        PrefetchTemplate("patient", "Patient/{{context.patientId}}", required=True),
        PrefetchTemplate("conditions", "Condition?patient={{context.patientId}}", required=False),
    )


def _order_service(service_id: str, hook: str, ruleset: RuleSet) -> CdsService:
    when = "selects" if hook == "order-select" else "signs"
    judged = "the selected orders" if hook == "order-select" else "every draft order"
    return CdsService(
        id=service_id,
        hook=hook,
        title="Leg cramps: quinine, and drugs associated with cramps, at ordering",
        description=(
            f"When the clinician {when} orders, judges {judged}: warns that quinine is not recommended for leg "
            "cramps (FDA warning), and tells when a potassium-sparing or thiazide diuretic, or a long-acting "
            "beta-agonist, is ordered for a patient with documented leg cramps."
        ),
        templates=order_templates(ruleset),
        usage_requirements="Patient data is required; conditions (the cramp record) are optional.",
    )


class ServiceRegistry:
    def __init__(self, services: list[CdsService]) -> None:
        self._services = {service.id: service for service in services}

    @classmethod
    def for_ruleset(cls, ruleset: RuleSet) -> "ServiceRegistry":
        return cls([
            CdsService(
                id=PATIENT_VIEW_SERVICE,
                hook="patient-view",
                title="Leg cramps: venous workup, conservative care and DVT red flags",
                description=(
                    "Reads conditions, medications, a few observations, procedures and service requests to judge "
                    "leg-cramp risk; suggests venous duplex ultrasound when cramps come with signs of venous "
                    "disease and none is on record, conservative care otherwise; flags a possible DVT, and a "
                    "recent DVT with no anticoagulant. Every card cites the records behind it."
                ),
                templates=chart_templates(ruleset),
                usage_requirements="Patient and Condition data are required; medications and observations refine the advice.",
            ),
            _order_service(ORDER_SELECT_SERVICE, "order-select", ruleset),
            _order_service(ORDER_SIGN_SERVICE, "order-sign", ruleset),
        ])

    def get(self, service_id: str) -> CdsService:
        try:
            return self._services[service_id]
        except KeyError:
            raise UnknownService(f"No CDS service with id {service_id!r}.") from None

    def discovery(self) -> dict[str, Any]:
        return {"services": [service.discovery_entry() for service in self._services.values()]}
