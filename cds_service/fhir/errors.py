"""What can go wrong talking to a FHIR server (or a JWKS URL, or a CDS service), as types.

    FhirError                     base: ``reason`` (safe to show a client: no URL), ``url``, ``status``
    ├── RefusedByPolicy           not sent, or not followed: allowlist, scheme, a next link or a redirect
    │                             elsewhere; ``reasons`` lists every rule that refused it
    ├── AuthFailed                401 / 403: the data cannot be had with these credentials
    ├── NotFound                  404 / 410
    ├── Rejected                  any other 4xx: the server refused the query
    ├── Unavailable               the server could not be read: ``cause`` is one of ``CAUSES``
    │                             (connection refused or reset, DNS, TLS mismatch, timeout, deadline,
    │                             5xx, 429 after the retries)
    ├── TooLarge                  the answer is over the size cap
    └── Invalid                   not JSON, not a FHIR resource, an OperationOutcome, the wrong resourceType

Callers decide on the type and its attributes (``cause``, ``status``), never on the message text.

``url`` is the full URL: it may hold a patient id, so it is for the CLI's own output only and never
logged. ``server`` (scheme, host, port and base path) and ``resource_type`` are what logs may carry.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

CAUSES = ("connection_refused", "connection", "dns", "plain_http", "tls", "timeout", "deadline", "server_error",
          "rate_limited")


class FhirError(Exception):
    metric_label: ClassVar[str] = "invalid_response"  # the fixed label of cramp_fhir_fetch_errors_total

    def __init__(self, reason: str, *, url: str | None = None, status: int | None = None,
                 resource_type: str | None = None, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail  # the server's own words (OperationOutcome diagnostics), for the CLI
        self.retry_after: float | None = None  # seconds the server asked us to wait (Retry-After)
        self.url = url
        self.status = status
        self.resource_type = resource_type

    @property
    def server(self) -> str | None:
        """scheme://host:port of ``url``: no path, no query (what a log line may name)."""
        if not self.url:
            return None
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None

    def __str__(self) -> str:
        return self.reason


class RefusedByPolicy(FhirError):
    metric_label = "redirect"

    def __init__(self, reasons: tuple[str, ...] | str, *, subject: str = "", **kwargs: object) -> None:
        self.reasons = (reasons,) if isinstance(reasons, str) else tuple(reasons)
        text = " and ".join(self.reasons)  # every rule that refuses it, at once
        super().__init__(f"{subject} {text}" if subject else text, **kwargs)  # type: ignore[arg-type]


class AuthFailed(FhirError):
    metric_label = "http_4xx"


class NotFound(FhirError):
    metric_label = "http_4xx"


class Rejected(FhirError):
    metric_label = "http_4xx"


class Unavailable(FhirError):
    def __init__(self, reason: str, *, cause: str, **kwargs: object) -> None:
        if cause not in CAUSES:
            raise ValueError(f"unknown cause {cause!r}")
        super().__init__(reason, **kwargs)  # type: ignore[arg-type]
        self.cause = cause

    @property
    def metric_label(self) -> str:  # type: ignore[override]
        if self.cause in ("timeout", "deadline"):
            return "timeout"
        if self.cause in ("server_error", "rate_limited"):
            return "http_5xx" if (self.status or 500) >= 500 else "http_4xx"
        return "connection"


class TooLarge(FhirError):
    pass


class Invalid(FhirError):
    pass
