"""CDS Hooks 2.0 response as typed wire models, with the spec's FSH invariants ported one to one
(``../shared/spec/artifacts/HL7-cds-hooks@fb10ca7/input/fsh/invariants``):

- cds-resp-1  at-most-one selection implies at most one recommended suggestion
- cds-resp-2  a delete action carries resourceId and no resource
- cds-resp-3  appContext only on smart links
- cds-resp-4  every override-reason Coding has a display
- cds-resp-5  every suggestion action has a description
- cds-resp-6  suggestions imply selectionBehavior
- cds-resp-7  actionSelectionBehavior is all | any | at-most-one
plus the 2.0 field rules: summary under 140 characters, indicator / link type / action type from their
value sets, absolute URLs. ``CdsResponse.model_validate(json)`` checks any response, ours or an example.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Indicator = Literal["info", "warning", "critical"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


def _absolute(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return url


class Coding(_Wire):
    system: str
    code: str
    display: str | None = None


class Source(_Wire):
    label: str = Field(min_length=1)
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None

    @field_validator("url", "icon")
    @classmethod
    def _urls_absolute(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)


class Action(_Wire):
    type: Literal["create", "update", "delete"]
    description: str | None = None
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _resource_matches_type(self) -> "Action":
        if self.type == "delete" and (self.resourceId is None or self.resource is not None):
            raise ValueError("cds-resp-2: a delete action carries resourceId and no resource")
        if self.type in ("create", "update") and self.resource is None:
            raise ValueError(f"a {self.type} action carries the resource")
        return self


class Suggestion(_Wire):
    label: str = Field(min_length=1)
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None
    actionSelectionBehavior: str | None = None

    @model_validator(mode="after")
    def _invariants(self) -> "Suggestion":
        if any(action.description is None for action in self.actions or []):
            raise ValueError("cds-resp-5: every suggestion action has a description")
        if self.actionSelectionBehavior not in (None, "all", "any", "at-most-one"):
            raise ValueError("cds-resp-7: actionSelectionBehavior is all, any or at-most-one")
        return self


class Link(_Wire):
    label: str = Field(min_length=1)
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _invariants(self) -> "Link":
        if self.type != "smart" and self.appContext is not None:
            raise ValueError("cds-resp-3: appContext only on smart links")
        if self.type == "absolute":
            _absolute(self.url)
        return self


class Card(_Wire):
    uuid: str | None = None
    summary: str = Field(min_length=1, max_length=139)
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _invariants(self) -> "Card":
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("cds-resp-6: suggestions imply selectionBehavior")
        if self.selectionBehavior == "at-most-one" and sum(bool(s.isRecommended) for s in self.suggestions or []) > 1:
            raise ValueError("cds-resp-1: at most one recommended suggestion with at-most-one")
        if any(reason.display is None for reason in self.overrideReasons or []):
            raise ValueError("cds-resp-4: every override reason has a display")
        return self


class CdsResponse(_Wire):
    cards: list[Card]
    systemActions: list[Action] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_json_null(cls, data: Any) -> Any:
        """CDS Hooks 2.0 §JSON: absent optional fields are omitted, never null."""
        path = _first_null(data, "")
        if path is not None:
            raise ValueError(f"{path or 'body'} is null; CDS Hooks omits absent fields instead")
        return data


def _first_null(node: Any, path: str) -> str | None:
    """The path of the first JSON null in raw data (models built in code are not walked)."""
    if node is None:
        return path
    items: Iterable[tuple[Any, Any]]
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return None
    for key, value in items:
        if key == "resource":
            continue  # FHIR resources inside actions follow FHIR's own rules
        found = _first_null(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def wire_json(model: BaseModel) -> dict[str, Any]:
    """The model as CDS Hooks JSON: absent optional fields omitted, never null (spec §JSON)."""
    return model.model_dump(mode="json", exclude_none=True)
