"""Fetching missing prefetch data from the CDS client's FHIR server (CDS Hooks 2.0 §Prefetch: "retrieve
missing data from fhirServer"; ../shared/spec/STATUS.md; docs/fetching.md).

``FhirFetcher`` implements ``prefetch.Fetcher``. It is the only place the service calls a FHIR server and
the only module that calls a FHIR server within a hook request's deadline; the HTTP policy (session, statuses
and exceptions to types, the next-link rule) is ``fhir/session.py``'s. For one hook request it:

1. checks ``fhirServer`` before any network call: https only (plain http only to a loopback host, and only
   with ``fhir_allow_http_loopback``), and under an entry of ``fhir_server_allowlist``, compared as
   normalised scheme, host, port and whole path segments (``https://ehr.example.org.evil.com`` is not
   under ``https://ehr.example.org``). A refused server raises ``FhirServerRefused`` (412) naming every
   rule that refuses it (``RefusedByPolicy.reasons``), and nothing is sent;
2. fetches every key in parallel, ``GET {fhirServer}/{query}`` with ``Accept: application/fhir+json`` and
   ``Authorization: Bearer <access_token>`` only when ``fhirAuthorization`` carries a token that has not
   expired (``expires_in`` <= 0 means expired);
3. spends ONE deadline (``fhir_deadline_seconds``) for the whole request: each call's timeout is the time
   left (at most ``PER_CALL_TIMEOUT``), no call starts after the deadline, and keys still running at the
   deadline are abandoned as "deadline passed", and the connections they are still using are shut down
   (``fhir_connections.InFlight``) so that their threads end at once instead of reading on from a slow server;
4. retries 429/502/503/504, connection errors and timeouts with exponential backoff and jitter, honouring
   ``Retry-After`` when it fits before the deadline; any other status is final for that key (401/403/404
   mean the data cannot be had);
5. follows a search Bundle's ``next`` links only on the same server (scheme, host, port, path prefix of
   ``fhirServer``) and up to ``PAGE_CAP`` pages, else marks the key incomplete; never follows redirects.

Each key gets a ``FetchOutcome``: its resources, or ``None`` with a reason that is safe to show a client (a
status, "timed out", never a URL): the ``reason`` of the typed ``FhirError`` (fhir/errors.py) that stopped
it, whose ``metric_label`` labels the fetch-error metric. Logs name the key and the resource type with status, pages, attempts and
duration: never the URL (it holds the patient id) and never the token.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import quote

import requests

from cds_service.errors import FhirServerRefused
from cds_service.fhir.connections import InFlight
from cds_service.fhir.errors import FhirError, Invalid, RefusedByPolicy, Unavailable
from cds_service.fhir.outcome import FetchOutcome
from cds_service.fhir.reader import parse_json, read_body
from cds_service.fhir.session import (FHIR_JSON, RETRY_STATUSES, ServerBase, build_session,
                                      error_for_status, error_from_exception, is_retryable, next_link,
                                      parse_server_url, retry_after_seconds, same_server_url)
from cds_service.hooks.request import HookRequest
from cds_service.settings import Settings, SettingsError

log = logging.getLogger(__name__)

__all__ = ["FhirFetcher", "build_session", "ServerBase", "parse_server_url", "bearer_token", "RETRY_STATUSES"]

MAX_PARALLEL = 8  # keys fetched at once for one hook request (the service asks for 5)
PER_CALL_TIMEOUT = 10.0  # seconds; the deadline usually cuts a call shorter
PAGE_CAP = 20
MAX_ATTEMPTS = 4
BACKOFF_BASE = 0.05  # seconds: 0.05, 0.1, 0.2 (+ up to as much again of jitter)
MIN_CALL_SECONDS = 0.01  # no call is started with less time than this left
ABANDON_GRACE = 0.05  # the caller waits this long past the deadline for calls finishing their last read
MAX_RESPONSE_BYTES = 64 * 1024 * 1024

REFUSED_NOT_HTTPS = "must be https"
REFUSED_NOT_LOOPBACK = (
    "must be https (plain http is allowed only to a loopback host, with CRAMP_FHIR_ALLOW_HTTP_LOOPBACK)"
)
REFUSED_NOT_ALLOWED = "is not on this service's allowlist"
REFUSED_MALFORMED = "is not a usable absolute URL"

# A relative read (``Type/id``) or type search (``Type?...``), as the prefetch templates render them.
_QUERY = re.compile(r"^(?P<type>[A-Z][A-Za-z]{1,63})(?:/(?P<id>[A-Za-z0-9\-.]{1,64}))?(?:\?[^#\\\s]*)?$")


def bearer_token(request: HookRequest) -> str | None:
    """The access token to send, or None: no ``fhirAuthorization``, or it has expired (``expires_in`` <= 0)."""
    authorization = request.fhirAuthorization
    if authorization is None:
        return None
    if authorization.expires_in is not None and authorization.expires_in <= 0:
        return None
    return authorization.access_token


# ---------------------------------------------------------------- the fetcher


class FetchObserver(Protocol):
    """Told of each key's read (web/metrics.py implements it): a resource type, never a URL."""

    def fhir_read_finished(self, resource: str, seconds: float, error: str | None = None) -> None:
        """``error``: None, or a failed read's fixed label (``FhirError.metric_label``)."""


