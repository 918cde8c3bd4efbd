"""Commands for integration engineers (docs/integration.md): ``invoke``, ``check-server`` and ``load-fixtures``.

``cramp-cds invoke``
    Builds a CDS Hooks request the way an EHR would and POSTs it to a running service: reads discovery,
    fills the chosen service's prefetch templates (``{{context.patientId}}``...) and GETs each from a FHIR
    server (``--prefetch``, following ``next`` links on the same server), or sends no prefetch at all so that
    the service fetches from ``fhirServer`` itself (``--no-prefetch``). ``--from-file`` takes the patient from a
    Bundle (Synthea) or a hook-request JSON instead of a FHIR server. Prints the cards readably (or the raw
    JSON with ``--json``); ``--html FILE`` also writes them as a CDS client shows them (admin/card_page.py).
``cramp-cds render-cards RESPONSE.json --html FILE``
    The same HTML page for a saved response.
``cramp-cds check-server URL``
    Reads ``URL/metadata`` and says whether the searches the service needs are declared.
``cramp-cds load-fixtures URL``
    Loads ``fhir_fixtures/*/request.json`` and FHIR transaction Bundles (Synthea) with stable ids.

Exit codes: 0 success; 1 the service answered 4xx/5xx, a server could not be reached, or something
required is missing / failed to load; 2 usage or input errors (the message names the file and field).

The functions below the commands are importable: the integration tests use them directly.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import click
import requests

from cds_service.admin.card_page import write_card_page

TIMEOUT_SECONDS = 30.0
PAGE_CAP = 100
FHIR_JSON = "application/fhir+json"
HOOKS = ("patient-view", "order-select", "order-sign")
JWT_LIFETIME_SECONDS = 300
NEEDED_SEARCHES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    # (label, resource type, search parameters, required)
    ("Patient read", "Patient", (), True),
    ("Condition search by patient", "Condition", ("patient",), True),
    ("MedicationRequest search by patient and status", "MedicationRequest", ("patient", "status"), False),
    ("MedicationStatement search by patient", "MedicationStatement", ("patient",), False),
    ("Observation search by patient and code", "Observation", ("patient", "code"), False),
)


class InputError(click.ClickException):
    """Bad usage or input (a file, a field, an option): exit 2, the message names what is wrong."""

    exit_code = 2


class RunError(click.ClickException):
    """A server could not be reached or answered wrongly: exit 1."""

    exit_code = 1


# ---------------------------------------------------------------- HTTP helpers


def _session(token: str | None = None) -> requests.Session:
    session = requests.Session()
    session.headers["Accept"] = FHIR_JSON
    session.headers["User-Agent"] = "cramp-cds integration CLI"
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def _get_json(session: requests.Session, url: str, what: str) -> Any:
    try:
        response = session.get(url, timeout=TIMEOUT_SECONDS, allow_redirects=False)
    except requests.RequestException as exc:
        raise RunError(f"{what}: {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise RunError(f"{what}: {url}: HTTP {response.status_code}{_diagnostics_suffix(response)}")
    try:
        return response.json()
    except ValueError:
        raise RunError(f"{what}: {url}: the answer is not JSON") from None


def _diagnostics_suffix(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    text = "; ".join(operation_outcome_diagnostics(body))
    return f" ({text})" if text else ""


def operation_outcome_diagnostics(body: Any) -> list[str]:
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    lines = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            where = ", ".join(issue.get("expression") or [])
            lines.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: {issue.get('diagnostics', '')}"
                         + (f" [{where}]" if where else ""))
    return lines


# ---------------------------------------------------------------- discovery and request building


def fetch_discovery(service_url: str, session: requests.Session | None = None) -> dict[str, Any]:
    url = service_url.rstrip("/") + "/cds-services"
    body = _get_json(session or _session(), url, "discovery")
    if not isinstance(body, dict) or not isinstance(body.get("services"), list):
        raise RunError(f"discovery: {url}: no 'services' list in the answer")
    return body


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


def render_query(template: str, request_body: Mapping[str, Any]) -> str:
    """Fill a prefetch template the way the service itself does (prefetch.render_template)."""
    from cds_service.engine.prefetch import render_template
    from cds_service.hooks.request import HookRequest

    return render_template(template, HookRequest.model_validate(dict(request_body)))


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _same_server(url: str, base: str) -> bool:
    target, root = urlsplit(url), urlsplit(base.rstrip("/") + "/")
    return (target.scheme, target.netloc) == (root.scheme, root.netloc) and (
        target.path.rstrip("/") + "/").startswith(root.path)


def fetch_query(session: requests.Session, fhir_server: str, query: str) -> dict[str, Any]:
    """GET one rendered prefetch query: a resource for a read; for a search, one searchset Bundle holding every
    page (``next`` links followed on the same server only, up to PAGE_CAP pages)."""
    base = fhir_server.rstrip("/")
    url: str | None = f"{base}/{query}"
    first = _get_json(session, url, f"prefetch {query.split('?', 1)[0]}")
    if not isinstance(first, dict) or first.get("resourceType") != "Bundle":
        return first
    entries = list(first.get("entry") or [])
    seen = {url}
    url = _next_link(first)
    pages = 1
    while url:
        url = urljoin(f"{base}/", url)
        if not _same_server(url, base):
            raise RunError(f"prefetch {query}: a next link leaves {base} ({url}); not followed")
        if url in seen or pages >= PAGE_CAP:
            raise RunError(f"prefetch {query}: more than {PAGE_CAP} pages, or the next links loop")
        seen.add(url)
        page = _get_json(session, url, f"prefetch {query.split('?', 1)[0]} (page {pages + 1})")
        entries += list(page.get("entry") or []) if isinstance(page, dict) else []
        url = _next_link(page) if isinstance(page, dict) else None
        pages += 1
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def build_prefetch(templates: Mapping[str, str], request_body: Mapping[str, Any], fhir_server: str,
                   token: str | None = None, session: requests.Session | None = None,
                   warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Each template filled from the request's context and fetched from ``fhir_server``. A key that can't be
    fetched is left out (``warn`` is told why), as an EHR that could not get it would do."""
    session = session or _session(token)
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        query = render_query(template, request_body)
        try:
            prefetch[key] = fetch_query(session, fhir_server, query)
        except RunError as error:
            if warn is None:
                raise
            warn(f"prefetch {key} not sent: {error.message}")
    return prefetch


