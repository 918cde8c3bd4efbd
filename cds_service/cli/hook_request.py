"""The hook request ``cramp-cds invoke`` sends, built the way an EHR would: its context, the draft orders, a
patient read from a file (``--from-file``: a Bundle or a hook request), and the prefetch filled from the
discovery's templates and read from a FHIR server (``fhir/reader.py``: next links on that server only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cds_service.cli.failure import InputError, server_failure
from cds_service.cli.load_fixtures import read_json_file
from cds_service.fhir.errors import AuthFailed, FhirError, Unavailable
from cds_service.fhir.reader import FhirReader

HOOKS = ("patient-view", "order-select", "order-sign")


def render_query(template: str, request_body: Mapping[str, Any]) -> str:
    """Fill a prefetch template the way the service itself does (prefetch.render_template)."""
    from cds_service.engine.prefetch import render_template
    from cds_service.hooks.request import HookRequest

    return render_template(template, HookRequest.model_validate(dict(request_body)))


def fetch_query(reader: FhirReader, query: str) -> dict[str, Any]:
    """GET one rendered prefetch query: a resource for a read; for a search, one searchset Bundle holding every
    page (``next`` links followed on the same server only)."""
    if "?" not in query:
        return reader.read(query)
    entries = [entry for page in reader.pages(query) for entry in page.get("entry") or []]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def build_prefetch(templates: Mapping[str, str], request_body: Mapping[str, Any], fhir_server: str,
                   token: str | None = None, reader: FhirReader | None = None,
                   warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Each template filled from the request's context and fetched from ``fhir_server``. A key that can't be
    fetched is left out (``warn`` is told why), as an EHR that could not get it would do; a server that does
    not answer, or refuses the credentials, stops the run with one line (``RunError``)."""
    try:
        reader = reader or FhirReader(fhir_server, token=token)
    except FhirError as error:
        raise server_failure(error, "FHIR server", fhir_server) from None
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        query = render_query(template, request_body)
        try:
            prefetch[key] = fetch_query(reader, query)
        except (Unavailable, AuthFailed) as error:  # the server, not this key: nothing else will work either
            raise server_failure(error, "FHIR server", fhir_server) from None
        except FhirError as error:
            if warn is None:
                raise server_failure(error, "FHIR server", fhir_server) from None
            warn(f"prefetch {key} not sent: {error.reason}" + (f" ({error.detail})" if error.detail else ""))
    return prefetch


@dataclass
class PatientFile:
    """What ``--from-file`` gave: the patient id, the prefetch it holds, and (a hook request) its context."""

    patient_id: str
    prefetch: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)


def read_patient_file(path: Path) -> PatientFile:
    from cds_service.admin.population import BundleError, record_from_bundle

    body = read_json_file(path, "--from-file")
    if not isinstance(body, dict):
        raise InputError(f"--from-file {path}: expected a JSON object (a Bundle or a hook request)")
    if body.get("resourceType") == "Bundle":
        try:
            record = record_from_bundle(body, str(path))
        except BundleError as exc:
            raise InputError(f"--from-file {exc}") from None
        return PatientFile(record.patient_id, record.prefetch)
    if "hook" in body or "context" in body:
        context = body.get("context")
        if not isinstance(context, dict) or not isinstance(context.get("patientId"), str):
            raise InputError(f"--from-file {path}: context.patientId is missing (a hook request needs it)")
        prefetch = body.get("prefetch") or {}
        if not isinstance(prefetch, dict):
            raise InputError(f"--from-file {path}: prefetch must be a JSON object")
        return PatientFile(context["patientId"], prefetch, context)
    raise InputError(f"--from-file {path}: resourceType: expected a Bundle, or a hook request with 'hook' and "
                     "'context'")


def read_draft_orders(path: Path) -> dict[str, Any]:
    bundle = read_json_file(path, "--draft-orders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InputError(f"--draft-orders {path}: resourceType: expected a Bundle of draft orders")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"--draft-orders {path}: entry: the Bundle holds no draft orders")
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not resource.get("resourceType") or not resource.get("id"):
            raise InputError(f"--draft-orders {path}: entry[{index}].resource: needs a resourceType and an id")
    return bundle


def build_hook_request(*, hook: str, patient_id: str, user: str, fhir_server: str | None,
                       fhir_token: str | None, draft_orders: dict[str, Any] | None = None,
                       selections: list[str] | None = None, encounter: str | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": user, "patientId": patient_id}
    if encounter:
        context["encounterId"] = encounter
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = draft_orders
    if hook == "order-select":
        context["selections"] = selections
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        body["fhirServer"] = fhir_server
        if fhir_token:
            body["fhirAuthorization"] = {"access_token": fhir_token, "token_type": "Bearer", "expires_in": 300,
                                         "scope": "patient/*.read", "subject": "cramp-cds-cli"}
    return body
