"""One hook call, end to end: request model -> service -> prefetch -> chart -> facts -> rules -> cards.

``Engine`` holds what a call needs (rule set, drug table, card renderer, clock, FHIR fetcher); the
Flask layer builds one per application and calls ``Engine.invoke``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

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
    ) -> None:
        self.ruleset = ruleset
        self.drugs = drugs
        self.clock = clock
        self.fetcher = fetcher
        self.renderer = renderer or CardRenderer(load_card_content(), ruleset)
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
        cards = [self.renderer.render(outcome, facts) for outcome in evaluation.shown]
        response = wire_json(CdsResponse(cards=cards))
        log.info(
            "hook answered",
            extra={
                "service": service.id,
                "hook_instance": request.hookInstance,
                "cards": [o.card_id for o in evaluation.shown],
                "skipped_records": len(facts.skipped),
                "not_checked": list(facts.not_checked),
                "medications_mapped": dict(facts.medication_mapping),
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return CallResult(response, facts, evaluation)
