"""The CDS Hooks 2.0 feedback body as typed models (``POST {baseUrl}/cds-services/{id}/feedback``).

    {"feedback": [{"card": "<card.uuid>", "outcome": "accepted" | "overridden",
                   "acceptedSuggestions": [{"id": "<suggestion.uuid>"}],          required when accepted
                   "overrideReason": {"reason": Coding, "userComment": "..."},     reason or comment or both
                   "outcomeTimestamp": "2026-06-15T12:00:00Z"}]}                   RFC 3339, UTC

The logical model's invariants are ported one to one: cds-fb-1 (outcome), cds-fb-2 (acceptedSuggestions
when accepted), cds-fb-3 (overrideReason has a reason or a userComment). ``parse_feedback`` turns any
malformed body into ``BadRequest`` naming the field, e.g. ``feedback[0].outcome``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cds_service.errors import BadRequest

MAX_ITEMS = 1000
MAX_SUGGESTIONS = 100  # accepted suggestions per item: a card carries a handful
MAX_CODE = 256  # overrideReason.reason system and code: identifiers, bounded like the hook context's
MAX_DISPLAY = 1024
MAX_COMMENT = 4096  # overrideReason.userComment: a clinician's free text, stored
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# RFC 3339 section 5.6 date-time, in UTC (``Z`` or a zero offset), as the spec asks.
_INSTANT = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|[+-]00:00)$"
)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


def _uuid(value: str) -> str:
    if not _UUID.match(value):
        raise PydanticCustomError("uuid", "must be a UUID (the uuid the service gave)")
    return value.lower()


Uuid = Annotated[str, AfterValidator(_uuid)]


class Coding(_Wire):
    system: str = Field(min_length=1, max_length=MAX_CODE)
    code: str = Field(min_length=1, max_length=MAX_CODE)
    display: str | None = Field(default=None, max_length=MAX_DISPLAY)


class OverrideReason(_Wire):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=MAX_COMMENT)

    @model_validator(mode="after")
    def _reason_or_comment(self) -> "OverrideReason":  # cds-fb-3
        if self.reason is None and not self.userComment:
            raise PydanticCustomError(
                "cds_fb_3", "must contain a reason, a userComment, or both (CDS Hooks cds-fb-3)"
            )
        return self


class AcceptedSuggestion(_Wire):
    id: Uuid


class FeedbackItem(_Wire):
    card: Uuid
    outcome: str
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(default=None, max_length=MAX_SUGGESTIONS)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime

    @field_validator("outcome")
    @classmethod
    def _known_outcome(cls, value: str) -> str:  # cds-fb-1
        if value not in ("accepted", "overridden"):
            raise PydanticCustomError("cds_fb_1", "must be 'accepted' or 'overridden' (CDS Hooks cds-fb-1)")
        return value

    @field_validator("outcomeTimestamp", mode="before")
    @classmethod
    def _instant(cls, value: Any) -> datetime:
        if not isinstance(value, str) or not _INSTANT.match(value):
            raise PydanticCustomError(
                "instant", "must be an RFC 3339 date-time in UTC, e.g. 2026-06-15T12:00:00Z"
            )
        return parse_instant(value)

    @model_validator(mode="after")
    def _suggestions_when_accepted(self) -> "FeedbackItem":  # cds-fb-2
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise PydanticCustomError(
                "cds_fb_2",
                "is required, with at least one suggestion id, when outcome is 'accepted' (CDS Hooks cds-fb-2)",
                {"field": "acceptedSuggestions"},
            )
        return self

    @property
    def accepted_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.acceptedSuggestions or ())


class FeedbackBody(_Wire):
    feedback: list[FeedbackItem] = Field(max_length=MAX_ITEMS)


def parse_instant(value: str) -> datetime:
    """An RFC 3339 UTC instant as an aware datetime (fractions past microseconds are cut)."""
    match = _INSTANT.match(value)
    if not match:
        raise ValueError(f"not an RFC 3339 UTC instant: {value!r}")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59),
            int((fraction or "0").ljust(6, "0")[:6]), tzinfo=timezone.utc,
        )
    except ValueError:
        raise PydanticCustomError("instant", "is not a valid date-time") from None


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Validate a decoded JSON body as CDS Hooks feedback; raise ``BadRequest`` naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("The feedback body must be a JSON object: {\"feedback\": [...]}.")
    try:
        return list(FeedbackBody.model_validate(body).feedback)
    except ValidationError as exc:
        where, message = _describe(exc)
        raise BadRequest(message, expression=where) from None


def _path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _describe(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    field = (first.get("ctx") or {}).get("field")
    where = _path(loc + (field,) if field else loc) or "body"
    kind = first["type"]
    if kind == "missing":
        return where, f"{where} is required."
    expected = {
        "string_type": "a string",
        "dict_type": "a JSON object",
        "model_type": "a JSON object",
        "model_attributes_type": "a JSON object",
        "list_type": "an array",
        "string_too_short": "a non-empty string",
        "bool_type": "a boolean",
    }.get(kind)
    if expected:
        return where, f"{where} must be {expected}."
    if kind == "too_long":
        limit = first["ctx"]["max_length"]
        hint = "; send them in several calls" if where == "feedback" else ""
        return where, f"{where} holds more than {limit} entries{hint}."
    if kind == "string_too_long":
        return where, f"{where} is longer than {first['ctx']['max_length']} characters."
    if kind.startswith("cds_fb") or kind in ("uuid", "instant"):
        return where, f"{where} {first['msg']}."
    return where, f"{where}: {first['msg']}."
