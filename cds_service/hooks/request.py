"""The CDS Hooks request as a typed model (CDS Hooks 2.0 §Calling a CDS Service).

Parsing turns any malformed body into ``BadRequest`` naming the field; nothing else in the service
sees raw request JSON except prefetch resolution, which reads the ``prefetch`` values. Every string the
service stores or logs is bounded (STATUS.md): ``hookInstance`` 128 characters, each context identifier or
reference 256, ``fhirServer`` 2,048.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cds_service.errors import BadRequest
from cds_service.hooks.order_context import MAX_IDENTIFIER, check_order_context

ORDER_HOOKS = frozenset({"order-select", "order-sign"})
MAX_HOOK_INSTANCE = 128
MAX_URL = 2048

Identifier = Annotated[str, Field(min_length=1, max_length=MAX_IDENTIFIER)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True, frozen=True)


class FhirAuthorization(_Wire):
    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int | None = None
    scope: str | None = Field(default=None, max_length=MAX_URL)
    subject: str | None = Field(default=None, max_length=MAX_IDENTIFIER)
    patient: str | None = Field(default=None, max_length=MAX_IDENTIFIER)

    @field_validator("token_type")
    @classmethod
    def _bearer_only(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("must be 'Bearer'")
        return value


class HookContext(_Wire):
    userId: Identifier
    patientId: Identifier
    encounterId: str | None = Field(default=None, max_length=MAX_IDENTIFIER)
    # order hooks only; validated by hook in ``parse_hook_request``
    draftOrders: dict[str, Any] | None = None
    selections: list[Any] | None = None  # entries checked by order_context.check_order_context (naming selections[i])


class HookRequest(_Wire):
    hook: str = Field(min_length=1, max_length=MAX_IDENTIFIER)
    hookInstance: str = Field(min_length=1, max_length=MAX_HOOK_INSTANCE)
    context: HookContext
    fhirServer: str | None = Field(default=None, max_length=MAX_URL)
    fhirAuthorization: FhirAuthorization | None = None
    # Values are checked only for the keys a service asked for (engine/prefetch.py): others are ignored.
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @property
    def patient_id(self) -> str:
        return self.context.patientId


def declared_hook(body: Any) -> str | None:
    """The hook a decoded body names, when it names one as a string (a metrics label before parsing)."""
    hook = body.get("hook") if isinstance(body, dict) else None
    return hook if isinstance(hook, str) else None


def parse_hook_request(body: Any, expected_hook: str | None = None) -> HookRequest:
    """Validate a decoded JSON body as a CDS Hooks request; raise ``BadRequest`` naming the field.

    With ``expected_hook`` (the service's hook), a request for another hook is refused before its
    hook-specific context is checked, so the message says what is really wrong.
    """
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    try:
        request = HookRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_describe(exc), expression=_location(exc)) from None
    if request.fhirAuthorization is not None and not request.fhirServer:
        raise BadRequest(
            "fhirAuthorization is present but fhirServer is missing (CDS Hooks cds-r-1).",
            expression="fhirServer",
        )
    if expected_hook is not None and request.hook != expected_hook:
        raise BadRequest(
            f"hook {request.hook!r} does not match this service, which answers {expected_hook!r}.",
            expression="hook",
        )
    _check_order_context(request)
    return request


def _check_order_context(request: HookRequest) -> None:
    if request.hook not in ORDER_HOOKS:
        return
    context = request.context
    if context.draftOrders is None:
        raise BadRequest(f"context.draftOrders is required for {request.hook}.", expression="context.draftOrders")
    if context.draftOrders.get("resourceType") != "Bundle":
        raise BadRequest("context.draftOrders must be a FHIR Bundle (context.draftOrders.resourceType 'Bundle').",
                         expression="context.draftOrders.resourceType")
    if request.hook == "order-select" and context.selections is None:
        raise BadRequest("context.selections is required for order-select.", expression="context.selections")
    check_order_context(request.hook, context.draftOrders, context.selections)


def _location(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return ".".join(str(part) for part in first["loc"])


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = _location(exc) or "body"
    kind = first["type"]
    if kind == "missing":
        return f"{where} is required."
    expected = {
        "string_type": "a string",
        "dict_type": "a JSON object",
        "model_type": "a JSON object",
        "list_type": "an array",
        "int_type": "an integer",
        "string_too_short": "a non-empty string",
        "bool_type": "a boolean",
    }.get(kind)
    if expected:
        return f"{where} must be {expected}."
    if kind == "string_too_long":
        return f"{where} is longer than {first['ctx']['max_length']} characters."
    return f"{where}: {first['msg']}."