def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{what} {path}: not valid JSON ({exc})") from None


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


def make_client_jwt(key_pem: bytes, kid: str, issuer: str, audience: str, now: float | None = None,
                    source: str = "--jwt-key") -> str:
    """A CDS Hooks client JWT: ES384 for an EC key, RS384 for an RSA key; aud = the service endpoint URL,
    a fresh jti, exp in 5 minutes."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = "ES384"
    elif isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RS384"
    else:
        raise InputError(f"{source}: an EC (P-384) or RSA private key is needed for ES384/RS384")
    issued = int(now if now is not None else time.time())
    claims = {"iss": issuer, "sub": issuer, "aud": audience, "iat": issued, "exp": issued + JWT_LIFETIME_SECONDS,
              "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid, "typ": "JWT"})


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


# ---------------------------------------------------------------- printing cards


def _markdown_to_text(text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"\1 <\2>", text)
    return text


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line.strip() else line.rstrip() for line in text.splitlines())


def format_cards(response: Mapping[str, Any]) -> str:
    cards = response.get("cards") or []
    out: list[str] = [f"{len(cards)} card{'s' if len(cards) != 1 else ''}"]
    for number, card in enumerate(cards, 1):
        out.append("")
        indicator = str(card.get("indicator", "?")).upper()
        out.append(f"[{number}] {indicator}: {card.get('summary', '')}")
        source = card.get("source") or {}
        topic = (source.get("topic") or {}).get("code")
        out.append(f"    source: {source.get('label', '?')}" + (f" (card {topic})" if topic else ""))
        if card.get("detail"):
            out.append(_indent(_markdown_to_text(str(card["detail"]))))
        for suggestion in card.get("suggestions") or []:
            recommended = " (recommended)" if suggestion.get("isRecommended") else ""
            out.append(f"    suggestion: {suggestion.get('label', '')}{recommended}")
            for action in suggestion.get("actions") or []:
                resource = action.get("resource") or {}
                code = resource.get("code") or {}
                coding = next(iter(code.get("coding") or []), {})
                what = code.get("text") or coding.get("display") or ""
                codes = f" [{coding.get('system', '')}|{coding.get('code', '')}]" if coding else ""
                out.append(f"      - {action.get('type', '?')} {resource.get('resourceType', '')}: "
                           f"{what}{codes}" + (f" ({action['description']})" if action.get("description") else ""))
        if card.get("selectionBehavior"):
            out.append(f"    selection: {card['selectionBehavior']}")
        for link in card.get("links") or []:
            out.append(f"    link ({link.get('type', '?')}): {link.get('label', '')} <{link.get('url', '')}>")
        reasons = [r.get("display") or r.get("code") for r in card.get("overrideReasons") or [] if isinstance(r, dict)]
        if reasons:
            out.append(f"    override reasons: {', '.join(str(r) for r in reasons)}")
    for action in response.get("systemActions") or []:
        out.append(f"system action: {action.get('type', '?')} {(action.get('resource') or {}).get('resourceType', '')}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- check-server


@dataclass
class CheckResult:
    label: str
    supported: bool
    required: bool
    note: str


def check_capabilities(capability: Mapping[str, Any]) -> tuple[list[CheckResult], list[str], bool]:
    """(one result per needed search, general lines, ok). ok is False when a required search is missing,
    the FHIR version is not 4.0.x or JSON is not offered."""
    lines: list[str] = []
    ok = True
    version = str(capability.get("fhirVersion", ""))
    version_ok = version.startswith("4.0.")
    ok &= version_ok
    lines.append(f"FHIR version: {version or 'not stated'} ({'R4, fine' if version_ok else 'MUST be 4.0.x (R4)'})")
    formats = [str(f) for f in capability.get("format") or []]
    json_ok = any("json" in f for f in formats)
    ok &= json_ok
    lines.append(f"formats: {', '.join(formats) or 'none stated'}" + ("" if json_ok else " (JSON is required)"))
    rest = next((r for r in capability.get("rest") or [] if isinstance(r, dict) and r.get("mode") == "server"), None)
    resources = {r.get("type"): r for r in (rest or {}).get("resource") or [] if isinstance(r, dict)}
    results = []
    for label, resource_type, params, required in NEEDED_SEARCHES:
        resource = resources.get(resource_type)
        if resource is None:
            results.append(CheckResult(label, False, required, f"{resource_type} is not in the CapabilityStatement"))
            continue
        interactions = {i.get("code") for i in resource.get("interaction") or [] if isinstance(i, dict)}
        wanted = "read" if not params else "search-type"
        missing = [] if wanted in interactions else [f"interaction {wanted}"]
        declared = {p.get("name") for p in resource.get("searchParam") or [] if isinstance(p, dict)}
        missing += [f"search parameter {p}" for p in params if p not in declared]
        if missing:
            results.append(CheckResult(label, False, required, "missing: " + ", ".join(missing)))
        else:
            shown = f"{wanted}" + (f" with {', '.join(params)}" if params else "")
            results.append(CheckResult(label, True, required, shown))
    ok &= all(r.supported for r in results if r.required)
    return results, lines, ok


# ---------------------------------------------------------------- load-fixtures


@dataclass
class LoadReport:
    written: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    mode: str = "transaction"

    def lines(self) -> list[str]:
        out = [f"loaded ({self.mode}): {sum(self.written.values())} resources"]
        out += [f"  {kind}: {count}" for kind, count in sorted(self.written.items())]
        out += [f"FAILED: {failure}" for failure in self.failures]
        return out


def _walk_references(node: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: (mapping.get(value, value) if key == "reference" and isinstance(value, str)
                      else _walk_references(value, mapping)) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk_references(item, mapping) for item in node]
    return node


def transaction_resources(bundle: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The resources of a transaction/collection Bundle with their own ids kept; ``urn:uuid:`` (and absolute
    ``fullUrl``) references rewritten to ``Type/id``. InputError names the entry without an id."""
    entries = bundle.get("entry") or []
    mapping: dict[str, str] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not resource.get("resourceType"):
            raise InputError(f"{source}: entry[{index}].resource: missing or without resourceType")
        if not resource.get("id"):
            raise InputError(f"{source}: entry[{index}].resource.id: needed for a stable id")
        if isinstance(entry.get("fullUrl"), str):
            mapping[entry["fullUrl"]] = f"{resource['resourceType']}/{resource['id']}"
    return [_walk_references(entry["resource"], mapping) for entry in entries]


