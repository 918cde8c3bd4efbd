"""Errors the service answers with, and their OperationOutcome bodies.

    ServiceError                  base: carries an HTTP status and a message safe to show a client
    ├── BadRequest (400)          malformed body or a field missing / of the wrong type
    │   └── InvalidPatient (400)  the Patient resource itself failed validation
    ├── UnsupportedMediaType (415)
    ├── UnknownService (404)
    ├── UnknownCard (404)         feedback names a card uuid this service never issued
    ├── PayloadTooLarge (413)
    └── PreconditionFailed (412)  required data could not be had (names the prefetch keys)
        └── FhirServerRefused     fhirServer may not be called (allowlist, https); no request was made

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


def operation_outcome(
    message: str, *, code: str = "exception", severity: str = "error", expression: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": message}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
