"""One hook call, end to end: request model -> service -> prefetch -> chart -> facts -> rules -> cards.

``Engine`` holds what a call needs (rule set, drug table, card renderer, clock, FHIR fetcher); the
Flask layer builds one per application and calls ``Engine.invoke``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from .card_model import CdsResponse, wire_json
from .cards import CardRenderer, load_card_content
from .chart import build_chart
from .clock import system_clock
from .drugs import DrugTable
from .facts import PatientFacts, extract_facts
from .hook_request import HookRequest, parse_hook_request
from .prefetch import Fetcher, resolve_prefetch
from .registry import CdsService, ServiceRegistry
from .rules import Evaluation, evaluate
from .ruleset import RuleSet, load_default_ruleset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShownCard:
    """A card as issued, for the ledger: never the patient's id, only its keyed hash."""

    card_uuid: str
    suggestion_uuids: tuple[str, ...]
    service_id: str
    rule: str  # the card's stable id, e.g. venous-duplex-workup
    ruleset_version: str
    indicator: str
    hook_instance: str
    patient_key: str
    issued_at: datetime


class CardLedger(Protocol):
    """Remembers cards shown and their feedback; answers which cards are suppressed (issue: feedback)."""

    def patient_key(self, patient_id: str) -> str: ...

    def overridden_since(self, patient_key: str, rule: str, since: datetime) -> bool:
        """Was a card of this rule overridden for this patient at or after ``since`` (any clinician)?"""
        ...

    def record_shown(self, cards: list[ShownCard]) -> None: ...


@dataclass
class CallResult:
    response: dict[str, Any]
    facts: PatientFacts
    evaluation: Evaluation


class Engine:
    def __init__(
        self,
        ruleset: RuleSet,
        drugs: DrugTable,
        *,
        clock: Callable[[], datetime] = system_clock,
        fetcher: Fetcher | None = None,
        renderer: CardRenderer | None = None,
        ledger: CardLedger | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.drugs = drugs
        self.clock = clock
        self.fetcher = fetcher
        self.renderer = renderer or CardRenderer(load_card_content(), ruleset)
        self.ledger = ledger
        self.registry = ServiceRegistry.for_ruleset(ruleset)

    @classmethod
    def default(cls, **kwargs: Any) -> "Engine":
        return cls(load_default_ruleset(), DrugTable.load_default(), **kwargs)

    def discovery(self) -> dict[str, Any]:
        return self.registry.discovery()

    def invoke(self, service_id: str, body: Any) -> CallResult:
        service = self.registry.get(service_id)
        request = parse_hook_request(body)
        service.check_hook(request.hook)
        return self.run(service, request)

    def run(self, service: CdsService, request: HookRequest) -> CallResult:
        started = time.perf_counter()
        resolved = resolve_prefetch(request, service.templates, service.id, self.fetcher)
        chart = build_chart(
            request.patient_id,
            resolved.resources,
            observation_codes=frozenset(self.ruleset.observation_codes),
            not_checked=resolved.not_checked,
            incomplete=resolved.incomplete,
        )
        facts = extract_facts(chart, self.ruleset, self.drugs, self.clock())
        evaluation = evaluate(facts, self.ruleset)
        now = self.clock()
        patient_key = self.ledger.patient_key(request.patient_id) if self.ledger else ""
        # Which card wins was decided before suppression: a suppressed winner still hides those below it.
        shown = [o for o in evaluation.shown if not self._is_suppressed(patient_key, o.card_id, now)]
        cards = [self.renderer.render(outcome, facts) for outcome in shown]
        response = wire_json(CdsResponse(cards=cards))
        if self.ledger and cards:
            self.ledger.record_shown([
                ShownCard(
                    card_uuid=card.uuid or "",
                    suggestion_uuids=tuple(s.uuid for s in card.suggestions or [] if s.uuid),
                    service_id=service.id,
                    rule=outcome.card_id,
                    ruleset_version=self.ruleset.version,
                    indicator=card.indicator,
                    hook_instance=request.hookInstance,
                    patient_key=patient_key,
                    issued_at=now,
                )
                for card, outcome in zip(cards, shown)
            ])
        log.info(
            "hook answered",
            extra={
                "service": service.id,
                "hook_instance": request.hookInstance,
                "cards": [o.card_id for o in shown],
                "suppressed": [o.card_id for o in evaluation.shown if o not in shown],
                "skipped_records": len(facts.skipped),
                "not_checked": list(facts.not_checked),
                "medications_mapped": dict(facts.medication_mapping),
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return CallResult(response, facts, evaluation)

    def _is_suppressed(self, patient_key: str, rule: str, now: datetime) -> bool:
        settings = self.ruleset.spec.cards.get(rule)
        if self.ledger is None or settings is None or settings.suppress_days == 0 or settings.indicator == "critical":
            return False  # critical cards are never suppressed (RULES.md)
        return self.ledger.overridden_since(patient_key, rule, now - timedelta(days=settings.suppress_days))
