"""Fetching missing prefetch data from the CDS client's FHIR server (CDS Hooks 2.0 §Prefetch: "retrieve
missing data from fhirServer"; ../shared/spec/STATUS.md; docs/fetching.md).

``FhirFetcher`` implements ``prefetch.Fetcher``. It is the only place the service calls a FHIR server and
the only module that imports ``requests`` for FHIR. For one hook request it:

1. checks ``fhirServer`` before any network call: https only (plain http only to a loopback host, and only
   with ``fhir_allow_http_loopback``), and under an entry of ``fhir_server_allowlist``, compared as
   normalised scheme, host, port and whole path segments (``https://ehr.example.org.evil.com`` is not
   under ``https://ehr.example.org``). A refused server raises ``FhirServerRefused`` (412) and nothing is
   sent;
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
status, "timed out", never a URL). Logs name the key and the resource type with status, pages, attempts and
duration: never the URL (it holds the patient id) and never the token.
"""

from __future__ import annotations

import functools
import http.cookiejar
import ipaddress
import json
import logging
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from cds_service import __version__
from cds_service.engine.prefetch import FetchOutcome, has_next_page
from cds_service.errors import FhirServerRefused
from cds_service.fhir.connections import InFlight, TrackingAdapter
from cds_service.hooks.request import HookRequest
from cds_service.settings import Settings, SettingsError
from cds_service.web import metrics

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
MAX_PARALLEL = 8  # keys fetched at once for one hook request (the service asks for 5)
POOL_SIZE = 32  # kept-alive connections per host, shared by concurrent hook requests
PER_CALL_TIMEOUT = 10.0  # seconds; the deadline usually cuts a call shorter
PAGE_CAP = 20
MAX_ATTEMPTS = 4
BACKOFF_BASE = 0.05  # seconds: 0.05, 0.1, 0.2 (+ up to as much again of jitter)
MIN_CALL_SECONDS = 0.01  # no call is started with less time than this left
ABANDON_GRACE = 0.05  # the caller waits this long past the deadline for calls finishing their last read
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})

REFUSED_NOT_HTTPS = "fhirServer must be https"
REFUSED_NOT_LOOPBACK = (
    "fhirServer must be https (plain http is allowed only to a loopback host, with CRAMP_FHIR_ALLOW_HTTP_LOOPBACK)"
)
REFUSED_NOT_ALLOWED = "fhirServer is not on this service's allowlist"
REFUSED_MALFORMED = "fhirServer is not a usable absolute URL"

# A relative read (``Type/id``) or type search (``Type?...``), as the prefetch templates render them.
_QUERY = re.compile(r"^(?P<type>[A-Z][A-Za-z]{1,63})(?:/(?P<id>[A-Za-z0-9\-.]{1,64}))?(?:\?[^#\\\s]*)?$")


# ---------------------------------------------------------------- server addresses


@dataclass(frozen=True)
class ServerBase:
    """A FHIR base URL, normalised: lower-case scheme and host, explicit port, decoded path segments."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"https": 443, "http": 80}[self.scheme]
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    def is_under(self, prefix: "ServerBase") -> bool:
        """Same scheme, host and port, and ``prefix``'s path segments are a prefix of this one's."""
        return (self.scheme, self.host, self.port) == (prefix.scheme, prefix.host, prefix.port) and (
            self.segments[: len(prefix.segments)] == prefix.segments
        )

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_server_url(url: str, *, allow_query: bool = False) -> tuple[ServerBase, str]:
    """Normalise an absolute http(s) URL; return it and its re-built ``path[?query]``.

    Raises ``ValueError`` naming the problem. Rejects credentials, backslashes, whitespace, fragments,
    dot segments and encoded slashes, so that what is checked is exactly what is requested.
    """
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        raise ValueError("contains whitespace, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError("not an http(s) URL")
    if "@" in parts.netloc:
        raise ValueError("carries credentials")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("has no host")
    port = parts.port or (443 if scheme == "https" else 80)  # .port raises ValueError when malformed
    if parts.fragment or (parts.query and not allow_query):
        raise ValueError("has a query or fragment")
    raw_segments = [s for s in parts.path.split("/") if s]
    segments = tuple(unquote(s) for s in raw_segments)
    if any(s in (".", "..") or "/" in s for s in segments):
        raise ValueError("has dot segments or encoded slashes")
    path = "/" + "/".join(raw_segments) if raw_segments else ""
    target = path + (f"?{parts.query}" if parts.query else "")
    return ServerBase(scheme, host, port, segments), target


def bearer_token(request: HookRequest) -> str | None:
    """The access token to send, or None: no ``fhirAuthorization``, or it has expired (``expires_in`` <= 0)."""
    authorization = request.fhirAuthorization
    if authorization is None:
        return None
    if authorization.expires_in is not None and authorization.expires_in <= 0:
        return None
    return authorization.access_token


# ---------------------------------------------------------------- the fetcher


class _NoNetrc(AuthBase):
    """Stands in for "no auth", so that requests never adds ~/.netrc credentials to a FHIR call."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """The session is shared by every hook request: a cookie set for one user must never go out with another's call."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


@dataclass
class _Trace:
    """What the log line for one key carries: no URL, no token."""

    status: int | None = None
    pages: int = 0
    attempts: int = 0