def fixture_resources(request_body: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """A fixture request's prefetch resources. Fixture ids (c1, o1...) are unique only within one file, so every
    resource but the Patient gets the patient id as prefix (``fixture-05-c1``); references follow."""
    context = request_body.get("context") or {}
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str):
        raise InputError(f"{source}: context.patientId: missing")
    resources: list[dict[str, Any]] = []
    for key, value in (request_body.get("prefetch") or {}).items():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in value.get("entry") or []
                          if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        elif value.get("resourceType") != "OperationOutcome":
            resources.append(value)
    mapping: dict[str, str] = {}
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for index, resource in enumerate(resources):
        kind, rid = resource.get("resourceType"), resource.get("id")
        if not kind or not rid:
            raise InputError(f"{source}: prefetch resource {index}: resourceType and id are needed")
        new_id = rid if kind == "Patient" or rid.startswith(f"{patient_id}-") else f"{patient_id}-{rid}"
        mapping[f"{kind}/{rid}"] = f"{kind}/{new_id}"
        unique[(kind, rid)] = {**resource, "id": new_id}
    return [_walk_references(resource, mapping) for resource in unique.values()]


def _put_entry(resource: Mapping[str, Any]) -> dict[str, Any]:
    ref = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": ref, "resource": resource, "request": {"method": "PUT", "url": ref}}


