"""Why the rules did what they did for one patient: the explanation of a patient-view result as a typed model,
with a plain-text and an HTML rendering.

``explain(result, ruleset, patient_label=..., rules_label=..., day=...)`` reads an engine result (its facts and
its patient-view evaluation) into an ``Explanation``: the patient's age, every fact with the records that show
it, how the conditions were recognised, the latest usable observations, how each medication record was mapped,
each evaluation (card id, fired or not, score against threshold, pathways, findings, scored items with their
points and records, what is missing or could not be checked), the card shown after precedence, and the records
skipped or passed over.

``render_explanation_text`` is what ``cramp-cds rules explain`` prints; ``render_explanation_html`` is an HTML
fragment (everything escaped, no script, no inline style: classes only) for the console's Try-it page and for
``rules explain --format html``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from html import escape
from typing import Any, Iterable

from cds_service.admin.card_page import _CSS as CARD_PAGE_CSS, render_card
from cds_service.engine.facts import SYSTEM_LABELS, PatientFacts, Provenance
from cds_service.engine.rules import Evaluation, Outcome, ScoredItem
from cds_service.ruleset.loader import RuleSet

# Which evaluation each outcome of ``Evaluation.outcomes`` is (RULES.md A, B, C).
EVALUATION_LABELS = (
    ("red_flag", "A DVT (A.1 untreated, A.2/A.3 possible)"),
    ("venous", "B venous duplex workup"),
    ("contributors", "C contributors"),
)
MEDICATION_METHODS = {"code": "mapped by code", "text": "mapped by text"}


# ---------------------------------------------------------------- the model

@dataclass(frozen=True)
class SourceRecord:
    """One record a fact or an item was read from."""

    reference: str  # "Condition/c1"
    date: date | None
    display: str | None
    code: str | None  # "ICD-10-CM R25.2", or None when the record matched by its text
    recognised_by_name: bool
    status: str | None
    text: str  # the one-line description (Provenance.describe)

    @classmethod
    def of(cls, provenance: Provenance) -> "SourceRecord":
        system = provenance.system or ""
        code = f"{SYSTEM_LABELS.get(system, system or 'code')} {provenance.code}" if provenance.code else None
        return cls(f"{provenance.resource_type}/{provenance.resource_id}", provenance.date, provenance.display,
                   code, provenance.text_matched, provenance.status, provenance.describe())


@dataclass(frozen=True)
class FactEntry:
    name: str
    note: str | None
    sources: tuple[SourceRecord, ...]


@dataclass(frozen=True)
class ConditionCounts:
    total: int
    by_code: int
    by_text: int
    not_recognised: int


@dataclass(frozen=True)
class ObservationEntry:
    kind: str
    shown: str  # "3.1 mmol/L", a coded answer, or "flagged"
    low: bool
    source: SourceRecord


@dataclass(frozen=True)
class MedicationEntry:
    source: SourceRecord
    how: str  # mapped by code | mapped by text | not mapped
    ingredients: tuple[str, ...]
    classes: tuple[str, ...]
    counted: bool  # not counted: not current (status, intent or period)


@dataclass(frozen=True)
class MedicationSummary:
    total: int
    by_code: int
    by_text: int
    not_mapped: int
    records: tuple[MedicationEntry, ...]


@dataclass(frozen=True)
class ItemEntry:
    """A scored item (points) or, for A, a finding seen (points None)."""

    item: str
    points: float | None
    note: str | None
    sources: tuple[SourceRecord, ...]


@dataclass(frozen=True)
class MissingEntry:
    """Data that could change the card if it were there: the reason, what it is, what it would add."""

    card_id: str
    reason: str
    what: str
    adds: float | None


@dataclass(frozen=True)
class EvaluationEntry:
    key: str  # red_flag | venous | contributors
    label: str
    card_id: str
    fired: bool
    score: float | None
    threshold: float | None  # None with a score: documented cramps, no threshold
    pathways: tuple[str, ...]
    side: str | None
    findings: tuple[ItemEntry, ...]
    items: tuple[ItemEntry, ...]
    missing_labs: tuple[str, ...]
    labs_not_checked: bool
    notes: tuple[str, ...]
    medications_read: tuple[SourceRecord, ...]  # only when fired
    anticoagulant_not_checked: tuple[str, ...]
    duplex_on_record: tuple[SourceRecord, ...]
    not_checked: tuple[str, ...]
    missing: tuple[MissingEntry, ...]


@dataclass(frozen=True)
class SkippedEntry:
    reference: str
    reason: str


@dataclass(frozen=True)
class Explanation:
    patient_reference: str  # "Patient/<id>"
    patient_label: str  # where the patient came from (a file name, a fixture, a server)
    rules_label: str  # which rule set (a file, "active", "draft 2026.12.2")
    ruleset_version: str
    day: date
    age_years: int | None
    facts: tuple[FactEntry, ...]
    conditions: ConditionCounts
    observations: tuple[ObservationEntry, ...]
    medications: MedicationSummary
    evaluations: tuple[EvaluationEntry, ...]
    shown: tuple[str, ...]  # card ids after precedence (suppression after overrides not applied)
    not_checked: tuple[str, ...]
    incomplete: tuple[str, ...]
    skipped: tuple[SkippedEntry, ...]
    passed_over: tuple[str, ...]


# ---------------------------------------------------------------- building it

def _sources(provenances: Iterable[Provenance]) -> tuple[SourceRecord, ...]:
    return tuple(SourceRecord.of(p) for p in provenances)


def _items(items: Iterable[ScoredItem], *, findings: bool = False) -> tuple[ItemEntry, ...]:
    return tuple(ItemEntry(i.item, None if findings else i.points, i.note, _sources(i.sources)) for i in items)


def _observations(facts: PatientFacts) -> tuple[ObservationEntry, ...]:
    entries = []
    for kind, value in sorted(facts.observations.items()):
        shown = value.answer or (f"{value.value} {value.unit}" if value.value is not None else "flagged")
        entries.append(ObservationEntry(kind, shown, bool(value.is_low), SourceRecord.of(value.provenance)))
    return tuple(entries)


def _medications(facts: PatientFacts) -> MedicationSummary:
    mapping = facts.medication_mapping
    records = tuple(
        MedicationEntry(SourceRecord.of(med.provenance), MEDICATION_METHODS.get(med.method or "", "not mapped"),
                        tuple(sorted(med.ingredients)), tuple(sorted(med.classes)), med.counted)
        for med in facts.medications)
    return MedicationSummary(len(facts.medications), mapping.get("code", 0), mapping.get("text", 0),
                             mapping.get("unmapped", 0), records)


def _evaluation(key: str, label: str, outcome: Outcome) -> EvaluationEntry:
    missing = tuple(MissingEntry(m.card_id, m.reason, m.item or m.test or ", ".join(m.keys), m.points)
                    for m in outcome.missing)
    return EvaluationEntry(
        key=key, label=label, card_id=outcome.card_id, fired=outcome.fired, score=outcome.score,
        threshold=outcome.threshold, pathways=tuple(outcome.pathways), side=outcome.side,
        findings=_items(outcome.findings, findings=True), items=_items(outcome.items),
        missing_labs=tuple(outcome.missing_labs), labs_not_checked=outcome.labs_not_checked,
        notes=tuple(outcome.notes), medications_read=_sources(outcome.medications_read) if outcome.fired else (),
        anticoagulant_not_checked=tuple(outcome.anticoagulant_not_checked),
        duplex_on_record=_sources(outcome.duplex_on_record), not_checked=tuple(outcome.not_checked),
        missing=missing)


def explain(result: Any, ruleset: RuleSet, *, patient_label: str, rules_label: str, day: date) -> Explanation:
    """The explanation of a patient-view ``CallResult`` (``result.facts``, ``result.evaluation``)."""
    facts: PatientFacts = result.facts
    evaluation = result.evaluation
    if not isinstance(evaluation, Evaluation):
        raise TypeError("explain reads patient-view results (an Evaluation), "
                        f"not {type(evaluation).__name__}")
    by_method = Counter("text" if r.method == "text" else "code" if r.concepts else "none" for r in facts.conditions)
    return Explanation(
        patient_reference=f"Patient/{facts.patient.resource_id}",
        patient_label=patient_label,
        rules_label=rules_label,
        ruleset_version=ruleset.version,
        day=day,
        age_years=facts.age_years,
        facts=tuple(FactEntry(name, fact.note, _sources(fact.sources)) for name, fact in sorted(facts.facts.items())),
        conditions=ConditionCounts(len(facts.conditions), by_method["code"], by_method["text"], by_method["none"]),
        observations=_observations(facts),
        medications=_medications(facts),
        evaluations=tuple(_evaluation(key, label, outcome)
                          for (key, label), outcome in zip(EVALUATION_LABELS, evaluation.outcomes)),
        shown=tuple(o.card_id for o in evaluation.shown),
        not_checked=tuple(facts.not_checked),
        incomplete=tuple(facts.incomplete),
        skipped=tuple(SkippedEntry(f"{s.resource_type}/{s.resource_id}", s.reason) for s in facts.skipped),
        passed_over=tuple(facts.passed_over),
    )


# ---------------------------------------------------------------- text

def points_text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _score_text(entry: EvaluationEntry) -> str:
    if entry.score is None:
        return ""
    if entry.threshold is None:
        return f", score {points_text(entry.score)} (documented cramps: no threshold)"
    return f", score {points_text(entry.score)} vs threshold {points_text(entry.threshold)}"


def _medication_text(med: MedicationEntry) -> str:
    ingredients = f"; {', '.join(med.ingredients)}" if med.ingredients else ""
    classes = f"; classes {', '.join(med.classes)}" if med.classes else ""
    counted = "" if med.counted else "; not current (status/intent/period): not counted"
    return f"  {med.source.text}: {med.how}{ingredients}{classes}{counted}"


def _evaluation_text(entry: EvaluationEntry) -> list[str]:
    verdict = "FIRED" if entry.fired else "not fired"
    out = [f"  {entry.label} -> {entry.card_id}: {verdict}{_score_text(entry)}"]
    if entry.pathways:
        out.append(f"    pathways: {', '.join(entry.pathways)}; side: {entry.side or 'bilateral/unknown'}")
    for item in entry.findings:
        note = f" ({item.note})" if item.note else ""
        out.append(f"    finding {item.item}{note}")
        out += [f"        {s.text}" for s in item.sources]
    for item in entry.items:
        note = f" ({item.note})" if item.note else ""
        out.append(f"    {item.item}: {points_text(item.points)} point(s){note}")
        out += [f"        {s.text}" for s in item.sources]
    if entry.missing_labs:
        out.append(f"    no usable result in the lookback for: {', '.join(entry.missing_labs)}")
    if entry.labs_not_checked:
        out.append("    lab results could not be checked (observations not available)")
    out += [f"    note: {note}" for note in entry.notes]
    out += [f"    medication record read: {s.text}" for s in entry.medications_read]
    if entry.anticoagulant_not_checked:
        out.append(f"    anticoagulant not checked in: {', '.join(entry.anticoagulant_not_checked)}")
    out += [f"    venous duplex on record: {s.text}" for s in entry.duplex_on_record]
    if entry.not_checked:
        out.append(f"    keys this rule reads that could not be checked: {', '.join(entry.not_checked)}")
    for missing in entry.missing:
        adds = f", would add {points_text(missing.adds)}" if missing.adds is not None else ""
        out.append(f"    missing ({missing.card_id}): {missing.reason} {missing.what}{adds}")
    return out


def render_explanation_text(e: Explanation) -> str:
    """The explanation as ``cramp-cds rules explain`` prints it (no trailing newline)."""
    out = [f"{e.patient_reference} from {e.patient_label}",
           f"Rule set {e.rules_label} (version {e.ruleset_version}); as of {e.day.isoformat()} (12:00 UTC)",
           f"Age: {e.age_years if e.age_years is not None else 'unknown'}", "", "Facts found:"]
    for fact in e.facts:
        note = f" ({fact.note})" if fact.note else ""
        out.append(f"  {fact.name}{note}")
        out += [f"      {source.text}" for source in fact.sources]
    if not e.facts:
        out.append("  (none)")
    c = e.conditions
    out += ["", f"Conditions: {c.total} (recognised by code {c.by_code}, by text {c.by_text}, "
                f"not recognised {c.not_recognised})"]
    out += ["", "Latest usable observations:"]
    out += [f"  {o.kind}: {o.shown}{' (low)' if o.low else ''} - {o.source.text}" for o in e.observations]
    if not e.observations:
        out.append("  (none)")
    m = e.medications
    out += ["", f"Medication records: {m.total} (by code {m.by_code}, by text {m.by_text}, not mapped {m.not_mapped})"]
    out += [_medication_text(med) for med in m.records]
    out += ["", "Evaluations:"]
    for entry in e.evaluations:
        out += _evaluation_text(entry)
    out += ["", f"Card shown after precedence: {', '.join(e.shown) if e.shown else 'none'}"
                " (suppression after overrides is not applied here)"]
    out.append(f"Could not be checked: {', '.join(e.not_checked) or 'nothing'}")
    if e.incomplete:
        out.append(f"Incomplete (more pages not read): {', '.join(e.incomplete)}")
    out.append(f"Skipped records: {len(e.skipped)}")
    out += [f"  {s.reference}: {s.reason}" for s in e.skipped]
    if e.passed_over:
        out.append("Passed over (unknown unit or unusable value):")
        out += [f"  {entry}" for entry in e.passed_over]
    return "\n".join(out)


# ---------------------------------------------------------------- HTML

def _h(value: Any) -> str:
    return escape(str(value), quote=True)


def _source_html(source: SourceRecord) -> str:
    when = _h(source.date.isoformat()) if source.date else "undated"
    parts = [f'<span class="record-ref">{_h(source.reference)}</span>',
             f'<span class="record-date">{when}</span>',
             f'<span class="record-display">{_h(source.display or "(no display)")}</span>']
    if source.code:
        parts.append(f'<span class="record-code">{_h(source.code)}</span>')
    if source.recognised_by_name:
        parts.append('<span class="record-by-name">recognised by its name</span>')
    if source.status:
        parts.append(f'<span class="record-status">{_h(source.status)}</span>')
    return " ".join(parts)


def _sources_html(sources: Iterable[SourceRecord]) -> str:
    items = "".join(f'<li class="record">{_source_html(s)}</li>' for s in sources)
    return f'<ul class="records">{items}</ul>' if items else ""


def _list_html(css_class: str, entries: Iterable[str]) -> str:
    """A <ul> of already-escaped entries, or an "(none)" paragraph."""
    items = "".join(f"<li>{entry}</li>" for entry in entries)
    return f'<ul class="{css_class}">{items}</ul>' if items else '<p class="none">(none)</p>'


def _words(values: Iterable[str]) -> str:
    return _h(", ".join(values))


def _facts_html(e: Explanation) -> str:
    entries = []
    for fact in e.facts:
        note = f' <span class="note">({_h(fact.note)})</span>' if fact.note else ""
        entries.append(f'<span class="fact-name">{_h(fact.name)}</span>{note}{_sources_html(fact.sources)}')
    return _list_html("facts", entries)


def _observations_html(e: Explanation) -> str:
    if not e.observations:
        return '<p class="none">(none)</p>'
    rows = "".join(
        f'<tr class="{"low" if o.low else "usable"}"><th scope="row">{_h(o.kind)}</th><td>{_h(o.shown)}</td>'
        f'<td>{"low" if o.low else ""}</td><td>{_source_html(o.source)}</td></tr>' for o in e.observations)
    return ('<table class="observations"><thead><tr><th scope="col">Observation</th><th scope="col">Value</th>'
            f'<th scope="col">Flag</th><th scope="col">Record</th></tr></thead><tbody>{rows}</tbody></table>')


def _medications_html(m: MedicationSummary) -> str:
    summary = (f'<p class="counts">{m.total} record(s): by code {m.by_code}, by text {m.by_text}, '
               f'not mapped {m.not_mapped}</p>')
    if not m.records:
        return summary
    rows = []
    for med in m.records:
        counted = "yes" if med.counted else "no: not current (status/intent/period)"
        rows.append(f'<tr class="{"counted" if med.counted else "not-counted"}"><td>{_source_html(med.source)}</td>'
                    f"<td>{_h(med.how)}</td><td>{_words(med.ingredients)}</td><td>{_words(med.classes)}</td>"
                    f"<td>{_h(counted)}</td></tr>")
    return summary + ('<table class="medications"><thead><tr><th scope="col">Record</th><th scope="col">Mapping</th>'
                      '<th scope="col">Ingredients</th><th scope="col">Classes</th><th scope="col">Counted</th>'
                      f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _items_html(entry: EvaluationEntry) -> str:
    rows = []
    for item in entry.findings:
        rows.append(f'<tr class="finding"><th scope="row">{_h(item.item)}</th><td>finding</td>'
                    f'<td>{_h(item.note or "")}</td><td>{_sources_html(item.sources)}</td></tr>')
    for item in entry.items:
        rows.append(f'<tr class="item"><th scope="row">{_h(item.item)}</th><td class="points">'
                    f'{_h(points_text(item.points))}</td><td>{_h(item.note or "")}</td>'
                    f"<td>{_sources_html(item.sources)}</td></tr>")
    if not rows:
        return ""
    return ('<table class="items"><thead><tr><th scope="col">Item</th><th scope="col">Points</th>'
            f'<th scope="col">Note</th><th scope="col">Records</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _evaluation_details_html(entry: EvaluationEntry) -> list[str]:
    details = []
    if entry.pathways:
        details.append(f"pathways: {_words(entry.pathways)}; side: {_h(entry.side or 'bilateral/unknown')}")
    if entry.missing_labs:
        details.append(f"no usable result in the lookback for: {_words(entry.missing_labs)}")
    if entry.labs_not_checked:
        details.append("lab results could not be checked (observations not available)")
    details += [f"note: {_h(note)}" for note in entry.notes]
    details += [f"medication record read: {_source_html(s)}" for s in entry.medications_read]
    if entry.anticoagulant_not_checked:
        details.append(f"anticoagulant not checked in: {_words(entry.anticoagulant_not_checked)}")
    details += [f"venous duplex on record: {_source_html(s)}" for s in entry.duplex_on_record]
    if entry.not_checked:
        details.append(f'<span class="not-checked">keys this rule reads that could not be checked: '
                       f"{_words(entry.not_checked)}</span>")
    for missing in entry.missing:
        adds = f", would add {_h(points_text(missing.adds))}" if missing.adds is not None else ""
        details.append(f'<span class="missing">missing ({_h(missing.card_id)}): {_h(missing.reason)} '
                       f"{_h(missing.what)}{adds}</span>")
    return details


def _evaluation_html(entry: EvaluationEntry) -> str:
    verdict = "fired" if entry.fired else "not-fired"
    score = ""
    if entry.score is not None:
        against = (f' vs threshold <span class="threshold">{_h(points_text(entry.threshold))}</span>'
                   if entry.threshold is not None else " (documented cramps: no threshold)")
        score = f'<p class="score">score <span class="points">{_h(points_text(entry.score))}</span>{against}</p>'
    details = _evaluation_details_html(entry)
    detail_list = ('<ul class="evaluation-details">' + "".join(f"<li>{d}</li>" for d in details) + "</ul>"
                   if details else "")
    return (f'<section class="evaluation {verdict}" data-card-id="{_h(entry.card_id)}" '
            f'data-evaluation="{_h(entry.key)}">'
            f'<h4><span class="evaluation-label">{_h(entry.label)}</span> &rarr; '
            f'<span class="card-id">{_h(entry.card_id)}</span>: '
            f'<span class="verdict">{"FIRED" if entry.fired else "not fired"}</span></h4>'
            f"{score}{_items_html(entry)}{detail_list}</section>")


def _outcome_html(e: Explanation) -> str:
    rows = [("Card shown after precedence",
             _words(e.shown) if e.shown else "none", "shown"),
            ("Could not be checked", _words(e.not_checked) or "nothing",
             "not-checked" if e.not_checked else "all-checked")]
    if e.incomplete:
        rows.append(("Incomplete (more pages not read)", _words(e.incomplete), "incomplete"))
    rows.append(("Skipped records", str(len(e.skipped)), "skipped"))
    body = "".join(f'<dt>{label}</dt><dd class="{css}">{value}</dd>' for label, value, css in rows)
    out = f'<dl class="outcome">{body}</dl>'
    out += '<p class="hint">Suppression after overrides is not applied here.</p>'
    if e.skipped:
        out += _list_html("skipped-records", (f'<span class="record-ref">{_h(s.reference)}</span>: {_h(s.reason)}'
                                              for s in e.skipped))
    if e.passed_over:
        out += "<h4>Passed over (unknown unit or unusable value)</h4>"
        out += _list_html("passed-over", (_h(entry) for entry in e.passed_over))
    return out


def render_explanation_html(e: Explanation) -> str:
    """The explanation as an HTML fragment (a <section class="explanation">): every value escaped, no script and
    no inline style, classes to style it; headings start at <h3> so it fits inside a page's own headings."""
    c = e.conditions
    age = _h(e.age_years) if e.age_years is not None else "unknown"
    return "".join([
        '<section class="explanation">',
        '<dl class="explanation-head">',
        f'<dt>Patient</dt><dd class="patient">{_h(e.patient_reference)} from {_h(e.patient_label)}</dd>',
        f'<dt>Rule set</dt><dd class="rules">{_h(e.rules_label)} (version <span class="version">'
        f'{_h(e.ruleset_version)}</span>)</dd>',
        f'<dt>As of</dt><dd class="day">{_h(e.day.isoformat())} (12:00 UTC)</dd>',
        f'<dt>Age</dt><dd class="age">{age}</dd>',
        "</dl>",
        f"<h3>Facts found</h3>{_facts_html(e)}",
        f'<h3>Conditions</h3><p class="counts">{c.total} condition(s): recognised by code {c.by_code}, '
        f"by text {c.by_text}, not recognised {c.not_recognised}</p>",
        f"<h3>Latest usable observations</h3>{_observations_html(e)}",
        f"<h3>Medication records</h3>{_medications_html(e.medications)}",
        "<h3>Evaluations</h3>", "".join(_evaluation_html(entry) for entry in e.evaluations),
        f"<h3>Outcome</h3>{_outcome_html(e)}",
        "</section>",
    ])


