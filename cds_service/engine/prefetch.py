"""Prefetch resolution: fill the templates' tokens, read what the client sent for each key, and find
what is missing (CDS Hooks 2.0 §Prefetch; ../shared/spec/STATUS.md).

A value that is missing, ``null`` or an OperationOutcome is *missing*: it is fetched from the client's
``fhirServer`` when a fetcher is configured, else it is unavailable: 412 for a required key, "not
checked" in the cards for an optional one. A Bundle with a ``next`` link is incomplete unless its
pages are fetched (same server only, allowlist first); an incomplete key's entries present are used, the
cards say so, and when the key is required and no card fires the answer is 412, never an all-clear
(``incomplete_required_error``). Keys the service did not ask for are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol
from urllib.parse import quote

from cds_service.errors import BadRequest, FhirServerRefused, PreconditionFailed
from cds_service.fhir.outcome import FetchOutcome
from cds_service.hooks.request import HookRequest

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
    reasons: dict[str, str] = field(default_factory=dict)  # why a fetch failed or stopped, by key (no PHI)


class Fetcher(Protocol):
    """Fetches queries (relative FHIR URLs) from the request's fhirServer, all within one deadline."""

    def fetch(self, request: HookRequest, queries: Mapping[str, str],
              partial: Mapping[str, dict[str, Any]]) -> dict[str, FetchOutcome]: ...


def render_template(template: str, request: HookRequest) -> str:
    """Replace ``{{context.x}}`` tokens (root-level primitive context fields, CDS Hooks 2.0).

    Values are percent-encoded: an id holding ``/``, ``?``, ``&`` or ``#`` cannot change the query's shape.
    """
    context = request.context.model_dump()

    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            found = context.get(token.removeprefix("context."))
            return quote(str(found), safe="") if isinstance(found, (str, int)) else ""
        if token == "userPractitionerId" and request.context.userId.startswith("Practitioner/"):
            return quote(request.context.userId.split("/", 1)[1], safe="")
        return ""

    return _TOKEN.sub(value, template)


def _is_operation_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def _entries(value: dict[str, Any]) -> list[Any]:
    if value.get("resourceType") != "Bundle":
        return [value]
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        return []
    # An entry that is not an object is passed on as a record for the chart to skip and count.
    return [e.get("resource") if isinstance(e, dict) else e for e in entries
            if not isinstance(e, dict) or e.get("resource") is not None]


def check_resource_shape(key: str, value: dict[str, Any]) -> None:
    """A prefetch value's own shape, before any lookup: a string ``resourceType``; for a Bundle, ``entry``
    and ``link`` arrays (a malformed ``link`` could hide a next page). 400 naming the field; a bad record
    inside ``entry`` is the chart's to skip and count."""
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str):
        raise BadRequest(f"prefetch.{key}.resourceType must be a string (a FHIR resource type).",
                         expression=f"prefetch.{key}.resourceType")
    if resource_type != "Bundle":
        return
    for element in ("entry", "link"):
        items = value.get(element)
        if items is not None and not isinstance(items, list):
            raise BadRequest(f"prefetch.{key}.{element} must be an array.", expression=f"prefetch.{key}.{element}")
    for index, link in enumerate(value.get("link") or ()):
        if not isinstance(link, dict) or not isinstance(link.get("relation"), str):
            field = f"prefetch.{key}.link[{index}]"
            raise BadRequest(f"{field} must be an object with a string relation.", expression=field)


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
        if value is not None and not isinstance(value, dict):
            raise BadRequest(f"prefetch.{template.key} must be a FHIR resource (a JSON object) or null.",
                             expression=f"prefetch.{template.key}")
        if value is not None:
            check_resource_shape(template.key, value)
        if value is None or _is_operation_outcome(value):
            missing[template.key] = render_template(template.query, request)
            continue
        resolved.resources[template.key] = _entries(value)
        if value.get("resourceType") == "Bundle" and has_next_page(value):
            partial[template.key] = value
    if (missing or partial) and fetcher is not None and request.fhirServer:
        try:
            _fetch_into(resolved, fetcher, request, missing, partial)
        except FhirServerRefused as refused:  # no request was made
            _refuse(resolved, refused, templates, missing, partial, service_id)
    else:
        resolved.incomplete.extend(partial)
        for key in partial:
            resolved.reasons[key] = "no fhirServer was given to read them from"
    unavailable = [t for t in templates if t.key in missing and t.key not in resolved.resources]
    required = [t.key for t in unavailable if t.required]
    if required:
        raise PreconditionFailed(_missing_message(required, service_id, request, resolved.reasons), keys=tuple(required))
    resolved.not_checked.extend(t.key for t in unavailable)
    return resolved


