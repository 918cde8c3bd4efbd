"""Errors the service answers with, and their OperationOutcome bodies.

    ServiceError                  base: carries an HTTP status and a message safe to show a client
    ├── BadRequest (400)          malformed body or a field missing / of the wrong type
    │   └── InvalidPatient (400)  the Patient resource itself failed validation
    ├── UnsupportedMediaType (415)
    ├── UnknownService (404)
    ├── UnknownCard (404)         feedback names a card uuid this service never issued
    ├── PayloadTooLarge (413)
    ├── PreconditionFailed (412)  required data could not be had (names the prefetch keys)
    │   └── FhirServerRefused     fhirServer may not be called (allowlist, https); no request was made
    └── ServiceUnavailable (503)  our own infrastructure failed (the database); carries ``Retry-After``

Messages name the field or key that is wrong and never carry PHI, tokens or stack traces.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status: int = 500
    code: str = "exception"  # OperationOutcome issue.code (FHIR IssueType)

    def __init__(self, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression

    def to_operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.message, code=self.code, expression=self.expression)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the OperationOutcome."""
        return {}


class BadRequest(ServiceError):
    status = 400
    code = "invalid"


class InvalidPatient(BadRequest):
    pass


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "not-supported"


class UnknownService(ServiceError):
    status = 404
    code = "not-found"


class UnknownCard(ServiceError):
    status = 404
    code = "not-found"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "too-costly"


class PreconditionFailed(ServiceError):
    status = 412
    code = "incomplete"

    def __init__(self, message: str, *, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class FhirServerRefused(PreconditionFailed):
    """The request's fhirServer may not be called: ``reason`` says why (not on the allowlist, not https)."""

    def __init__(self, reason: str, *, keys: tuple[str, ...] = ()) -> None:
        super().__init__(f"{reason}; no request was made.", keys=keys)
        self.reason = reason


class ServiceUnavailable(ServiceError):
    """A fault of our own infrastructure: the client may retry after ``retry_after`` seconds."""

    status = 503
    code = "transient"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def operation_outcome(
    message: str, *, code: str = "exception", severity: str = "error", expression: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": message}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
