"""Card rendering: rule outcomes -> CDS Hooks cards, for patient-view and the order hooks alike.

One assembly path (``CardRenderer.render``) builds every card: summary, indicator, source with the
card's stable id as topic, override reasons, links, and a detail in markdown made of the card's body
(cards.py for A/B/C, order_cards.py for the order hooks), the missing data that could change the card,
the data notes (what could not be checked, among the keys the card's rule reads; incomplete or unreadable
records) and the rule-set version. Wording comes from ``cards/*.yaml`` as typed models (card_text.py);
records are named as a clinician reads them (card_phrases.py). Resource ids appear only in the
machine-readable explanation in ``extension`` (CDS Hooks reserves ``extension`` for such additions).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable, Sequence, cast

from cds_service.engine.card_phrases import Phrasing, escape, join_words, lower_first, number, points
from cds_service.engine.card_text import (CardContent, ConservativeText, OrderText, PossibleDvtText, RiskText,
                                          UntreatedDvtText, VenousText, load_card_content)
from cds_service.engine.chart import SkippedRecord
from cds_service.engine.drugs import DrugTable
from cds_service.engine.facts import PatientFacts, Provenance
from cds_service.engine.order_cards import OrderBody, order_body, order_explanation
from cds_service.engine.order_rules import OrderOutcome
from cds_service.engine.rules import Outcome, ScoredItem
from cds_service.hooks.cards import Action, Card, Coding, Indicator, Link, Source, Suggestion
from cds_service.ruleset.loader import RuleSet

__all__ = ["CardContent", "CardRenderer", "EXPLANATION_EXTENSION", "load_card_content"]

EXPLANATION_EXTENSION = "org.leg-cramp-cds.explanation"
DIURETIC_CLASSES = frozenset({"loop", "thiazide", "potassium-sparing"})


@dataclass
class Body:
    """What a card kind contributes: its detail lines and its suggestions."""

    lines: list[str]
    suggestions: list[Suggestion] = field(default_factory=list)


@cache
def _default_drugs() -> DrugTable:
    return DrugTable.load_default()


class CardRenderer:
    def __init__(self, content: CardContent, ruleset: RuleSet, new_uuid: Callable[[], str] | None = None, *,
                 drugs: DrugTable | None = None) -> None:
        self.content = content
        self.ruleset = ruleset
        self.drugs = drugs  # for an ingredient's class when a record does not carry it (drugs.DrugMatch)
        self.new_uuid = new_uuid or (lambda: str(uuid.uuid4()))

    # ------------------------------------------------------------ the one assembly path

    def render(self, outcome: Outcome | OrderOutcome, facts: PatientFacts,
               skipped: Sequence[SkippedRecord] | None = None) -> Card:
        """``skipped``: the call's skipped records when the evaluation adds its own (invalid draft orders)
        to the chart's; else ``facts.skipped``."""
        skipped = facts.skipped if skipped is None else tuple(skipped)
        text = self.content.card(outcome.card_id)
        phrasing = Phrasing(self.content.common, facts)
        missing: list[str] = []
        if isinstance(outcome, OrderOutcome):
            made: OrderBody = order_body(outcome, text, phrasing, self.drugs or _default_drugs(), self.new_uuid)
            body = Body(made.lines, made.suggestions)
            summary = made.summary
            explanation = order_explanation(outcome, self.ruleset.version)
        else:
            body = self._body(outcome, facts, text, phrasing)
            summary = self._summary(outcome, text)
            explanation = _explanation(outcome, self.ruleset.version)
            missing = self._missing_lines(outcome, phrasing)
        explanation.update(_data_explanation(facts, skipped))
        unchecked = list(outcome.not_checked)  # only keys this card's rule reads (rules.KEYS_READ)
        detail = "\n\n".join(filter(None, [
            "\n".join(body.lines).strip(),
            self._missing_section(missing),
            self._data_notes(facts, skipped, unchecked, phrasing),
            self._footer(),
        ]))
        suggestions = body.suggestions
        # extension is an extra field (extra="allow"): pydantic's typed __init__ lists declared fields only
        return Card(  # type: ignore[call-arg]
            uuid=self.new_uuid(),
            summary=summary,
            detail=detail,
            # the rule-set schema admits only the three indicators
            indicator=cast(Indicator, self.ruleset.spec.cards[outcome.card_id].indicator),
            source=Source(
                label=f"{self.content.common.source_label} (rules {self.ruleset.version})",
                url=text.source_url,
                topic=Coding(system=self.content.common.topic_system, code=outcome.card_id, display=summary),
            ),
            suggestions=suggestions or None,
            selectionBehavior="at-most-one" if suggestions else None,
            overrideReasons=self._override_reasons(),
            links=[self._link(name) for name in text.links] or None,
            extension={EXPLANATION_EXTENSION: explanation},
        )

    def _summary(self, outcome: Outcome, text: Any) -> str:
        if isinstance(text, UntreatedDvtText) and outcome.anticoagulant_not_checked:
            return text.summary_not_checked
        return text.summary.format(score=number(outcome.score), threshold=number(outcome.threshold))

    def _body(self, outcome: Outcome, facts: PatientFacts, text: Any, phrasing: Phrasing) -> Body:
        if isinstance(text, PossibleDvtText):
            return self._possible_dvt(outcome, facts, text, phrasing)
        if isinstance(text, UntreatedDvtText):
            return self._untreated_dvt(outcome, facts, text, phrasing)
        if isinstance(text, VenousText):
            return self._venous(outcome, facts, text, phrasing)
        if isinstance(text, (ConservativeText, RiskText)):
            return self._contributors(outcome, facts, text, phrasing)
        raise LookupError(f"no card body for {outcome.card_id}")

    # ------------------------------------------------------------ A: DVT

    def _possible_dvt(self, outcome: Outcome, facts: PatientFacts, text: PossibleDvtText,
                      phrasing: Phrasing) -> Body:
        wells_items = set(self.ruleset.spec.red_flag.wells_items)
        wells = [f for f in outcome.findings if f.item in wells_items]
        wells_line = text.wells_found.format(items=", ".join(
            phrasing.common.label(f.item).lower() for f in wells)) if wells else text.wells_none
        lines = [text.intro, "", self._items_table(outcome.findings, phrasing, with_points=False), ""]
        lines += [text.pathways[p] for p in outcome.pathways if p in text.pathways]
        lines += ["", wells_line, "", text.advice.strip()]
        side = outcome.side or "bilateral"
        order = text.duplex_sides[side]
        reasons = [s for f in outcome.findings for s in f.sources if s.resource_type == "Condition"]
        duplex = OrderText(label=text.duplex.label.format(side_label=order.label),
                           description=text.duplex.description.format(side_label=order.label),
                           priority=text.duplex.priority, codes=order.codes)
        suggestions = [self._order_suggestion(duplex, facts, reasons),
                       self._order_suggestion(text.d_dimer, facts, reasons)]
        return Body(lines, suggestions)

    def _untreated_dvt(self, outcome: Outcome, facts: PatientFacts, text: UntreatedDvtText,
                       phrasing: Phrasing) -> Body:
        lines = [text.intro, "", self._items_table(outcome.findings, phrasing, with_points=False), ""]
        unchecked = list(outcome.anticoagulant_not_checked)
        if unchecked:
            lines += [text.medications_not_checked.format(keys=phrasing.keys(unchecked)), ""]
        if outcome.medications_read:
            kinds = phrasing.common.record_kinds
            lines += [text.medications_read, "", "| Medication record | Kind |", "|---|---|"]
            lines += [f"| {escape(phrasing.record(source))} | {kinds.get(source.resource_type, ('record', ''))[0]} |"
                      for source in outcome.medications_read]
        elif not unchecked:
            lines.append(text.medications_none)
        lines += ["", text.treatment.strip()]
        return Body(lines)

    # ------------------------------------------------------------ B: venous duplex workup

    def _venous(self, outcome: Outcome, facts: PatientFacts, text: VenousText, phrasing: Phrasing) -> Body:
        cramps = facts.facts["documented_leg_cramps"]
        score = phrasing.score(outcome.score or 0, outcome.threshold, [(i.item, i.points) for i in outcome.items])
        lines = [
            text.intro, "",
            f"{text.score_label} {score}", "",
            self._items_table(outcome.items, phrasing, with_points=True), "",
            text.cramps.format(records=escape(phrasing.records(cramps.sources))), "",
            text.advice.strip(),
        ]
        reasons = [s for item in outcome.items for s in item.sources if s.resource_type == "Condition"]
        return Body(lines, [self._order_suggestion(text.duplex, facts, reasons)])

    # ------------------------------------------------------------ C: conservative care / elevated risk

    def _contributors(self, outcome: Outcome, facts: PatientFacts, text: ConservativeText | RiskText,
                      phrasing: Phrasing) -> Body:
        items = [(i.item, i.points) for i in outcome.items]
        if isinstance(text, ConservativeText):
            cramps = facts.facts["documented_leg_cramps"]
            lines = [text.intro.format(records=escape(phrasing.records(cramps.sources))), ""]
            if outcome.duplex_on_record:
                lines += [text.duplex_on_record.format(records=escape(phrasing.records(outcome.duplex_on_record))), ""]
        else:
            lines = [text.intro, ""]
        if outcome.items:
            lines += [f"{text.score_label} {phrasing.score(outcome.score or 0, outcome.threshold, items)}", "",
                      self._items_table(outcome.items, phrasing, with_points=True), ""]
        elif isinstance(text, ConservativeText):
            lines += [text.no_items, ""]
        lines += ["**Advice**", ""]
        lines += [f"- {line}" for line in self._advice_lines(outcome, facts)]
        lines += ["", self.content.advice.when_to_worry]
        body = Body(lines)
        lab = self.content.advice.lab_suggestion
        if outcome.labs_not_checked:
            lines += ["", lab.not_checked]
        if outcome.missing_labs:
            body.suggestions.append(self._lab_suggestion(outcome.missing_labs, facts))
            names = " or ".join(lab.tests[t].name for t in outcome.missing_labs)
            lines += ["", lab.reason.format(tests=names, triggers=self._lab_triggers(facts))]
        return body

    def _lab_triggers(self, facts: PatientFacts) -> str:
        check = self.ruleset.spec.contributors.lab_check
        words = self.content.advice.lab_suggestion.triggers
        classes = facts.drug_classes()
        found = [words[c] for c in check.drug_classes if c in classes and c in words]
        found += [words[c] for c in check.conditions
                  if (facts.has(c) or facts.active_conditions(c)) and c in words]
        return join_words(list(dict.fromkeys(found)) or ["has a reason for the check in the rule set"])

    def _advice_lines(self, outcome: Outcome, facts: PatientFacts) -> list[str]:
        tags = {"always", *facts.facts, *(item.item for item in outcome.items)}
        if facts.active_conditions("leg_edema"):
            tags.add("leg_edema")
        if DIURETIC_CLASSES & set(facts.drug_classes()):
            tags.add("diuretic")
        return [line.text for line in self.content.advice.lines
                if tags & set(line.when) and not tags & set(line.unless)]

    # ------------------------------------------------------------ pieces

    def _items_table(self, items: tuple[ScoredItem, ...], phrasing: Phrasing, *, with_points: bool) -> str:
        header = "| Finding | Points | Record |\n|---|---|---|" if with_points else "| Finding | Record |\n|---|---|"
        rows = []
        for item in items:
            label = phrasing.common.label(item.item)
            if item.note and not item.note.startswith("age "):
                label += f" ({item.note})"
            records = escape(phrasing.records(item.sources, with_side=True)) or "-"
            if with_points:
                rows.append(f"| {escape(label)} | {number(item.points)} | {records} |")
            else:
                rows.append(f"| {escape(label)} | {records} |")
        return "\n".join([header, *rows])

    def _missing_lines(self, outcome: Outcome, phrasing: Phrasing) -> list[str]:
        """RULES.md, Every card: the missing data that could have raised the card's score or changed which
        card fires (rules.MissingData), in the words of cards/common.yaml ``missing``."""
        templates = self.content.common.missing
        lines = []
        for missing in outcome.missing:
            template = getattr(templates, missing.reason, None)
            if template is None:
                continue
            line = template.format(
                points=points(missing.points or 0),
                item=lower_first(phrasing.common.label(missing.item)) if missing.item else "",
                keys=phrasing.keys(missing.keys),
                test=missing.test or "",
                window=_window(missing.window_days),
                score=points(missing.score or 0),
                threshold=number(missing.threshold),
            )
            lines.append(line[:1].upper() + line[1:])
        return list(dict.fromkeys(lines))

    def _missing_section(self, lines: list[str]) -> str:
        if not lines:
            return ""
        return "\n".join([self.content.common.phrases.missing_heading, "", *(f"- {line}" for line in lines)])

    def _data_notes(self, facts: PatientFacts, skipped: Sequence[SkippedRecord], unchecked: list[str],
                    phrasing: Phrasing) -> str:
        """What could not be checked (only keys the card's rule reads), incomplete and unreadable data."""
        phrases = self.content.common.phrases
        notes = []
        if unchecked:
            notes.append(phrases.not_checked.format(keys=phrasing.keys(unchecked)))
        if facts.incomplete:
            notes.append(phrases.incomplete.format(keys=phrasing.keys(facts.incomplete)))
        if skipped:
            notes.append(phrasing.skipped(skipped))
        if facts.passed_over:
            notes.append(phrases.passed_over.format(records=escape("; ".join(facts.passed_over))))
        return "\n\n".join(f"_{note}_" for note in notes)

    def _footer(self) -> str:
        return f"{self.content.common.phrases.rule_set.format(version=self.ruleset.version)} " \
               f"{self.content.common.disclaimer}"

    def _override_reasons(self) -> list[Coding]:
        spec = self.content.common.override_reasons
        return [Coding(system=spec.system, code=r.code, display=r.display) for r in spec.reasons]

    def _link(self, name: str) -> Link:
        link = self.content.common.links[name]
        return Link(label=link.label, url=link.url, type="absolute")

    def _order_suggestion(self, order: OrderText, facts: PatientFacts, reasons: list[Provenance]) -> Suggestion:
        resource = self._service_request(order.codes, order.priority, facts, reasons)
        return Suggestion(label=order.label, uuid=self.new_uuid(),
                          actions=[Action(type="create", description=order.description, resource=resource)])

    def _lab_suggestion(self, tests: tuple[str, ...], facts: PatientFacts) -> Suggestion:
        lab = self.content.advice.lab_suggestion
        actions = [
            Action(type="create", description=lab.tests[t].description,
                   resource=self._service_request(lab.tests[t].codes, "routine", facts, []))
            for t in tests
        ]
        names = " and ".join(lab.tests[t].name for t in tests)
        return Suggestion(label=lab.label.format(tests=names), uuid=self.new_uuid(), actions=actions)

    def _service_request(self, codes: tuple[str, ...], priority: str, facts: PatientFacts,
                         reasons: list[Provenance]) -> dict[str, Any]:
        codings = []
        for ref in codes:
            alias, code, display = ref.split("|", 2)
            codings.append({"system": self.ruleset.system(alias), "code": code, "display": display})
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "priority": priority,
            "code": {"coding": codings, "text": codings[0]["display"]},
            "subject": {"reference": f"Patient/{facts.patient.resource_id}"},
        }
        unique = list(dict.fromkeys(f"Condition/{r.resource_id}" for r in reasons))
        if unique:
            resource["reasonReference"] = [{"reference": ref} for ref in unique]
        return resource


