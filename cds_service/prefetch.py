"""Prefetch resolution: fill the templates' tokens, read what the client sent for each key, and find
what is missing (CDS Hooks 2.0 §Prefetch; ../shared/spec/STATUS.md).

A value that is missing, ``null`` or an OperationOutcome is *missing*: it is fetched from the client's
``fhirServer`` when a fetcher is configured, else it is unavailable: 412 for a required key, "not
checked" in the cards for an optional one. A Bundle with a ``next`` link is incomplete unless its
pages are fetched. Keys the service did not ask for are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from .errors import PreconditionFailed
from .hook_request import HookRequest

_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


@dataclass(frozen=True)
class PrefetchTemplate:
    key: str
    query: str
    required: bool


@dataclass
class ResolvedPrefetch:
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    not_checked: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FetchOutcome:
    resources: list[dict[str, Any]] | None  # None: could not be had
    complete: bool = True
    reason: str | None = None


class Fetcher(Protocol):
    """Fetches queries (relative FHIR URLs) from the request's fhirServer, all within one deadline."""

    def fetch(self, request: HookRequest, queries: Mapping[str, str],
              partial: Mapping[str, dict[str, Any]]) -> dict[str, FetchOutcome]: ...


def render_template(template: str, request: HookRequest) -> str:
    """Replace ``{{context.x}}`` tokens (root-level primitive context fields, CDS Hooks 2.0)."""
    context = request.context.model_dump()

    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            found = context.get(token.removeprefix("context."))
            return str(found) if isinstance(found, (str, int)) else ""
        if token == "userPractitionerId" and request.context.userId.startswith("Practitioner/"):
            return request.context.userId.split("/", 1)[1]
        return ""

    return _TOKEN.sub(value, template)


def _is_operation_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def _entries(value: dict[str, Any]) -> list[dict[str, Any]]:
    if value.get("resourceType") != "Bundle":
        return [value]
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        return []
    return [e.get("resource") for e in entries if isinstance(e, dict) and e.get("resource") is not None]


def has_next_page(value: dict[str, Any]) -> bool:
    links = value.get("link") or []
    return isinstance(links, list) and any(isinstance(l, dict) and l.get("relation") == "next" for l in links)


def resolve_prefetch(
    request: HookRequest,
    templates: tuple[PrefetchTemplate, ...],
    service_id: str,
    fetcher: Fetcher | None = None,
) -> ResolvedPrefetch:
    sent = request.prefetch or {}
    resolved = ResolvedPrefetch()
    missing: dict[str, str] = {}
    partial: dict[str, dict[str, Any]] = {}
    for template in templates:
        value = sent.get(template.key)
        if value is None or _is_operation_outcome(value):
            missing[template.key] = render_template(template.query, request)
            continue
        resolved.resources[template.key] = _entries(value)
        if value.get("resourceType") == "Bundle" and has_next_page(value):
            partial[template.key] = value
    if (missing or partial) and fetcher is not None and request.fhirServer:
        _fetch_into(resolved, fetcher, request, missing, partial)
    else:
        resolved.incomplete.extend(partial)
    unavailable = [t for t in templates if t.key in missing and t.key not in resolved.resources]
    required = [t.key for t in unavailable if t.required]
    if required:
        raise PreconditionFailed(_missing_message(required, service_id, request), keys=tuple(required))
    resolved.not_checked.extend(t.key for t in unavailable)
    return resolved


def _fetch_into(resolved: ResolvedPrefetch, fetcher: Fetcher, request: HookRequest,
                missing: dict[str, str], partial: dict[str, dict[str, Any]]) -> None:
    outcomes = fetcher.fetch(request, missing, partial)
    for key, outcome in outcomes.items():
        if outcome.resources is None:
            if key in partial:
                resolved.incomplete.append(key)
            continue
        if key in partial:
            resolved.resources[key] = resolved.resources.get(key, []) + outcome.resources
        else:
            resolved.resources[key] = outcome.resources
            resolved.fetched.append(key)
        if not outcome.complete:
            resolved.incomplete.append(key)


def _missing_message(keys: list[str], service_id: str, request: HookRequest) -> str:
    why = "no fhirServer was given to fetch them from" if not request.fhirServer else "they could not be fetched"
    return (
        f"Unable to obtain required prefetch data with key(s) {', '.join(keys)} for CDS Hooks service "
        f"{service_id}: {why}."
    )