def _fetch_into(resolved: ResolvedPrefetch, fetcher: Fetcher, request: HookRequest,
                missing: dict[str, str], partial: dict[str, dict[str, Any]]) -> None:
    outcomes = fetcher.fetch(request, missing, partial)
    for key, outcome in outcomes.items():
        if outcome.reason:
            resolved.reasons[key] = outcome.reason
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


def _refuse(resolved: ResolvedPrefetch, refused: FhirServerRefused, templates: tuple[PrefetchTemplate, ...],
            missing: dict[str, str], partial: dict[str, dict[str, Any]], service_id: str) -> None:
    """fhirServer may not be called: 412 naming the reason and the keys when required data is missing;
    otherwise optional keys go "not checked" and partial Bundles "incomplete", as without a fhirServer."""
    required = [t.key for t in templates if t.required and t.key in missing]
    if required:
        raise PreconditionFailed(
            f"Unable to obtain required prefetch data with key(s) {', '.join(required)} for CDS Hooks service "
            f"{service_id}: {refused.reason}; no request was made.",
            keys=tuple(required),
        ) from None
    for key in [*missing, *partial]:
        resolved.reasons[key] = refused.reason
    resolved.incomplete.extend(partial)


def _missing_message(keys: list[str], service_id: str, request: HookRequest,
                     reasons: Mapping[str, str] | None = None) -> str:
    why = "no fhirServer was given to fetch them from" if not request.fhirServer else "they could not be fetched"
    given = [f"{key}: {reasons[key]}" for key in keys if reasons and key in reasons]
    if given:
        why += f" ({'; '.join(given)})"
    return (
        f"Unable to obtain required prefetch data with key(s) {', '.join(keys)} for CDS Hooks service "
        f"{service_id}: {why}."
    )


def key_outcomes(resolved: ResolvedPrefetch, templates: tuple[PrefetchTemplate, ...]) -> dict[str, str]:
    """Each of the service's prefetch keys that has data or lacks it -> how: "incomplete" (pages that were
    not read, whoever sent the others), "fetched" (by us), "not_checked" or "sent" (by the client)."""
    outcomes: dict[str, str] = {}
    for template in templates:
        key = template.key
        if key in resolved.incomplete:
            outcomes[key] = "incomplete"
        elif key in resolved.fetched:
            outcomes[key] = "fetched"
        elif key in resolved.not_checked:
            outcomes[key] = "not_checked"
        elif key in resolved.resources:
            outcomes[key] = "sent"
    return outcomes


def incomplete_required_error(resolved: ResolvedPrefetch, templates: tuple[PrefetchTemplate, ...],
                              service_id: str) -> PreconditionFailed | None:
    """The 412 to answer instead of an empty card list when a required key is incomplete (pages not read):
    no card on the records present is not an all-clear (STATUS.md rev). None when every required key is whole."""
    keys = [t.key for t in templates if t.required and t.key in resolved.incomplete]
    if not keys:
        return None
    given = [f"{key}: {resolved.reasons[key]}" for key in keys if key in resolved.reasons]
    why = f" ({'; '.join(given)})" if given else ""
    return PreconditionFailed(
        f"Required prefetch data with key(s) {', '.join(keys)} for CDS Hooks service {service_id} is incomplete: "
        f"more pages were not read{why}, and no card fired on the records present; an all-clear is not given "
        "over incomplete data. Send every page, or a fhirServer on this service's allowlist to read them from.",
        keys=tuple(keys),
    )