def _post_transaction(session: requests.Session, base: str, resources: list[dict[str, Any]]) -> requests.Response:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [_put_entry(r) for r in resources]}
    return session.post(base, data=json.dumps(bundle), headers={"Content-Type": FHIR_JSON},
                        timeout=max(TIMEOUT_SECONDS, 120.0))


def _put_each(session: requests.Session, base: str, resources: list[dict[str, Any]], source: str,
              report: LoadReport) -> None:
    for resource in resources:
        ref = f"{resource['resourceType']}/{resource['id']}"
        try:
            response = session.put(f"{base}/{ref}", data=json.dumps(resource), headers={"Content-Type": FHIR_JSON},
                                   timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            report.failures.append(f"{source}: PUT {ref}: {type(exc).__name__}")
            continue
        if response.status_code in (200, 201):
            report.written[resource["resourceType"]] += 1
        else:
            report.failures.append(f"{source}: PUT {ref}: HTTP {response.status_code}{_diagnostics_suffix(response)}")


def _supports_transactions(capability: Mapping[str, Any]) -> bool:
    for rest in capability.get("rest") or []:
        if isinstance(rest, dict) and rest.get("mode") == "server":
            return any(isinstance(i, dict) and i.get("code") == "transaction" for i in rest.get("interaction") or [])
    return False


def load_sources(base_url: str, sources: Iterable[tuple[str, list[dict[str, Any]]]],
                 session: requests.Session | None = None, token: str | None = None,
                 progress: Callable[[str], None] | None = None) -> LoadReport:
    """PUT every source's resources (``Type/id``) into the FHIR server: one transaction Bundle per source, or one
    PUT per resource when the server does not offer transactions (or refuses the Bundle as unsupported)."""
    base = base_url.rstrip("/")
    session = session or _session(token)
    capability = _get_json(session, f"{base}/metadata", "load-fixtures: CapabilityStatement")
    report = LoadReport(mode="transaction" if _supports_transactions(capability) else "individual PUTs")
    for source, resources in sources:
        if report.mode == "transaction":
            try:
                response = _post_transaction(session, base, resources)
            except requests.RequestException as exc:
                report.failures.append(f"{source}: transaction: {type(exc).__name__}")
                continue
            if response.status_code in (404, 405, 501):
                report.mode = "individual PUTs"  # the server refuses transactions after all
            elif response.status_code == 200:
                report.written.update(r["resourceType"] for r in resources)
                if progress:
                    progress(f"{source}: {len(resources)} resources")
                continue
            else:
                report.failures.append(f"{source}: transaction: HTTP {response.status_code}"
                                       f"{_diagnostics_suffix(response)}")
                continue
        _put_each(session, base, resources, source, report)
        if progress:
            progress(f"{source}: {len(resources)} resources")
    return report


def fixture_sources(fixtures_dir: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    files = sorted(fixtures_dir.glob("*/request.json"))
    if not files:
        raise InputError(f"--fixtures {fixtures_dir}: no */request.json in it")
    return [(str(path), fixture_resources(read_json_file(path, "fixture"), str(path))) for path in files]


def synthea_sources(directory: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    files = sorted(directory.glob("*.json")) if directory.is_dir() else [directory]
    sources = []
    for path in files:
        bundle = read_json_file(path, "--synthea")
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            continue  # e.g. a manifest next to the bundles
        sources.append((str(path), transaction_resources(bundle, str(path))))
    if not sources:
        raise InputError(f"--synthea {directory}: no FHIR Bundle files in it")
    return sources


# ---------------------------------------------------------------- commands


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
@click.option("--json", "as_json", is_flag=True, help="Print the raw response JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Also write the cards to this HTML file, as a CDS client shows them (open it in a browser).")
def invoke(service_url: str, service_id: str | None, hook: str | None, patient: str | None, user: str,
           encounter: str | None, fhir_server: str | None, fhir_token: str | None, prefetch: bool,
           from_file: Path | None, draft_orders: Path | None, selections: tuple[str, ...],
           jwt_key: Path | None, jwt_kid: str | None, jwt_iss: str | None, as_json: bool,
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

    discovery = fetch_discovery(service_url)
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

    endpoint = f"{service_url.rstrip('/')}/cds-services/{service['id']}"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if jwt_key is not None:
        try:
            pem = jwt_key.read_bytes()
        except OSError as exc:
            raise InputError(f"--jwt-key {jwt_key}: cannot be read ({exc.strerror or exc})") from None
        token = make_client_jwt(pem, str(jwt_kid), str(jwt_iss), endpoint, source=f"--jwt-key {jwt_key}")
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = requests.post(endpoint, data=json.dumps(body), headers=headers, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise RunError(f"{endpoint}: {type(exc).__name__}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if as_json:
        click.echo(json.dumps(answer, indent=2) if answer is not None else response.text)
    if response.status_code != 200:
        if not as_json:
            click.echo(f"HTTP {response.status_code} from {endpoint}")
            for line in operation_outcome_diagnostics(answer) or ([response.text.strip()] if response.text.strip() else []):
                click.echo(f"  {line}")
        raise click.exceptions.Exit(1)
    if html_file is not None:
        write_card_page(answer or {}, html_file, title=f"Cards from {service['id']} ({hook})")
        click.echo(f"cards written to {html_file}", err=True)
    if not as_json:
        click.echo(format_cards(answer or {}), nl=False)


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


@click.command("check-server")
@click.argument("url")
@click.option("--fhir-token", default=None, help="Bearer token, if the server wants one for /metadata.")
def check_server(url: str, fhir_token: str | None) -> None:
    """Read URL/metadata and report whether the searches this service needs are supported.

    Exit 1 when the Patient read or the Condition search is missing, the FHIR version is not 4.0.x or JSON
    is not offered; the other searches are optional (the cards then say what could not be checked).
    """
    capability = _get_json(_session(fhir_token), url.rstrip("/") + "/metadata", "check-server")
    if not isinstance(capability, dict) or capability.get("resourceType") != "CapabilityStatement":
        raise RunError(f"check-server: {url.rstrip('/')}/metadata: not a CapabilityStatement")
    results, lines, ok = check_capabilities(capability)
    software = capability.get("software") or {}
    click.echo(f"server: {url} ({software.get('name', 'unnamed')} {software.get('version', '')})".rstrip())
    for line in lines:
        click.echo(line)
    for result in results:
        mark = "ok " if result.supported else ("MISSING" if result.required else "missing")
        need = "required" if result.required else "optional"
        click.echo(f"  [{mark}] {result.label} ({need}): {result.note}")
    click.echo("result: " + ("the service can fetch what it needs from this server" if ok
                             else "NOT usable: see the lines marked MISSING / MUST"))
    if not ok:
        raise click.exceptions.Exit(1)


@click.command("load-fixtures")
@click.argument("url")
@click.option("--fixtures", "fixtures_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of hand-worked fixtures (*/request.json). [default: ./fhir_fixtures if present]")
@click.option("--synthea", "synthea_dir", type=click.Path(path_type=Path), default=None,
              help="Folder (or file) of FHIR transaction Bundles, e.g. ../shared/data/synthea-r4.")
@click.option("--fhir-token", default=None, help="Bearer token for the FHIR server.")
def load_fixtures(url: str, fixtures_dir: Path | None, synthea_dir: Path | None, fhir_token: str | None) -> None:
    """Load fixtures and transaction Bundles into a FHIR server with stable ids (PUT Type/id)."""
    if fixtures_dir is None and Path("fhir_fixtures").is_dir():
        fixtures_dir = Path("fhir_fixtures")
    for option, path in (("--fixtures", fixtures_dir), ("--synthea", synthea_dir)):
        if path is not None and not path.exists():
            raise InputError(f"{option} {path}: no such file or folder")
    if fixtures_dir is None and synthea_dir is None:
        raise InputError("nothing to load: give --fixtures and/or --synthea (no ./fhir_fixtures here)")
    sources = (fixture_sources(fixtures_dir) if fixtures_dir else []) + (
        synthea_sources(synthea_dir) if synthea_dir else [])
    report = load_sources(url, sources, token=fhir_token)
    click.echo(f"{len(sources)} source file(s) into {url}")
    for line in report.lines():
        click.echo(line)
    if report.failures:
        raise click.exceptions.Exit(1)


COMMANDS = (invoke, render_cards, check_server, load_fixtures)