class _NoObserver:
    def fhir_read_finished(self, resource: str, seconds: float, error: str | None = None) -> None:
        pass


@dataclass
class _Trace:
    """What the log line for one key carries: no URL, no token."""

    status: int | None = None
    pages: int = 0
    attempts: int = 0
    error: FhirError | None = None  # the last failure, for the metric's label


class FhirFetcher:
    """Fetches prefetch queries from a request's ``fhirServer`` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        observer: FetchObserver | None = None,
    ) -> None:
        self._settings = settings
        self.observer: FetchObserver = observer or _NoObserver()
        self._allowlist = tuple(_parse_allowlist_entry(entry) for entry in settings.fhir_server_allowlist)
        self._session = session or build_session()
        self._clock = clock
        self._sleep = sleep
        if settings.fhir_allow_http_loopback and not settings.development_mode:
            log.warning("CRAMP_FHIR_ALLOW_HTTP_LOOPBACK is on outside development mode: plain-http FHIR "
                        "servers on loopback will be called")

    # ------------------------------------------------------------ the Fetcher protocol

    def fetch(
        self, request: HookRequest, queries: Mapping[str, str], partial: Mapping[str, dict[str, Any]]
    ) -> dict[str, FetchOutcome]:
        keys = [*queries, *(k for k in partial if k not in queries)]
        if not keys:
            return {}
        try:
            base = self.check_server(request.fhirServer or "")
        except RefusedByPolicy as refused:
            log.warning("fhirServer refused; no request made", extra={"reason": refused.reason, "keys": keys})
            raise FhirServerRefused(refused.reason) from None
        token = bearer_token(request)
        deadline = self._clock() + self._settings.fhir_deadline_seconds
        inflight = InFlight()
        executor = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(keys)), thread_name_prefix="fhir-fetch")
        try:
            futures = {
                executor.submit(inflight.run, functools.partial(
                    self._fetch_key, base, token, deadline, key, queries.get(key), partial.get(key))): key
                for key in keys
            }
            done, _ = wait(futures, timeout=max(0.0, deadline - self._clock()) + ABANDON_GRACE)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)  # never wait for a call past the deadline
            closed = inflight.abandon()  # what is still running ends now, not when the server finishes
        outcomes: dict[str, FetchOutcome] = {}
        for future, key in futures.items():
            if future in done:
                outcomes[key] = future.result()
            else:
                outcomes[key] = FetchOutcome(None, complete=False, reason="deadline passed")
                log.info("fhir fetch abandoned at the deadline", extra={"key": key, "connections_closed": closed})
        return outcomes

    def check_server(self, url: str) -> ServerBase:
        """The normalised ``fhirServer``, or ``RefusedByPolicy`` naming every rule that refuses it."""
        try:
            base, _ = parse_server_url(url)
        except ValueError:
            scheme = url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""
            is_other_scheme = scheme.isalpha() and scheme not in ("http", "https")
            raise RefusedByPolicy(REFUSED_NOT_HTTPS if is_other_scheme else REFUSED_MALFORMED,
                                  subject="fhirServer") from None
        reasons = []
        if base.scheme == "http" and not (self._settings.fhir_allow_http_loopback and base.is_loopback()):
            reasons.append(REFUSED_NOT_LOOPBACK)
        if not any(base.is_under(entry) for entry in self._allowlist):
            reasons.append(REFUSED_NOT_ALLOWED)
        if reasons:  # both at once: fixing one must not reveal the other only on the next try
            raise RefusedByPolicy(tuple(reasons), subject="fhirServer")
        return base

    # ------------------------------------------------------------ one key

    def _fetch_key(
        self,
        base: ServerBase,
        token: str | None,
        deadline: float,
        key: str,
        query: str | None,
        partial: dict[str, Any] | None,
    ) -> FetchOutcome:
        started = time.perf_counter()
        trace = _Trace()
        resource_type = "?"
        try:
            if query is not None:
                match = _QUERY.match(query)
                if match is None:
                    outcome = FetchOutcome(None, reason="the query is not a relative FHIR read or search")
                else:
                    resource_type = match.group("type")
                    url = _join(base, query)
                    expected = resource_type if match.group("id") else "Bundle"
                    outcome = self._collect(base, token, deadline, url, expected, trace)
            else:
                assert partial is not None
                resource_type = _first_entry_type(partial)
                outcome = self._fetch_more(base, token, deadline, partial, trace)
        except Exception as exc:  # a bug here must not become a 5xx, nor leak a URL into the logs
            log.error("fhir fetch failed unexpectedly", extra={"key": key, "error": type(exc).__name__})
            outcome = FetchOutcome(None, complete=False, reason="internal error while fetching")
        seconds = time.perf_counter() - started
        label = trace.error.metric_label if trace.error is not None else "invalid_response"
        self.observer.fhir_read_finished(resource_type or key, seconds,
                                         error=None if outcome.resources is not None else label)
        log.info(
            "fhir fetch",
            extra={
                "key": key,
                "resource_type": resource_type,
                "status": trace.status,
                "pages": trace.pages,
                "attempts": trace.attempts,
                "duration_ms": round(seconds * 1000, 1),
                "resources": None if outcome.resources is None else len(outcome.resources),
                "complete": outcome.complete,
                "reason": outcome.reason,
            },
        )
        return outcome

    def _fetch_more(
        self, base: ServerBase, token: str | None, deadline: float, bundle: dict[str, Any], trace: _Trace
    ) -> FetchOutcome:
        """The pages after a prefetch Bundle the client sent: only the additional resources."""
        url = same_server_url(next_link(bundle) or "", base, base.origin)
        if url is None:
            return FetchOutcome([], complete=False, reason="the next link points outside fhirServer; not followed")
        return self._collect(base, token, deadline, url, "Bundle", trace)

    def _collect(
        self, base: ServerBase, token: str | None, deadline: float, url: str, expected: str, trace: _Trace
    ) -> FetchOutcome:
        resources: list[dict[str, Any]] = []
        seen: set[str] = set()
        next_url: str | None = url
        while next_url is not None:
            if trace.pages >= PAGE_CAP:
                return FetchOutcome(resources, complete=False, reason=f"more than {PAGE_CAP} pages")
            if next_url in seen:
                return FetchOutcome(resources, complete=False, reason="the next links loop")
            seen.add(next_url)
            try:
                body = self._get(next_url, token, deadline, trace)
            except FhirError as failure:
                trace.error = failure
                if trace.pages == 0:
                    return FetchOutcome(None, complete=False, reason=failure.reason)
                return FetchOutcome(resources, complete=False, reason=f"page {trace.pages + 1}: {failure.reason}")
            trace.pages += 1
            if body["resourceType"] != expected:
                return FetchOutcome(None, complete=False, reason=f"expected a {expected}, got a {body['resourceType']}")
            if expected != "Bundle":
                return FetchOutcome([body])
            resources.extend(_search_resources(body))
            link = next_link(body)
            if link is None:
                return FetchOutcome(resources)
            next_url = same_server_url(link, base, next_url)
            if next_url is None:
                return FetchOutcome(resources, complete=False, reason="a next link points outside fhirServer; not followed")
        return FetchOutcome(resources)

    # ------------------------------------------------------------ one GET, with retries

    def _get(self, url: str, token: str | None, deadline: float, trace: _Trace) -> dict[str, Any]:
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        attempt = 0
        last: FhirError | None = None
        while True:
            remaining = deadline - self._clock()
            if remaining < MIN_CALL_SECONDS:
                if last is None:
                    raise Unavailable("deadline passed", cause="deadline", url=url)
                raise _retried(last, f"{last.reason}; the deadline passed before a retry")
            attempt += 1
            trace.attempts += 1
            try:
                response = self._session.get(
                    url,
                    headers=headers,
                    timeout=min(PER_CALL_TIMEOUT, remaining),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                last = error_from_exception(exc, url)
                if isinstance(last, Unavailable) and last.cause != "timeout" and is_retryable(last):
                    last.reason = "connection failed"  # the key's reason: what the client is told
            else:
                # No URL, not even the host: a FHIR read or search URL holds the patient id (docs/fetching.md).
                log.debug("fhir call", extra={"status": response.status_code, "attempt": attempt})
                with response:
                    trace.status = response.status_code
                    last = error_for_status(response.status_code, url)
                    if last is None:
                        return self._read_resource(response, url, deadline)
                    last.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if not is_retryable(last):
                raise last
            if attempt >= MAX_ATTEMPTS:
                raise _retried(last, f"{last.reason} after {attempt} attempts")
            if last.retry_after is not None:
                delay = last.retry_after
            else:
                delay = BACKOFF_BASE * (2 ** (attempt - 1))
                delay += random.uniform(0, delay)
            if self._clock() + delay + MIN_CALL_SECONDS >= deadline:
                raise _retried(last, f"{last.reason}; no time left to retry before the deadline")
            self._sleep(delay)

    def _read_resource(self, response: requests.Response, url: str, deadline: float) -> dict[str, Any]:
        def check_deadline() -> None:
            if self._clock() > deadline:
                raise Unavailable("deadline passed while reading the response", cause="deadline", url=url)

        body = parse_json(read_body(response, max_bytes=MAX_RESPONSE_BYTES, url=url, on_chunk=check_deadline),
                          url=url, status=response.status_code)
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise Invalid("the response is not a FHIR resource", url=url, status=response.status_code)
        if body["resourceType"] == "OperationOutcome":
            raise Invalid("the server answered with an OperationOutcome", url=url, status=response.status_code)
        return body


def _retried(error: FhirError, reason: str) -> FhirError:
    """``error`` with the reason the client is told after retrying it (its type and cause unchanged)."""
    error.reason = reason
    error.args = (reason,)
    return error


# ---------------------------------------------------------------- helpers


def _parse_allowlist_entry(entry: str) -> ServerBase:
    try:
        base, _ = parse_server_url(entry)
    except ValueError as exc:
        raise SettingsError(f"CRAMP_FHIR_ALLOWLIST: {entry!r} {exc}") from None
    return base


def _join(base: ServerBase, query: str) -> str:
    path = "".join(f"/{_quote_segment(s)}" for s in base.segments)
    return f"{base.origin}{path}/{query}"


def _quote_segment(segment: str) -> str:
    return quote(segment, safe="!$&'()*+,;=:@-._~")


def _search_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """A search Bundle's resources: matches and includes, not ``search.mode == "outcome"`` entries."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        return []
    resources = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        resources.append(entry["resource"])
    return resources


def _first_entry_type(bundle: dict[str, Any]) -> str:
    resources = _search_resources(bundle)
    kind = resources[0].get("resourceType") if resources else None
    return kind if isinstance(kind, str) else "?"
