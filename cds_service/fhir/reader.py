"""A blocking FHIR client for the tools (the population crawler, the integration CLI) and one-shot JSON
reads (authentication's JWKS fetch). The hook path's deadline-bound fetcher is ``fhir/client.py``; both
follow ``fhir/session.py``'s policy and raise ``fhir/errors.py``'s types.

    reader = FhirReader("https://ehr.example.org/fhir", token=None)
    reader.read("Patient/123")                 # one resource (retries RETRY_STATUSES, connection errors)
    reader.search("Condition?patient=123")     # every page's resources, next links on this server only
    reader.write("PUT", "Patient/123", body)   # a write; FhirError when it is not 200/201

    read_json(session, url, timeout=5, max_bytes=512 * 1024)   # one GET, no retry: JSON or FhirError
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Callable, Iterator, Mapping

import requests

from cds_service.fhir.errors import FhirError, Invalid, RefusedByPolicy, TooLarge
from cds_service.fhir.session import (FHIR_JSON, build_session, error_for_status, error_from_exception,
                                      is_retryable, next_link, parse_server_url, retry_after_seconds,
                                      same_server_url)

TIMEOUT_SECONDS = 30.0
MAX_ATTEMPTS = 4
BACKOFF_BASE = 0.3  # seconds: 0.3, 0.6, 1.2 (+ up to as much again of jitter)
MAX_RETRY_AFTER = 30.0
PAGE_CAP = 100
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


def read_body(response: requests.Response, *, max_bytes: int, url: str | None = None,
              on_chunk: Callable[[], None] | None = None) -> bytes:
    """The response body, streamed, at most ``max_bytes``; ``on_chunk`` may raise (a deadline)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge("the response is too large", url=url, status=response.status_code)
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=65536):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge("the response is too large", url=url, status=response.status_code)
            if on_chunk is not None:
                on_chunk()
            chunks.append(chunk)
    except requests.RequestException as exc:
        error = error_from_exception(exc, url)
        error.reason = "the connection failed while reading the response"
        raise error from None
    return b"".join(chunks)


def parse_json(body: bytes, *, url: str | None = None, status: int | None = None) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise Invalid("the response is not JSON", url=url, status=status) from None


def outcome_diagnostics(body: Any) -> str | None:
    """An OperationOutcome's issues as one line (``error invalid: bad code [where]``), else None."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None
    lines = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            where = ", ".join(str(e) for e in issue.get("expression") or [])
            lines.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: {issue.get('diagnostics', '')}"
                         + (f" [{where}]" if where else ""))
    return "; ".join(lines) or None


def read_json(session: requests.Session, url: str, *, timeout: float, max_bytes: int,
              accept: str = "application/json") -> Any:
    """One GET (no retry, no redirect) answered 200 with JSON, else the typed error."""
    try:
        response = session.get(url, timeout=timeout, allow_redirects=False, stream=True,
                               headers={"Accept": accept})
    except requests.RequestException as exc:
        raise error_from_exception(exc, url) from None
    with response:
        if response.status_code != 200:
            raise error_for_status(response.status_code, url) or Invalid(f"HTTP {response.status_code}", url=url)
        return parse_json(read_body(response, max_bytes=max_bytes, url=url), url=url, status=200)


class FhirReader:
    """Reads (and, for fixtures, writes) one FHIR server: see the module docstring."""

    def __init__(self, base_url: str, *, token: str | None = None, session: requests.Session | None = None,
                 timeout: float = TIMEOUT_SECONDS, attempts: int = MAX_ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep, user_agent: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        try:
            self.base, _ = parse_server_url(self.base_url)
        except ValueError as exc:
            raise RefusedByPolicy(f"not a usable FHIR base URL: it {exc}", url=base_url) from None
        extra = {"user_agent": user_agent} if user_agent else {}
        self.session = session or build_session(pool_size=4, token=token, **extra)
        if session is not None and token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.attempts = attempts
        self._sleep = sleep

    def url_for(self, query: str) -> str:
        return f"{self.base_url}/{query.lstrip('/')}"

    # ------------------------------------------------------------ reads

    def read(self, query: str, *, expected: str | None = None) -> dict[str, Any]:
        """GET ``query`` (relative to the base, or an absolute URL on this server) as a FHIR resource."""
        url = query if query.startswith(("http://", "https://")) else self.url_for(query)
        resource_type = query.split("?", 1)[0].split("/", 1)[0] or None
        body = self._with_retries(lambda: self._get_once(url, resource_type))
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise Invalid("the response is not a FHIR resource", url=url, status=200, resource_type=resource_type)
        if expected is not None and body["resourceType"] != expected:
            raise Invalid(f"expected a {expected}, got a {body['resourceType']}", url=url, status=200,
                          resource_type=resource_type)
        return body

    def pages(self, query: str, *, page_cap: int = PAGE_CAP) -> Iterator[dict[str, Any]]:
        """A search's Bundles, page by page; ``next`` links followed on this server only."""
        url: str | None = self.url_for(query)
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= page_cap:
                raise Invalid(f"more than {page_cap} pages, or the next links loop", url=url)
            seen.add(url)
            bundle = self.read(url, expected="Bundle")
            yield bundle
            link = next_link(bundle)
            if link is None:
                return
            url = same_server_url(link, self.base, url)
            if url is None:
                raise RefusedByPolicy(f"a next link leaves {self.base_url}; not followed", url=link)

    def search(self, query: str) -> list[dict[str, Any]]:
        """Every resource of every page of a search."""
        return [entry["resource"] for page in self.pages(query) for entry in page.get("entry") or []
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)]

    # ------------------------------------------------------------ writes

    def write(self, method: str, query: str, body: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        """PUT or POST ``body`` (FHIR JSON); the answer's JSON (or None), else the typed error."""
        url = self.url_for(query) if query else self.base_url
        try:
            response = self.session.request(method, url, data=json.dumps(body), allow_redirects=False,
                                            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
                                            timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise error_from_exception(exc, url) from None
        answer = _json_or_none(response)
        if response.status_code not in (200, 201):
            error = error_for_status(response.status_code, url) or Invalid(f"HTTP {response.status_code}", url=url)
            error.detail = outcome_diagnostics(answer)
            raise error
        return answer

    # ------------------------------------------------------------ one GET

    def _get_once(self, url: str, resource_type: str | None) -> Any:
        try:
            response = self.session.get(url, timeout=self.timeout, allow_redirects=False, stream=True,
                                        headers={"Accept": FHIR_JSON})
        except requests.RequestException as exc:
            raise error_from_exception(exc, url, resource_type=resource_type) from None
        with response:
            error = error_for_status(response.status_code, url, resource_type=resource_type)
            if error is not None:
                body = _json_or_none(response)
                error.detail = outcome_diagnostics(body)
                error.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                raise error
            return parse_json(read_body(response, max_bytes=MAX_RESPONSE_BYTES, url=url), url=url, status=200)

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except FhirError as error:
                if attempt >= self.attempts or not is_retryable(error):
                    raise
                delay = error.retry_after
                if delay is None:
                    delay = BACKOFF_BASE * (2 ** (attempt - 1))
                    delay += random.uniform(0, delay)
                self._sleep(min(delay, MAX_RETRY_AFTER))
        raise AssertionError("unreachable")  # pragma: no cover


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