def _explanation(outcome: Outcome, version: str) -> dict[str, Any]:
    explanation: dict[str, Any] = {"ruleSetVersion": version, "rule": outcome.card_id}
    if outcome.score is not None:
        explanation["score"] = outcome.score
    if outcome.threshold is not None:
        explanation["threshold"] = outcome.threshold
    if outcome.pathways:
        explanation["pathways"] = list(outcome.pathways)
        explanation["side"] = outcome.side or "bilateral"
    explanation["items"] = [
        {"item": i.item, "points": i.points,
         "records": [f"{s.resource_type}/{s.resource_id}" for s in i.sources]}
        for i in (outcome.items or outcome.findings)
    ]
    if outcome.missing_labs:
        explanation["missingLabs"] = list(outcome.missing_labs)
    return explanation


def _window(days: int | None) -> str:
    if days is None:
        return ""
    return "12 months" if days == 365 else f"{days} days"


def _data_explanation(facts: PatientFacts, skipped: Sequence[SkippedRecord]) -> dict[str, Any]:
    """The data problems by resource id, for machines (the detail says them in words)."""
    extra: dict[str, Any] = {}
    if facts.not_checked:
        extra["notChecked"] = list(facts.not_checked)
    if facts.incomplete:
        extra["incomplete"] = list(facts.incomplete)
    if skipped:
        extra["skippedRecords"] = [{"record": f"{s.resource_type}/{s.resource_id}", "reason": s.reason}
                                   for s in skipped]
    return extra
