"""Card rendering: rule outcomes -> CDS Hooks cards, with wording, links, override reasons and
order templates read from the ``cards`` package data (``cards/*.yaml``).

Every card's detail lists the contributing facts with their points and source records, what could not
be checked, and the rule-set version. Each card carries a machine-readable explanation in
``extension`` (CDS Hooks reserves ``extension`` for such agreed additions).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import yaml

from .card_model import Action, Card, Coding, Link, Source, Suggestion
from .facts import PatientFacts, Provenance
from .rules import Outcome, ScoredItem
from .ruleset import CARD_IDS, RuleSet

EXPLANATION_EXTENSION = "org.leg-cramp-cds.explanation"
DIURETIC_CLASSES = frozenset({"loop", "thiazide", "potassium-sparing"})


@dataclass(frozen=True)
class CardContent:
    common: dict[str, Any]
    advice: dict[str, Any]
    cards: dict[str, dict[str, Any]]

    def label(self, item: str) -> str:
        return self.common["labels"].get(item, item.replace("_", " ").capitalize())


def load_card_content() -> CardContent:
    folder = resources.files("cards")

    def read(name: str) -> dict[str, Any]:
        return yaml.safe_load(folder.joinpath(name).read_text(encoding="utf-8"))

    return CardContent(
        common=read("common.yaml"),
        advice=read("advice.yaml"),
        cards={card_id: read(f"{card_id}.yaml") for card_id in CARD_IDS},
    )


class CardRenderer:
    def __init__(self, content: CardContent, ruleset: RuleSet, new_uuid: Callable[[], str] | None = None) -> None:
        self.content = content
        self.ruleset = ruleset
        self.new_uuid = new_uuid or (lambda: str(uuid.uuid4()))

    def render(self, outcome: Outcome, facts: PatientFacts) -> Card:
        text = self.content.cards[outcome.card_id]
        fields = {"score": _points(outcome.score), "threshold": _points(outcome.threshold)}
        builders = {
            "possible-dvt": self._red_flag_body,
            "venous-duplex-workup": self._venous_body,
            "conservative-care": self._contributor_body,
            "elevated-cramp-risk": self._contributor_body,
        }
        body, suggestions = builders[outcome.card_id](outcome, facts, text, fields)
        detail = "\n\n".join(filter(None, [body, self._data_notes(facts), self._footer()]))
        card_settings = self.ruleset.spec.cards[outcome.card_id]
        return Card(
            uuid=self.new_uuid(),
            summary=text["summary"].format(**fields),
            detail=detail,
            indicator=card_settings.indicator,
            source=Source(
                label=f"{self.content.common['source_label']} (rules {self.ruleset.version})",
                url=text["source_url"],
                topic=Coding(system=self.content.common["topic_system"], code=outcome.card_id,
                             display=text["summary"].format(**fields)),
            ),
            suggestions=suggestions or None,
            selectionBehavior="at-most-one" if suggestions else None,
            overrideReasons=self._override_reasons(),
            links=[self._link(name) for name in text.get("links", [])] or None,
            extension={EXPLANATION_EXTENSION: _explanation(outcome, self.ruleset.version)},
        )

    # ------------------------------------------------------------ bodies

    def _red_flag_body(self, outcome: Outcome, facts: PatientFacts, text: dict[str, Any], fields: dict[str, str]):
        lines = [text["intro"]]
        lines += [f"- {text['pathways'][p]}" for p in outcome.pathways]
        lines.append("")
        lines.append(self._items_table(outcome.findings, with_points=False))
        lines.append(text["advice"].strip())
        side = outcome.side or "bilateral"
        order = text["duplex_orders"][side]
        duplex = text["suggestions"]["duplex"]
        reasons = [s for f in outcome.findings for s in f.sources if s.resource_type == "Condition"]
        suggestions = [
            self._order_suggestion(
                duplex["label"].format(side_label=order["label"]),
                duplex["description"].format(side_label=order["label"]),
                order["codes"], duplex["priority"], facts, reasons,
            ),
            self._order_suggestion(
                text["suggestions"]["d_dimer"]["label"], text["suggestions"]["d_dimer"]["description"],
                text["suggestions"]["d_dimer"]["codes"], text["suggestions"]["d_dimer"]["priority"], facts, reasons,
            ),
        ]
        return "\n".join(lines), suggestions

    def _venous_body(self, outcome: Outcome, facts: PatientFacts, text: dict[str, Any], fields: dict[str, str]):
        cramps = facts.facts["documented_leg_cramps"]
        lines = [
            text["intro"].format(**fields),
            "",
            self._items_table(outcome.items, with_points=True),
            f"Documented leg cramps: {'; '.join(s.describe() for s in cramps.sources)}",
            "",
            text["advice"].strip(),
        ]
        order = text["suggestions"]["duplex"]
        reasons = [s for item in outcome.items for s in item.sources if s.resource_type == "Condition"]
        suggestion = self._order_suggestion(order["label"], order["description"], order["codes"],
                                            order["priority"], facts, reasons)
        return "\n".join(lines), [suggestion]

    def _contributor_body(self, outcome: Outcome, facts: PatientFacts, text: dict[str, Any], fields: dict[str, str]):
        lines = [text["intro"].format(**fields), ""]
        if outcome.items:
            lines.append(self._items_table(outcome.items, with_points=True))
        else:
            lines.append(text.get("no_items", ""))
            lines.append("")
        if outcome.card_id == "conservative-care":
            cramps = facts.facts["documented_leg_cramps"]
            lines.append(f"Documented leg cramps: {'; '.join(s.describe() for s in cramps.sources)}")
            lines.append("")
        lines.append("**Advice**")
        lines += [f"- {line}" for line in self._advice_lines(outcome, facts)]
        lines.append("")
        lines.append(self.content.advice["when_to_worry"])
        lab = self.content.advice["lab_suggestion"]
        if outcome.labs_not_checked:
            lines += ["", lab["not_checked"]]
        suggestions = []
        if outcome.missing_labs:
            suggestions.append(self._lab_suggestion(outcome.missing_labs, facts))
            names = " and ".join(lab["tests"][t]["name"] for t in outcome.missing_labs)
            lines += ["", lab["reason"].format(tests=names)]
        return "\n".join(lines), suggestions

    def _advice_lines(self, outcome: Outcome, facts: PatientFacts) -> list[str]:
        tags = {"always", *facts.facts, *(item.item for item in outcome.items)}
        if facts.active_conditions("leg_edema"):
            tags.add("leg_edema")
        if DIURETIC_CLASSES & set(facts.drug_classes()):
            tags.add("diuretic")
        shown = []
        for line in self.content.advice["lines"]:
            if tags & set(line["when"]) and not tags & set(line.get("unless", [])):
                shown.append(line["text"])
        return shown

    # ------------------------------------------------------------ pieces

    def _items_table(self, items: tuple[ScoredItem, ...], *, with_points: bool) -> str:
        header = "| Finding | Points | Record |\n|---|---|---|" if with_points else "| Finding | Record |\n|---|---|"
        rows = []
        for item in items:
            label = self.content.label(item.item) + (f" ({item.note})" if item.note else "")
            records = "; ".join(_escape(s.describe()) for s in item.sources) or "-"
            if with_points:
                rows.append(f"| {_escape(label)} | {_points(item.points)} | {records} |")
            else:
                rows.append(f"| {_escape(label)} | {records} |")
        return "\n".join([header, *rows]) + "\n"

    def _data_notes(self, facts: PatientFacts) -> str:
        names = self.content.common["not_checked"]
        notes = []
        if facts.not_checked:
            notes.append("Could not be checked: " + ", ".join(names.get(k, k) for k in facts.not_checked) + ".")
        if facts.incomplete:
            notes.append("Data may be incomplete (more pages were not read): "
                         + ", ".join(names.get(k, k) for k in facts.incomplete) + ".")
        if facts.skipped:
            shown = "; ".join(f"{s.resource_type}/{s.resource_id} ({s.reason})" for s in facts.skipped[:5])
            more = f" and {len(facts.skipped) - 5} more" if len(facts.skipped) > 5 else ""
            notes.append(f"Skipped {len(facts.skipped)} unreadable record(s): {_escape(shown)}{more}.")
        if facts.passed_over:
            notes.append("Passed over (unknown unit or unusable value): " + _escape("; ".join(facts.passed_over)) + ".")
        return "\n".join(f"_{note}_" for note in notes)

    def _footer(self) -> str:
        return f"Rule set {self.ruleset.version}. {self.content.common['disclaimer']}"

    def _override_reasons(self) -> list[Coding]:
        spec = self.content.common["override_reasons"]
        return [Coding(system=spec["system"], code=r["code"], display=r["display"]) for r in spec["reasons"]]

    def _link(self, name: str) -> Link:
        link = self.content.common["links"][name]
        return Link(label=link["label"], url=link["url"], type="absolute")

    def _order_suggestion(self, label: str, description: str, codes: list[str], priority: str,
                          facts: PatientFacts, reasons: list[Provenance]) -> Suggestion:
        resource = self._service_request(codes, priority, facts, reasons)
        return Suggestion(
            label=label,
            uuid=self.new_uuid(),
            actions=[Action(type="create", description=description, resource=resource)],
        )

    def _lab_suggestion(self, tests: tuple[str, ...], facts: PatientFacts) -> Suggestion:
        lab = self.content.advice["lab_suggestion"]
        actions = [
            Action(type="create", description=lab["tests"][t]["description"],
                   resource=self._service_request(lab["tests"][t]["codes"], "routine", facts, []))
            for t in tests
        ]
        names = " and ".join(lab["tests"][t]["name"] for t in tests)
        return Suggestion(label=lab["label"].format(tests=names), uuid=self.new_uuid(), actions=actions)

    def _service_request(self, codes: list[str], priority: str, facts: PatientFacts,
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


def _points(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}"


def _escape(text: str) -> str:
    """Keep record text from breaking the markdown table or injecting HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
