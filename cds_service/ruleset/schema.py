"""The rule-set file's schema (pydantic, strict: unknown keys, wrong types and ranges are errors that name the
path), and the ids the rules and checks know: the items scored in ``points``, the value sets the engine reads
by name, the order classes, the FHIR statuses.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cds_service.ruleset.card_ids import PATIENT_VIEW_CARD_IDS

DocumentPath = tuple[Any, ...]  # a path into the YAML document: keys and list indices

# The card ids are defined once, in card_ids.py; the patient-view ones under the name the checks use.
CARD_IDS = PATIENT_VIEW_CARD_IDS
# Cards of the order hooks (order-select, order-sign; engine/order_rules.py): settings in ``cards`` like the above.
# The order classes engine/order_rules.py and the order cards know (RULES.md, Order hooks: the classes with a clear
# association in Garrison 2012), and the drug-table classes (engine/drugs.py) they group.
ORDER_CLASSES = ("quinine", "potassium-sparing", "thiazide", "laba")
# Value sets whose concepts can raise a ``critical`` card (A: acute / previous DVT, the signs, the Wells
# items): the Condition text fallback may never yield them (RULES.md, Text fallback for Conditions).
CRITICAL_VALUE_SETS = ("dvt_acute", "dvt_history", "leg_edema_one_side_by_code", "leg_edema_snomed_sided_by_body_site",
                       "leg_redness_cellulitis", "leg_pain", "active_cancer", "paralysis")
# FHIR R4 status codes (Procedure.status, ServiceRequest.status), for the ``procedures`` section.
PROCEDURE_STATUSES = ("preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                      "entered-in-error", "unknown")
SERVICE_REQUEST_STATUSES = ("draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown")
DRUG_TABLE_CLASSES = ("loop", "thiazide", "potassium-sparing", "laba", "statin", "anticoagulant", "quinine",
                      "carbonic-anhydrase-inhibitor")


# The item ids the rules score (engine/rules.py reads these; an id in ``points`` outside them is an error).
VENOUS_CONDITION_ITEMS = ("varicose_veins", "venous_insufficiency", "venous_skin_changes", "post_thrombotic_syndrome")
VENOUS_INDEX_ITEMS = (*VENOUS_CONDITION_ITEMS, "previous_dvt", "chronic_leg_edema", "pregnancy", "age_50_or_over",
                      "bmi_30_or_over")
CONTRIBUTOR_DRUG_ITEMS = ("potassium_sparing_diuretic", "thiazide_diuretic", "loop_diuretic",
                          "long_acting_beta_agonist", "statin")
CONTRIBUTOR_CONDITION_ITEMS = (
    "liver_disease", "dialysis_or_eskd", "ckd_stage_3_5", "diabetes", "pregnancy", "hypothyroidism",
    "peripheral_artery_disease", "low_potassium", "low_magnesium", "recent_dehydration", "current_smoker",
    "high_cholesterol",
)
CONTRIBUTOR_ITEMS = (*CONTRIBUTOR_DRUG_ITEMS, *CONTRIBUTOR_CONDITION_ITEMS, "age_65_or_over")
RED_FLAG_SIGNS = ("one_sided_leg_swelling", "leg_redness_cellulitis", "leg_pain")
WELLS_ITEMS = ("active_cancer", "recent_surgery", "paralysis", "previous_dvt")
# The value sets engine/facts.py and engine/rules.py read by name: a rule set must define every one of them.
REQUIRED_VALUE_SETS = (
    "leg_cramp", "pregnancy", "smoking_current", "smoking_former", "smoking_never", "ckd_stage_3_5",
    "ckd_unspecified", "ckd_any", "dialysis_or_eskd", "heart_failure", "dvt_acute", "dvt_history",
    "varicose_veins", "venous_insufficiency", "venous_skin_changes", "leg_ulcer_needing_venous_record",
    "post_thrombotic_syndrome", "leg_edema", "leg_edema_one_side_by_code", "leg_edema_snomed_sided_by_body_site",
    "leg_redness_cellulitis", "leg_pain", "active_cancer", "paralysis", "peripheral_artery_disease",
    "high_cholesterol", "diabetes", "liver_disease", "hypothyroidism", "hypokalemia", "hypomagnesemia",
    "dehydration", "surgical_procedure_category", "pregnancy_status_pregnant", "pregnancy_status_not_pregnant",
    "venous_duplex",
)
CARD_TEXT_KEYS = ("summary", "source_url")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueSetSpec(_Strict):
    source: str = Field(min_length=1)
    file: str | None = None  # a FHIR ValueSet JSON: next to the rule-set file, or shipped in data/valuesets/
    codes: list[str] = []
    prefixes: list[str] = []
    ranges: list[str] = []
    exclude: list[str] = []


class Windows(_Strict):
    recent_days: int = Field(ge=0)
    chronic_edema_min_days: int = Field(ge=0)
    dehydration_days: int = Field(ge=0)
    recent_surgery_days: int = Field(ge=0)
    lab_lookback_days: int = Field(ge=0)


class LastCharacterSides(_Strict):
    prefix: str
    sides: dict[str, str]


class Laterality(_Strict):
    code_sides: dict[str, list[str]]
    last_character_sides: list[LastCharacterSides] = []
    body_site_sides: dict[str, list[str]]


class ObservationSpec(_Strict):
    codes: list[str] = Field(min_length=1)
    window_days: int = Field(ge=0)
    low_below: dict[str, float] = {}
    units: list[str] = []


class Observations(_Strict):
    pregnancy_status: ObservationSpec
    smoking_status: ObservationSpec
    potassium: ObservationSpec
    magnesium: ObservationSpec
    bmi: ObservationSpec


class MedicationSpec(_Strict):
    request_intents: list[str]
    request_statuses: list[str]
    statement_statuses: list[str]


class RedFlag(_Strict):
    signs: list[str]
    signs_needed_alone: int = Field(ge=1)
    wells_items: list[str]


class VenousIndex(_Strict):
    threshold: float = Field(gt=0)
    points: dict[str, float]
    chronic_leg_edema_with_heart_failure: float = Field(ge=0)
    objective_signs: list[str]
    age_years: int = Field(ge=0)
    bmi_at_least: float = Field(gt=0)


class LabCheck(_Strict):
    drug_classes: list[str]
    conditions: list[str]


class Contributors(_Strict):
    threshold: float = Field(gt=0)
    points: dict[str, float]
    age_years: int = Field(ge=0)
    drug_classes: dict[str, str]
    lab_check: LabCheck


class Procedures(_Strict):
    """RULES.md, Concept boundaries: recent surgery (a Wells item) and a venous duplex on record (stops B).
    The surgery window is ``windows.recent_surgery_days``; the codes are the value sets
    ``surgical_procedure_category`` (Procedure.category) and ``venous_duplex``."""

    source: str = Field(min_length=1)
    surgery_statuses: list[str] = Field(min_length=1)
    duplex_window_days: int = Field(ge=0)
    duplex_procedure_statuses: list[str] = Field(min_length=1)
    duplex_service_request_statuses: list[str] = Field(min_length=1)


class ConditionText(_Strict):
    """RULES.md, Text fallback for Conditions: value-set name -> terms matched in ``code.text`` and each
    ``coding.display`` when no coding is in any value set; a text holding a cue is not matched."""

    source: str = Field(min_length=1)
    terms: dict[str, list[str]]
    cues: list[str]


class OrderRules(_Strict):
    """RULES.md, Order hooks: which draft MedicationRequests are judged, and which order classes each order
    card judges (``quinine-for-cramps``: for anyone; ``cramp-associated-drug-order-<class>``: with documented
    cramps, one card per drug class)."""

    statuses: list[str] = Field(min_length=1)
    order_classes: dict[str, list[str]]  # order class -> drug-table classes
    cards: dict[str, list[str]]  # order card id -> the order classes it judges


class CardSettings(_Strict):
    enabled: bool = True
    indicator: str
    suppress_days: int = Field(ge=0)

    @field_validator("indicator")
    @classmethod
    def _known_indicator(cls, value: str) -> str:
        if value not in {"info", "warning", "critical"}:
            raise ValueError("must be one of info, warning, critical")
        return value


class RuleSetSpec(_Strict):
    version: str = Field(min_length=1)
    title: str
    code_systems: dict[str, str]
    windows: Windows
    value_sets: dict[str, ValueSetSpec]
    laterality: Laterality
    observations: Observations
    medications: MedicationSpec
    red_flag: RedFlag
    venous_index: VenousIndex
    contributors: Contributors
    procedures: Procedures
    condition_text: ConditionText
    order_rules: OrderRules
    cards: dict[str, CardSettings]