class _Failure(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FhirFetcher:
    """Fetches prefetch queries from a request's ``fhirServer`` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
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
        except FhirServerRefused as refused:
            log.warning("fhirServer refused; no request made", extra={"reason": refused.reason, "keys": keys})
            raise
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
        """The normalised ``fhirServer``, or ``FhirServerRefused`` naming why it may not be called."""
        try:
            base, _ = parse_server_url(url)
        except ValueError:
            scheme = url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""
            is_other_scheme = scheme.isalpha() and scheme not in ("http", "https")
            raise FhirServerRefused(REFUSED_NOT_HTTPS if is_other_scheme else REFUSED_MALFORMED) from None
        if base.scheme == "http" and not (self._settings.fhir_allow_http_loopback and base.is_loopback()):
            raise FhirServerRefused(REFUSED_NOT_LOOPBACK)
        if not any(base.is_under(entry) for entry in self._allowlist):
            raise FhirServerRefused(REFUSED_NOT_ALLOWED)
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
        metrics.observe_fetch(resource_type or key, seconds, error=None if outcome.resources is not None
                              else _error_kind(trace.status, outcome.reason))
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
        url = _same_server_url(_next_link(bundle) or "", base, base.origin)
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
            except _Failure as failure:
                if trace.pages == 0:
                    return FetchOutcome(None, complete=False, reason=failure.reason)
                return FetchOutcome(resources, complete=False, reason=f"page {trace.pages + 1}: {failure.reason}")
            trace.pages += 1
            if body["resourceType"] != expected:
                return FetchOutcome(None, complete=False, reason=f"expected a {expected}, got a {body['resourceType']}")
            if expected != "Bundle":
                return FetchOutcome([body])
            resources.extend(_search_resources(body))
            link = _next_link(body)
            if link is None:
                return FetchOutcome(resources)
            next_url = _same_server_url(link, base, next_url)
            if next_url is None:
                return FetchOutcome(resources, complete=False, reason="a next link points outside fhirServer; not followed")
        return FetchOutcome(resources)

    # ------------------------------------------------------------ one GET, with retries

    def _get(self, url: str, token: str | None, deadline: float, trace: _Trace) -> dict[str, Any]:
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        attempt = 0
        reason = ""
        while True:
            remaining = deadline - self._clock()
            if remaining < MIN_CALL_SECONDS:
                raise _Failure(f"{reason}; the deadline passed before a retry" if reason else "deadline passed")
            attempt += 1
            trace.attempts += 1
            retry_after: float | None = None
            try:
                response = self._session.get(
                    url,
                    headers=headers,
                    timeout=min(PER_CALL_TIMEOUT, remaining),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.Timeout:
                reason = "timed out"
            except requests.ConnectionError:
                reason = "connection failed"
            except requests.RequestException as exc:
                raise _Failure(f"request failed ({type(exc).__name__})") from None
            else:
                with response:
                    trace.status = response.status_code
                    status = response.status_code
                    if 200 <= status < 300:
                        return self._read_resource(response, deadline)
                    if 300 <= status < 400:
                        raise _Failure(f"HTTP {status}: redirects are not followed")
                    if status not in RETRY_STATUSES:
                        raise _Failure(f"HTTP {status}")
                    reason = f"HTTP {status}"
                    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            if attempt >= MAX_ATTEMPTS:
                raise _Failure(f"{reason} after {attempt} attempts")
            if retry_after is not None:
                delay = retry_after
            else:
                delay = BACKOFF_BASE * (2 ** (attempt - 1))
                delay += random.uniform(0, delay)
            if self._clock() + delay + MIN_CALL_SECONDS >= deadline:
                raise _Failure(f"{reason}; no time left to retry before the deadline")
            self._sleep(delay)

    def _read_resource(self, response: requests.Response, deadline: float) -> dict[str, Any]:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            raise _Failure("the response is too large")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise _Failure("the response is too large")
                if self._clock() > deadline:
                    raise _Failure("deadline passed while reading the response")
                chunks.append(chunk)
        except requests.RequestException:
            raise _Failure("the connection failed while reading the response") from None
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            raise _Failure("the response is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise _Failure("the response is not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise _Failure("the server answered with an OperationOutcome")
        return body


# ---------------------------------------------------------------- helpers


def build_session(pool_size: int = POOL_SIZE) -> requests.Session:
    """One session per fetcher: kept-alive connections sized for the parallelism, no retries on the adapter
    (they are done here, within the deadline), no cookies, no ~/.netrc credentials."""
    session = requests.Session()
    adapter = TrackingAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(_NoCookies())
    session.auth = _NoNetrc()  # redirects: every call passes allow_redirects=False
    session.headers["User-Agent"] = f"leg-cramp-cds/{__version__} (CDS Hooks service)"
    return session


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


def _same_server_url(link: str, base: ServerBase, current: str) -> str | None:
    """``link`` (resolved against ``current``) rebuilt from its parsed parts, or None if it leaves ``base``."""
    if not link:
        return None
    try:
        target, path_query = parse_server_url(urljoin(current, link), allow_query=True)
    except ValueError:
        return None
    if not target.is_under(base):
        return None
    return target.origin + path_query


def _next_link(bundle: dict[str, Any]) -> str | None:
    if not has_next_page(bundle):
        return None
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


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


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _error_kind(status: int | None, reason: str | None) -> str:
    """A fixed, low-cardinality label for the fetch-error metric (never the free-text reason)."""
    text = (reason or "").lower()
    if "deadline" in text or "timed out" in text:
        return "timeout"
    if "connection" in text:
        return "connection"
    if status is not None and status >= 500:
        return "http_5xx"
    if status is not None and status >= 400:
        return "http_4xx"
    if status is not None and 300 <= status < 400:
        return "redirect"
    return "invalid_response"
