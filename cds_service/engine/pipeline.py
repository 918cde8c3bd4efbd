"""One hook call, end to end: request model -> service -> prefetch -> chart -> facts -> rules -> cards.

``Engine`` holds what a call needs (rule set, drug table, card renderer, clock, FHIR fetcher); the
Flask layer builds one per application and calls ``Engine.invoke``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from cds_service.clock import system_clock
from cds_service.engine.cards import CardRenderer, load_card_content
from cds_service.engine.chart import (Chart, SkippedRecord, build_chart, check_resource_count, count_resources,
                                      log_skipped)
from cds_service.engine.drugs import DrugTable
from cds_service.engine.facts import PatientFacts, extract_facts
from cds_service.engine.ledger import CardLedger, ShownCard, overridden_cards
from cds_service.engine.observer import NULL_OBSERVER, EngineObserver
from cds_service.engine.order_rules import OrderEvaluation, OrderOutcome, evaluate_orders
from cds_service.engine.orders import read_draft_orders
from cds_service.engine.prefetch import (Fetcher, ResolvedPrefetch, incomplete_required_error, key_outcomes,
                                         resolve_prefetch)
from cds_service.engine.registry import CdsService, ServiceRegistry
from cds_service.engine.rules import Evaluation, Outcome, evaluate
from cds_service.hooks.cards import Card, CdsResponse, wire_json
from cds_service.hooks.request import HookRequest, parse_hook_request
from cds_service.ruleset.loader import RuleSet, load_default_ruleset
from cds_service.settings import DEFAULT_MAX_RESOURCES

log = logging.getLogger(__name__)
# Observations read for their value only, inside a window (the coded ones count at any age: ever_recorded).
QUANTITY_OBSERVATIONS = frozenset({"potassium", "magnesium", "bmi"})


@dataclass
class CallResult:
    response: dict[str, Any]
    facts: PatientFacts
    evaluation: Evaluation | OrderEvaluation
    suppressed: tuple[str, ...] = ()  # card ids held back after an override (the web layer's header)


# Judged and Shown are per-call values, made once and only read: plain slotted dataclasses, not frozen (a frozen
# __init__ sets each field through object.__setattr__, several times slower for a value nobody mutates).
@dataclass(slots=True)
class Judged:
    """A hook's evaluation, with the call's data problems: the chart's skipped records and the evaluation's
    own (invalid draft orders), and how the medications it judged were mapped (the log's counts)."""

    evaluation: Evaluation | OrderEvaluation
    skipped: tuple[SkippedRecord, ...]
    medication_mapping: Counter


@dataclass(slots=True)
class Shown:
    """The cards a call answers with, each with the outcome it renders; and the outcomes suppressed."""

    cards: tuple[tuple[Card, Outcome | OrderOutcome], ...]
    suppressed: tuple[str, ...]


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
        max_resources: int = DEFAULT_MAX_RESOURCES,
        observer: EngineObserver = NULL_OBSERVER,
    ) -> None:
        self.ruleset = ruleset
        self.max_resources = max_resources  # per request, sent and fetched (CRAMP_MAX_RESOURCES): else 413
        self.drugs = drugs
        self.clock = clock
        self.fetcher = fetcher
        self.renderer = renderer or CardRenderer(load_card_content(), ruleset, drugs=drugs)
        # hook -> its evaluation: patient-view runs A/B/C; the order hooks only the order rules
        self._evaluations: dict[str, Callable[[HookRequest, PatientFacts], Judged]] = {
            "patient-view": self._evaluate_patient_view,
            "order-select": self._evaluate_orders,
            "order-sign": self._evaluate_orders,
        }
        self.ledger = ledger
        self.observer = observer  # metrics (web/metrics.py), or nowhere
        self.registry = ServiceRegistry.for_ruleset(ruleset)
        self._stale_dates: tuple[date, dict[tuple[str, str], date]] | None = None  # _stale_before's, per UTC day
        observations = ruleset.spec.observations
        self._observation_codes = frozenset(ruleset.observation_codes)  # once: the chart asks every call
        self._quantity_windows = {
            pair: getattr(observations, kind).window_days
            for pair, kind in ruleset.observation_codes.items() if kind in QUANTITY_OBSERVATIONS
        }

    @classmethod
    def default(cls, **kwargs: Any) -> "Engine":
        return cls(load_default_ruleset(), DrugTable.load_default(), **kwargs)

    def discovery(self) -> dict[str, Any]:
        return self.registry.discovery()

    def invoke(self, service_id: str, body: Any, *, now: datetime | None = None) -> CallResult:
        service = self.registry.get(service_id)
        request = parse_hook_request(body, expected_hook=service.hook)
        return self.run(service, request, now=now)

    def run(self, service: CdsService, request: HookRequest, *, now: datetime | None = None) -> CallResult:
        """One call, evaluated at ``now`` (this call only: development mode's as-of), else at the engine's clock."""
        started = time.perf_counter()
        now = now or self.clock()
        resolved = resolve_prefetch(request, service.templates, service.id, self.fetcher)
        # Counting is cheap; validating is not: refuse an oversized request before validating any of it.
        check_resource_count(count_resources(resolved.resources, request.context.draftOrders), self.max_resources)
        chart = self._read_chart(request, resolved, now)
        facts = extract_facts(chart, self.ruleset, self.drugs, now)
        judged = self._evaluations[service.hook](request, facts)
        self._report_skipped(service, judged.skipped)
        patient_key = self.ledger.patient_key(request.patient_id) if self.ledger else ""
        shown = self._render(self._unsuppressed(judged.evaluation, patient_key, now), facts, judged)
        if not shown.cards:
            self._refuse_all_clear_over_incomplete(service, request, resolved)
        self._record(shown, service, request, patient_key, now)
        self._report(service, request, resolved, judged, shown, facts, time.perf_counter() - started)
        return CallResult(_answer(shown), facts, judged.evaluation, shown.suppressed)

    # ------------------------------------------------------------ the stages

    def _read_chart(self, request: HookRequest, resolved: ResolvedPrefetch, now: datetime) -> Chart:
        return build_chart(
            request.patient_id,
            resolved.resources,
            observation_codes=self._observation_codes,
            not_checked=resolved.not_checked,
            incomplete=resolved.incomplete,
            stale_before=self._stale_before(now),
            procedure_codes=self.ruleset.procedure_codes,
        )

    def _evaluate_patient_view(self, request: HookRequest, facts: PatientFacts) -> Judged:
        return Judged(evaluate(facts, self.ruleset), tuple(facts.skipped), facts.medication_mapping)

    def _evaluate_orders(self, request: HookRequest, facts: PatientFacts) -> Judged:
        drafts = read_draft_orders(request, self.ruleset, self.drugs, facts.today)
        evaluation = evaluate_orders(drafts, facts, self.ruleset)
        # invalid draft orders are reported like invalid chart records; the log's mapping counts are the drafts'
        return Judged(evaluation, (*facts.skipped, *evaluation.skipped), evaluation.medication_mapping)

    def _report_skipped(self, service: CdsService, skipped: tuple[SkippedRecord, ...]) -> None:
        log_skipped(skipped, service=service.id)  # one line for the request's skipped records
        if skipped:
            self.observer.records_skipped(service.id, Counter(record.resource_type for record in skipped))

    def _unsuppressed(self, evaluation: Evaluation | OrderEvaluation, patient_key: str,
                      now: datetime) -> list[Outcome | OrderOutcome]:
        # Which card wins was decided before suppression: a suppressed winner still hides those below it.
        windows = self._suppression_windows(evaluation.shown, now)
        if self.ledger is None or not windows:  # no candidate can be suppressed (none, or critical): no query
            return list(evaluation.shown)
        overridden = overridden_cards(self.ledger, patient_key, windows)
        return [o for o in evaluation.shown if o.card_id not in overridden]

    def _render(self, outcomes: Sequence[Outcome | OrderOutcome], facts: PatientFacts, judged: Judged) -> Shown:
        cards = tuple((self.renderer.render(outcome, facts, skipped=judged.skipped), outcome) for outcome in outcomes)
        suppressed = tuple(o.card_id for o in judged.evaluation.shown if o not in outcomes)
        return Shown(cards, suppressed)

    def _record(self, shown: Shown, service: CdsService, request: HookRequest, patient_key: str,
                now: datetime) -> None:
        if self.ledger is None or not shown.cards:
            return
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
            for card, outcome in shown.cards
        ])

    def _report(self, service: CdsService, request: HookRequest, resolved: ResolvedPrefetch, judged: Judged,
                shown: Shown, facts: PatientFacts, elapsed: float) -> None:
        self.observer.evaluation_finished(service.id, elapsed)
        self.observer.prefetch_keys_resolved(service.id, key_outcomes(resolved, service.templates))
        self.observer.cards_returned(service.id, [(outcome.card_id, card.indicator) for card, outcome in shown.cards])
        if not log.isEnabledFor(logging.INFO):
            return  # the line's fields are built only when it is written (dry runs hold the engine at WARNING)
        log.info(
            "hook answered",
            extra={
                "service": service.id,
                "hook_instance": request.hookInstance,
                "cards": [outcome.card_id for _, outcome in shown.cards],
                "suppressed": list(shown.suppressed),
                "skipped_records": len(judged.skipped),
                "not_checked": list(facts.not_checked),
                "incomplete": list(facts.incomplete),
                "medications_mapped": dict(judged.medication_mapping),
                "elapsed_ms": round(elapsed * 1000, 2),
            },
        )

    def _refuse_all_clear_over_incomplete(self, service: CdsService, request: HookRequest,
                                          resolved: ResolvedPrefetch) -> None:
        """No card, but a required key had pages that were not read: 412 naming it, counted and logged."""
        refusal = incomplete_required_error(resolved, service.templates, service.id)
        if refusal is None:
            return
        self.observer.prefetch_keys_resolved(service.id, key_outcomes(resolved, service.templates))
        self.observer.all_clear_refused(service.id, refusal.keys)
        log.warning("no card over incomplete required data: answered 412",
                    extra={"service": service.id, "hook_instance": request.hookInstance,
                           "incomplete": list(refusal.keys), "reasons": {k: resolved.reasons.get(k) for k in refusal.keys}})
        raise refusal

    # ------------------------------------------------------------ helpers of the stages

    def _stale_before(self, now: datetime) -> dict[tuple[str, str], date]:
        """Per quantity-observation code, the date before which facts.py cannot use a value (its window),
        a day early so that time zones never drop a usable one: chart.py skips validating older ones."""
        today = now.astimezone(timezone.utc).date()
        cached = self._stale_dates  # one (day, dates) pair read at once: threads may replace it meanwhile
        if cached is None or cached[0] != today:
            windows = self._quantity_windows.items()
            cached = (today, {pair: today - timedelta(days=window + 1) for pair, window in windows})
            self._stale_dates = cached
        return cached[1]  # only read (chart.py): the same dict for every call of the day

    def _suppression_windows(self, candidates: Sequence[Outcome | OrderOutcome], now: datetime) -> dict[str, datetime]:
        """Card id -> the time from which an override suppresses it, for each candidate that can be suppressed."""
        windows: dict[str, datetime] = {}
        for outcome in candidates:
            settings = self.ruleset.spec.cards.get(outcome.card_id)
            if settings is None or settings.suppress_days == 0 or settings.indicator == "critical":
                continue  # critical cards are never suppressed (RULES.md)
            windows[outcome.card_id] = now - timedelta(days=settings.suppress_days)
        return windows


def _answer(shown: Shown) -> dict[str, Any]:
    """The wire JSON of the call's answer. Most calls answer no card: that answer is a fresh ``{"cards": []}``,
    what ``wire_json`` of an empty CdsResponse gives, without building and dumping the model."""
    if not shown.cards:
        return {"cards": []}
    return wire_json(CdsResponse(cards=[card for card, _ in shown.cards]))
