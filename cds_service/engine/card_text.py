"""Card wording as typed content models, read once from the ``cards`` package (``cards/*.yaml``).

``common.yaml`` holds what every card shares (source label, topic system, override reasons, education
links, item labels, the sentences that say scores, missing data and data problems), ``advice.yaml`` the
tailored conservative-care advice, and one file per card id its own wording. Each card file names its
``kind``, which picks its model (a discriminated union), so a misspelt or missing key fails at load time
with the file and the field, never as a ``KeyError`` while a card is being built.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, TypeAdapter

from cds_service.ruleset.card_ids import (CONSERVATIVE_CARE, ELEVATED_CRAMP_RISK, LEGACY_DRUG_ORDER, POSSIBLE_DVT,
                                          QUININE_FOR_CRAMPS, UNTREATED_DVT, VENOUS_DUPLEX_WORKUP)

SHARED_FILES = ("common.yaml", "advice.yaml")


class _Text(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- shared wording

class OverrideReason(_Text):
    code: str
    display: str


class OverrideReasons(_Text):
    system: str
    reasons: tuple[OverrideReason, ...]


class LinkText(_Text):
    label: str
    url: str


class Phrases(_Text):
    """Sentences every card may use; ``{placeholders}`` are filled by cards.py."""

    score_needed: str  # "{score}, {threshold} needed: {items}."
    score_total: str  # "{score}: {items}."
    record_date: str  # "{date}"
    undated: str
    text_matched: str  # "recognised by its name"
    sides: dict[str, str]  # right | left | bilateral -> "right leg", ...
    statuses: dict[str, dict[str, str]]  # resource type -> status -> words ("done", "ordered")
    age: str  # "age {age} (born {year})"
    age_unknown_birth: str
    not_checked: str  # "{keys} could not be checked."
    incomplete: str  # "Data may be incomplete: ..."
    skipped: str  # "{count} could not be read ..."
    passed_over: str
    missing_heading: str
    rule_set: str  # "Rule set {version}."


class MissingText(_Text):
    """What a missing input could have changed (RULES.md, Every card)."""

    bmi_absent: str
    bmi_not_checked: str
    birth_date_absent: str
    lab_absent: str
    lab_not_checked: str
    medications_not_checked: str
    venous_would_fire: str
    duplex_not_checked: str
    surgery_not_checked: str


class CommonText(_Text):
    source_label: str
    topic_system: str
    disclaimer: str
    override_reasons: OverrideReasons
    links: dict[str, LinkText]
    labels: dict[str, str]
    code_systems: dict[str, str]  # system URI -> "ICD-10-CM", "CPT", ...
    data_keys: dict[str, str]  # prefetch key -> what it holds, as a plural noun ("medication orders")
    record_kinds: dict[str, tuple[str, str]]  # resource type -> (singular, plural) in words
    phrases: Phrases
    missing: MissingText

    def label(self, item: str) -> str:
        return self.labels.get(item, item.replace("_", " ").capitalize())


class AdviceLine(_Text):
    text: str
    when: tuple[str, ...]
    unless: tuple[str, ...] = ()


class LabTest(_Text):
    name: str
    description: str
    codes: tuple[str, ...]


class LabSuggestion(_Text):
    label: str
    reason: str
    tests: dict[str, LabTest]
    triggers: dict[str, str]  # drug class or condition concept -> "takes a diuretic", ...
    not_checked: str


class AdviceText(_Text):
    lines: tuple[AdviceLine, ...]
    when_to_worry: str
    lab_suggestion: LabSuggestion


# ---------------------------------------------------------------- per card

class OrderText(_Text):
    """A suggestion that creates a ServiceRequest; codes are ``alias|code|display``."""

    label: str
    description: str
    priority: str
    codes: tuple[str, ...] = ()


class SideOrder(_Text):
    label: str
    codes: tuple[str, ...]


class _Card(_Text):
    summary: str
    source_url: str
    links: tuple[str, ...] = ()


class PossibleDvtText(_Card):
    kind: str
    intro: str
    pathways: dict[str, str]
    wells_found: str
    wells_none: str
    advice: str
    duplex: OrderText
    duplex_sides: dict[str, SideOrder]
    d_dimer: OrderText


class UntreatedDvtText(_Card):
    kind: str
    summary_not_checked: str
    intro: str
    medications_read: str
    medications_none: str
    medications_not_checked: str
    treatment: str


class VenousText(_Card):
    kind: str
    intro: str
    score_label: str
    cramps: str
    advice: str
    duplex: OrderText


class ConservativeText(_Card):
    kind: str
    intro: str
    score_label: str
    no_items: str
    duplex_on_record: str


class RiskText(_Card):
    kind: str
    intro: str
    score_label: str


class QuinineText(_Card):
    kind: str
    intro: str
    advice: str
    cramps_known: str
    cramps_none: str
    remove_label: str
    remove_description: str


class DrugClassText(_Text):
    label: str
    name: str
    plural: str
    association: str


class DrugOrderText(_Card):
    kind: str
    intro: str
    cramps: str
    advice: str
    order_classes: dict[str, DrugClassText]  # order class -> its wording
    drug_classes: dict[str, str]  # drug-table class -> name in the orders table


def _kind_of(value: Any) -> Any:
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


# A card file's ``kind`` picks its model: the card's id (card_ids), and for the three drug-order cards the
# id of the card they were split from, whose wording model they share.
CardText = Annotated[
    Union[
        Annotated[PossibleDvtText, Tag(POSSIBLE_DVT)],
        Annotated[UntreatedDvtText, Tag(UNTREATED_DVT)],
        Annotated[VenousText, Tag(VENOUS_DUPLEX_WORKUP)],
        Annotated[ConservativeText, Tag(CONSERVATIVE_CARE)],
        Annotated[RiskText, Tag(ELEVATED_CRAMP_RISK)],
        Annotated[QuinineText, Tag(QUININE_FOR_CRAMPS)],
        Annotated[DrugOrderText, Tag(LEGACY_DRUG_ORDER)],
    ],
    Discriminator(_kind_of),
]
_CARD_TEXT: TypeAdapter[Any] = TypeAdapter(CardText)


class CardContent(_Text):
    common: CommonText
    advice: AdviceText
    cards: dict[str, Any]  # card id -> one of the card models above

    def card(self, card_id: str) -> Any:
        return self.cards[card_id]


def _read(folder: Any, name: str) -> Any:
    return yaml.safe_load(folder.joinpath(name).read_text(encoding="utf-8"))


def read_card_content(folder: Any = None) -> CardContent:
    """Every ``cards/*.yaml``, validated; a card file's stem is its card id."""
    folder = folder if folder is not None else resources.files("cards")
    cards = {
        entry.name[: -len(".yaml")]: _CARD_TEXT.validate_python(_read(folder, entry.name))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml") and entry.name not in SHARED_FILES
    }
    return CardContent(
        common=CommonText.model_validate(_read(folder, "common.yaml")),
        advice=AdviceText.model_validate(_read(folder, "advice.yaml")),
        cards=cards,
    )


@cache
def load_card_content() -> CardContent:
    """The shipped wording, read and validated once per process."""
    return read_card_content()
