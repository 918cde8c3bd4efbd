"""How a card names what it read, the way a clinician reads a chart (RULES.md, Every card).

A record is its display, code and date ("Varicose veins of lower extremity (SNOMED CT 128060009),
2024-03-01"), with the side for a sign in one leg and "recognised by its name" when its text, not its
code, was matched; the patient record is the age ("age 67 (born 1959)"). Resource ids never appear in
card text: they stay in the card's machine-readable ``extension``. Scores are said in words with what was
needed ("4 points, 3 needed: varicose veins 3, age 50 or over 1").
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from cds_service.engine.card_text import CommonText
from cds_service.engine.chart import SkippedRecord
from cds_service.engine.facts import SYSTEM_LABELS, PatientFacts, Provenance



def escape(text: str) -> str:
    """Keep record text from breaking a markdown table or injecting HTML."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;") \
        .replace("\r", " ").replace("\n", " ")


def number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def points(value: float) -> str:
    """``1 point``, ``2 points``, ``0.5 points``."""
    return f"{number(value)} point" + ("" if value == 1 else "s")


def lower_first(label: str) -> str:
    """``Varicose veins`` -> ``varicose veins``; ``BMI 30 or over`` stays as it is."""
    if len(label) > 1 and label[1].isupper():
        return label
    return label[:1].lower() + label[1:]


def join_words(parts: list[str], conjunction: str = "and") -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + f" {conjunction} " + parts[-1]


class Phrasing:
    """Record and score wording for one patient's facts."""

    def __init__(self, common: CommonText, facts: PatientFacts) -> None:
        self.common = common
        self.facts = facts
        self._conditions = {c.provenance.resource_id: c for c in facts.conditions}
        self._medications = {(m.provenance.resource_type, m.provenance.resource_id): m for m in facts.medications}

    # ------------------------------------------------------------ records

    def record(self, source: Provenance, *, with_side: bool = False, text_matched: bool | None = None,
               undated: str | None = None) -> str:
        """One record as a clinician reads it; never its resource id. ``undated``: what to say instead of
        the date when there is none (a draft order: "draft order")."""
        if source.resource_type == "Patient":
            return self.age()
        phrases = self.common.phrases
        label = source.display or self.common.record_kinds.get(source.resource_type, (source.resource_type, ""))[0]
        if source.code:
            system = self.common.code_systems.get(source.system or "") or SYSTEM_LABELS.get(source.system or "", "code")
            label += f" ({system} {source.code})"
        parts = [label, phrases.record_date.format(date=source.date.isoformat()) if source.date
                 else undated or phrases.undated]
        status = phrases.statuses.get(source.resource_type, {}).get(getattr(source, "status", None) or "")
        if status:
            parts.append(status)
        side = self.side_of(source) if with_side else None
        if side:
            parts.append(phrases.sides[side])
        if self.is_text_matched(source) if text_matched is None else text_matched:
            parts.append(phrases.text_matched)
        return ", ".join(parts)

    def records(self, sources: Iterable[Provenance], *, with_side: bool = False) -> str:
        return "; ".join(self.record(s, with_side=with_side) for s in sources)

    def age(self) -> str:
        phrases = self.common.phrases
        born = self.facts.patient.date
        if self.facts.age_years is None:
            return phrases.undated
        if born is None:
            return phrases.age_unknown_birth.format(age=self.facts.age_years)
        return phrases.age.format(age=self.facts.age_years, year=born.year)

    def side_of(self, source: Provenance) -> str | None:
        record = self._conditions.get(source.resource_id) if source.resource_type == "Condition" else None
        side = record.side if record is not None else None
        return side if side in self.common.phrases.sides else None

    def is_text_matched(self, source: Provenance) -> bool:
        """Recognised by its text, not its code (RULES.md: medications, and the Condition text fallback)."""
        if source.text_matched:
            return True
        medication = self._medications.get((source.resource_type, source.resource_id))
        return medication is not None and medication.method == "text"

    # ------------------------------------------------------------ scores and data notes

    def score(self, total: float, threshold: float | None, items: list[tuple[str, float]]) -> str:
        """``4 points, 3 needed: varicose veins 3, age 50 or over 1.``"""
        phrases = self.common.phrases
        listed = ", ".join(f"{lower_first(self.common.label(item))} {number(value)}" for item, value in items)
        if threshold is None:
            return phrases.score_total.format(score=points(total), items=listed)
        return phrases.score_needed.format(score=points(total), threshold=number(threshold), items=listed)

    def keys(self, keys: Iterable[str]) -> str:
        """``medication orders, medication statements``: what the keys hold, in words."""
        return ", ".join(self.common.data_keys.get(k, k) for k in keys)

    def skipped(self, skipped: Sequence[SkippedRecord]) -> str:
        kinds = self.common.record_kinds
        counts = Counter((s.resource_type, s.reason) for s in skipped)
        described = []
        for (kind, reason), count in counts.items():
            singular, plural = kinds.get(kind, ("record", "records"))
            described.append(f"{count} {singular if count == 1 else plural}: {reason}")
        count = len(skipped)
        return self.common.phrases.skipped.format(
            count=f"{count} record" + ("" if count == 1 else "s"), verb="was" if count == 1 else "were",
            records=escape("; ".join(described)))
