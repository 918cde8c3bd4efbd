"""``cramp-cds invoke`` and ``cramp-cds render-cards`` (docs/integration.md).

``invoke`` builds a CDS Hooks request the way an EHR would and POSTs it to a running service: reads
discovery, fills the chosen service's prefetch templates and GETs each from a FHIR server (``--prefetch``),
or sends no prefetch so that the service fetches from ``fhirServer`` itself (``--no-prefetch``);
``--from-file`` takes the patient from a Bundle (Synthea) or a hook-request JSON. It prints the cards
(``cli/card_format.py``), or the raw JSON with ``--json``; ``--html FILE`` also writes them as a CDS client
shows them. ``render-cards`` writes that page for a saved response.

Exit codes: 0 success; 1 the service answered 4xx/5xx or a server could not be reached (one line, cause
first: ``401 from <endpoint>: issuer (request id ...)``); 2 usage or input errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import click

from cds_service.admin.card_page import write_card_page
from cds_service.auth import client_keys
from cds_service.cli.card_format import format_cards
from cds_service.cli.failure import InputError, RunError, server_failure
from cds_service.cli.hook_request import (HOOKS, build_hook_request, build_prefetch, read_draft_orders,
                                          read_patient_file)
from cds_service.cli.load_fixtures import read_json_file
from cds_service.fhir.errors import FhirError
from cds_service.fhir.hooks_client import HookAnswer, HooksClient


def fetch_discovery(client: HooksClient) -> dict[str, Any]:
    url = f"{client.base_url}/cds-services"
    try:
        answer = client.discovery()
    except FhirError as error:
        raise server_failure(error, "CDS service", client.base_url) from None
    if answer.status != 200:
        raise RunError(answer_failure(answer, url))
    if not isinstance(answer.body, dict) or not isinstance(answer.body.get("services"), list):
        raise RunError(f"discovery: {url}: no 'services' list in the answer")
    return answer.body


def answer_failure(answer: HookAnswer, endpoint: str) -> str:
    """One line for a non-200 answer: the status, what the service says, and the request id to find it."""
    first_line = answer.text.strip().splitlines()[0][:200] if answer.text.strip() else ""
    if answer.status == 401:
        why = answer.auth_category or "no reason given"
    else:
        why = answer.diagnostics or first_line or "no body"
    request_id = f" (request id {answer.request_id})" if answer.request_id else ""
    return f"{answer.status} from {endpoint}: {why}{request_id}"


def sign_call(key_path: Path, kid: str, issuer: str, endpoint: str) -> str:
    """The client JWT for one call to ``endpoint`` (auth/client_keys.py, the one signer)."""
    try:
        key = client_keys.read_private_key(key_path)
        return client_keys.make_client_token(key, issuer=issuer, audience=endpoint, kid=kid)
    except client_keys.ClientKeyError as error:
        raise InputError(f"--jwt-key {error}") from None


def choose_service(discovery: Mapping[str, Any], service_id: str | None, hook: str | None) -> dict[str, Any]:
    """The discovery entry of ``service_id``; else the first service for ``hook`` (patient-view by default)."""
    services = [s for s in discovery.get("services", []) if isinstance(s, dict)]
    if service_id:
        for service in services:
            if service.get("id") == service_id:
                return service
        known = ", ".join(str(s.get("id")) for s in services)
        raise InputError(f"--service: no service {service_id!r} in discovery (known: {known})")
    wanted = hook or "patient-view"
    for service in services:
        if service.get("hook") == wanted:
            return service
    raise InputError(f"--hook: discovery lists no {wanted} service")


@click.command("invoke")
@click.option("--service-url", default="http://127.0.0.1:8080", show_default=True,
              help="Base URL of the running CDS service (discovery is at BASE/cds-services).")
@click.option("--service", "service_id", default=None,
              help="Service id. [default: the first service for --hook in discovery]")
@click.option("--hook", type=click.Choice(HOOKS), default=None,
              help="Hook to send. [default: the service's hook, else patient-view]")
@click.option("--patient", default=None, help="context.patientId (required unless --from-file names it).")
@click.option("--user", default="Practitioner/example", show_default=True, help="context.userId.")
@click.option("--encounter", default=None, help="context.encounterId (order hooks).")
@click.option("--fhir-server", default=None, help="FHIR base URL: sent as fhirServer, and read for --prefetch.")
@click.option("--fhir-token", default=None, help="Bearer token for the FHIR server (sent as fhirAuthorization).")
@click.option("--prefetch/--no-prefetch", default=True, show_default=True,
              help="Fill and fetch the discovery's prefetch templates yourself, or send none (the service fetches).")
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Patient data from a FHIR Bundle (e.g. Synthea) or a hook-request JSON instead of a FHIR server.")
@click.option("--draft-orders", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A Bundle of draft orders (context.draftOrders) for order-select / order-sign.")
@click.option("--select", "selections", multiple=True, help="Type/id of a selected draft order (order-select; repeatable).")
@click.option("--jwt-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM private key (EC P-384 -> ES384, RSA -> RS384) to sign the client JWT.")
@click.option("--jwt-kid", default=None, help="kid of the JWT key (with --jwt-key).")
@click.option("--jwt-iss", default=None, help="iss of the JWT: the client's issuer (with --jwt-key).")
@click.option("--as-of", "as_of", default=None, metavar="DATE[THH:MM:SSZ]",
              help="Evaluate as if it were then (X-Cramp-As-Of): honoured by a development-mode service only, "
                   "refused (400) by any other.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw response JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Also write the cards to this HTML file, as a CDS client shows them (open it in a browser).")
def invoke(service_url: str, service_id: str | None, hook: str | None, patient: str | None, user: str,
           encounter: str | None, fhir_server: str | None, fhir_token: str | None, prefetch: bool,
           from_file: Path | None, draft_orders: Path | None, selections: tuple[str, ...],
           jwt_key: Path | None, jwt_kid: str | None, jwt_iss: str | None, as_of: str | None, as_json: bool,
           html_file: Path | None) -> None:
    """Call a running service with a hook request built the way an EHR would, and print the cards."""
    if jwt_key is not None and not (jwt_kid and jwt_iss):
        raise InputError("--jwt-key needs --jwt-kid and --jwt-iss")
    if (jwt_kid or jwt_iss) and jwt_key is None:
        raise InputError("--jwt-kid/--jwt-iss need --jwt-key")
    if fhir_token and not fhir_server:
        raise InputError("--fhir-token needs --fhir-server")
    patient_file = read_patient_file(from_file) if from_file is not None else None
    patient_id = patient or (patient_file.patient_id if patient_file else None)
    if not patient_id:
        raise InputError("--patient is required (or --from-file with a patient in it)")
    if prefetch and patient_file is None and not fhir_server:
        raise InputError("--prefetch needs --fhir-server or --from-file (or use --no-prefetch)")
    if not prefetch and not fhir_server:
        click.echo("note: no prefetch and no --fhir-server: the service can only answer 412 for required data",
                   err=True)

    client = HooksClient(service_url)
    discovery = fetch_discovery(client)
    service = choose_service(discovery, service_id, hook)
    hook = hook or str(service.get("hook"))
    if hook != service.get("hook"):
        raise InputError(f"--hook {hook}: service {service.get('id')} answers {service.get('hook')}")
    orders = None
    if hook in ("order-select", "order-sign"):
        if draft_orders is None and patient_file and patient_file.context.get("draftOrders"):
            orders = patient_file.context["draftOrders"]
        elif draft_orders is None:
            raise InputError(f"--draft-orders is required for {hook}")
        else:
            orders = read_draft_orders(draft_orders)
    chosen = list(selections) or (list(patient_file.context.get("selections") or []) if patient_file else [])
    if hook == "order-select":
        if not chosen:
            raise InputError("--select Type/id is required for order-select (repeatable)")
        in_bundle = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in (orders or {}).get("entry", [])}
        unknown = [s for s in chosen if s not in in_bundle]
        if unknown:
            raise InputError(f"--select {', '.join(unknown)}: not in the draft orders ({', '.join(sorted(in_bundle))})")
    elif selections:
        raise InputError("--select is only for order-select")

    body = build_hook_request(hook=hook, patient_id=patient_id, user=user, fhir_server=fhir_server,
                              fhir_token=fhir_token, draft_orders=orders, selections=chosen or None,
                              encounter=encounter or (patient_file.context.get("encounterId") if patient_file else None))
    templates = service.get("prefetch") or {}
    if prefetch:
        if patient_file is not None:
            body["prefetch"] = {k: v for k, v in patient_file.prefetch.items() if k in templates}
        else:
            warn = lambda message: click.echo(f"warning: {message}", err=True)  # noqa: E731
            body["prefetch"] = build_prefetch(templates, body, fhir_server or "", fhir_token, warn=warn)

    endpoint = client.endpoint(str(service["id"]))
    token = sign_call(jwt_key, str(jwt_kid), str(jwt_iss), endpoint) if jwt_key is not None else None
    try:
        response = client.call(str(service["id"]), body, bearer=token, as_of=as_of)
    except FhirError as error:
        raise server_failure(error, "CDS service", service_url) from None
    answer = response.body
    if as_json:
        click.echo(json.dumps(answer, indent=2) if answer is not None else response.text)
    if response.status != 200:
        raise RunError(answer_failure(response, endpoint))
    if html_file is not None:
        write_card_page(answer or {}, html_file, title=f"Cards from {service['id']} ({hook})")
        click.echo(f"cards written to {html_file}", err=True)
    if not as_json:
        click.echo(format_cards(answer or {}, response.suppressed_cards), nl=False)


@click.command("render-cards")
@click.argument("response_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="The HTML file to write.")
def render_cards(response_file: Path, html_file: Path) -> None:
    """Render a saved CDS Hooks response (JSON with "cards") to an HTML page, as a CDS client shows it."""
    answer = read_json_file(response_file, "response")
    if not isinstance(answer, dict) or not isinstance(answer.get("cards"), list):
        raise InputError(f"{response_file}: not a CDS Hooks response (no \"cards\" list)")
    write_card_page(answer, html_file, title=f"Cards from {response_file.name}")
    click.echo(f"{len(answer['cards'])} card(s) written to {html_file}")
