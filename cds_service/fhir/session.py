"""The HTTP policy every outbound call of this package follows, and the typed errors it raises
(``fhir/errors.py``). The only modules that import ``requests`` are in ``cds_service/fhir/``.

* one ``requests.Session`` per client (``build_session``): kept-alive connections, no cookies, no
  ~/.netrc credentials, no retries on the adapter (``RETRY_STATUSES`` are retried by the caller, within
  its own deadline or attempt budget), and every call passes ``timeout=`` and ``allow_redirects=False``;
* one status rule (``error_for_status``) and one exception rule (``error_from_exception``): requests'
  exceptions and HTTP statuses become ``FhirError`` subclasses, by type and attribute, never by message;
* one same-server rule for ``next`` links (``same_server_url``): scheme, host, port and whole path
  segments of the server's base, compared after normalising (``ServerBase``).
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Iterator, Mapping, TypedDict
from urllib.parse import unquote, urljoin, urlsplit

import requests
from requests.auth import AuthBase

from cds_service import __version__
from cds_service.fhir.connections import TrackingAdapter
from cds_service.fhir.errors import (AuthFailed, FhirError, Invalid, NotFound, Rejected, RefusedByPolicy,
                                     Unavailable)

FHIR_JSON = "application/fhir+json"
POOL_SIZE = 32  # kept-alive connections per host, shared by concurrent callers
RETRY_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = f"leg-cramp-cds/{__version__} (CDS Hooks service)"

# TLS alert reasons OpenSSL gives when the other end answered in plain HTTP.
_PLAIN_HTTP_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE",
                                     "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"})


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


def same_server_url(link: str, base: ServerBase, current: str) -> str | None:
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


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The URL of a Bundle's ``next`` link, if it has one."""
    links = bundle.get("link") or []
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


# ---------------------------------------------------------------- the session


class _NoNetrc(AuthBase):
    """Stands in for "no auth", so that requests never adds ~/.netrc credentials to a call."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """A session may be shared by every hook request: a cookie set for one user must never go out with another's."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def build_session(pool_size: int = POOL_SIZE, *, token: str | None = None,
                  user_agent: str = USER_AGENT) -> requests.Session:
    """The one session policy (module docstring). ``token``: a bearer token sent with every call."""
    session = requests.Session()
    adapter = TrackingAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(_NoCookies())
    session.auth = _NoNetrc()
    session.headers["User-Agent"] = user_agent
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


# ---------------------------------------------------------------- statuses and exceptions to types


class _Where(TypedDict, total=False):
    """Where an error happened: ``FhirError``'s keyword arguments, one type per key."""

    url: str | None
    status: int | None
    resource_type: str | None


def error_for_status(status: int, url: str | None = None, *, resource_type: str | None = None) -> FhirError | None:
    """The error an HTTP status means, or None for 2xx. 3xx: redirects are never followed."""
    where: _Where = {"url": url, "status": status, "resource_type": resource_type}
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return RefusedByPolicy(f"HTTP {status}: redirects are not followed", **where)
    if status in (401, 403):
        return AuthFailed(f"HTTP {status}", **where)
    if status in (404, 410):
        return NotFound(f"HTTP {status}", **where)
    if status == 429:
        return Unavailable(f"HTTP {status}", cause="rate_limited", **where)
    if status >= 500:
        return Unavailable(f"HTTP {status}", cause="server_error", **where)
    if 400 <= status < 500:
        return Rejected(f"HTTP {status}", **where)
    return Invalid(f"HTTP {status}", **where)


def is_retryable(error: FhirError) -> bool:
    """Worth another attempt: a busy server (``RETRY_STATUSES``), a broken connection or a timeout."""
    if isinstance(error, Unavailable):
        if error.status is not None:
            return error.status in RETRY_STATUSES
        return error.cause in ("connection", "connection_refused", "dns", "timeout")
    return False


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: ``__cause__``, ``__context__``, urllib3's ``reason`` and exception args."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        stack.extend(item for item in wrapped if isinstance(item, BaseException))


def error_from_exception(exc: requests.RequestException, url: str | None = None, *,
                         resource_type: str | None = None) -> FhirError:
    """The typed error for an exception requests raised, from the exception types it wraps."""
    where: _Where = {"url": url, "resource_type": resource_type}
    causes = list(_causes(exc))
    if isinstance(exc, requests.Timeout) or any(isinstance(c, (socket.timeout, TimeoutError)) for c in causes):
        return Unavailable("timed out", cause="timeout", **where)
    tls = next((c for c in causes if isinstance(c, ssl.SSLError) and getattr(c, "reason", None)), None)
    if tls is not None or isinstance(exc, requests.exceptions.SSLError):
        reason = getattr(tls, "reason", None)
        if reason in _PLAIN_HTTP_TLS_REASONS:
            return Unavailable("speaks plain HTTP, not TLS", cause="plain_http", **where)
        return Unavailable(f"TLS handshake failed ({reason or 'SSLError'})", cause="tls", **where)
    if any(isinstance(c, socket.gaierror) for c in causes):
        return Unavailable("the host name does not resolve", cause="dns", **where)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return Unavailable("connection refused", cause="connection_refused", **where)
    if isinstance(exc, requests.ConnectionError) or any(isinstance(c, ConnectionError) for c in causes):
        return Unavailable("connection failed", cause="connection", **where)
    return Invalid(f"request failed ({type(exc).__name__})", **where)


def retry_after_seconds(value: str | None) -> float | None:
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