# A minimal stylesheet for the standalone page (``rules explain --format html``); the console has its own.
EXPLANATION_CSS = """
.explanation { background: #fff; border-radius: 6px; padding: 12px 20px 16px; max-width: 920px;
               box-shadow: 0 1px 3px rgba(15, 23, 42, .15); margin: 0 0 18px; }
.explanation h3 { font-size: 15px; margin: 18px 0 6px; border-bottom: 1px solid #e4e7eb; padding-bottom: 3px; }
.explanation h4 { font-size: 14px; margin: 10px 0 4px; }
.explanation dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
.explanation dt { font-weight: 600; color: #52606d; }
.explanation dd { margin: 0; }
.explanation ul { margin: 4px 0 6px 20px; padding: 0; }
.explanation table { border-collapse: collapse; margin: 6px 0 8px; font-size: 13px; width: 100%; }
.explanation th, .explanation td { border: 1px solid #d2d6dc; padding: 4px 7px; text-align: left; vertical-align: top; }
.explanation thead th { background: #f4f5f7; }
.explanation .records { list-style: none; margin: 2px 0 2px 0; }
.explanation .record-ref { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.explanation .record-date, .explanation .record-code, .explanation .note, .explanation .hint,
.explanation .none { color: #52606d; }
.explanation .record-status::before { content: "["; }
.explanation .record-status::after { content: "]"; }
.explanation .evaluation { border-left: 5px solid #9aa5b1; padding: 2px 0 4px 12px; margin: 8px 0; }
.explanation .evaluation.fired { border-left-color: #1c64f2; }
.explanation .fired .verdict { color: #1c64f2; font-weight: 700; }
.explanation .missing, .explanation .not-checked { color: #8a4b00; }
.explanation tr.low td, .explanation tr.not-counted td { color: #8a4b00; }
"""


def render_explanation_page(e: Explanation, response: dict[str, Any]) -> str:
    """A standalone HTML page (card_page.py's frame): the cards as a CDS client shows them, then the explanation.
    It loads nothing: its stylesheet is inline, there is no script."""
    title = f"Explanation: {e.patient_reference} (rule set {e.ruleset_version})"
    cards = "".join(render_card(card) for card in response.get("cards") or []) \
        or '<p class="no-cards">No cards were returned.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"
        f"<title>{_h(title)}</title><style>{CARD_PAGE_CSS}{EXPLANATION_CSS}</style></head>"
        f'<body><main><h1 class="page-title">{_h(title)}</h1>'
        f'<h2 class="page-title">Cards</h2>{cards}'
        f'<h2 class="page-title">Why: the explanation</h2>{render_explanation_html(e)}</main></body></html>\n'
    )
