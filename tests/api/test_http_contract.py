"""The HTTP contract of ../shared/spec/STATUS.md, one row per case: the status, and for every non-2xx an
OperationOutcome whose diagnostics names the field or prefetch key, with no stack trace and no PHI.

No FHIR fetcher exists yet, so a missing / null / OperationOutcome required key is 412 even when a
fhirServer is given; every row runs under ``no_network`` so any outbound call fails the test.
Also here: CORS, discovery (templates within the CDS Hooks 2.0 query subset), security headers, /healthz.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from cds_service.hooks.cards import CdsResponse
from support.app import make_app
from support.hook_requests import (PATIENT_ID, PATIENT_NAME, SERVICE_ID, SERVICE_URL, DROP, minimal_request,
                                   patient_resource, searchset)

ORIGIN = "http://127.0.0.1:8080"
ACCESS_TOKEN = "tok-7Hs9-SECRET-access-token"
FORBIDDEN_TEXT = ("Traceback", 'File "', *PATIENT_NAME, ACCESS_TOKEN)
SNOMED = "http://snomed.info/sct"
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}


def condition(cid: str, **fields: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "clinicalStatus": ACTIVE,
        "code": {"coding": [{"system": SNOMED, "code": "449918009", "display": "Nocturnal leg cramps"}]},
        "onsetDateTime": "2026-05-01",
    }
    resource.update(fields)
    return resource


CRAMPS = condition("cramps-1")  # documented cramps: a conservative-care card appears
BAD_ONSET = condition("bad-onset", onsetDateTime="not-a-date",
                      code={"coding": [{"system": SNOMED, "code": "38341003", "display": "Hypertension"}]})
BAD_CODE = condition("bad-code", code="leg cramps")
OUTCOME = {"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "access denied"}]}
FHIR_AUTH = {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 300,
             "scope": "patient/Patient.read patient/Condition.read", "subject": "leg-cramp-cds"}


def prefetch(**keys: Any) -> dict[str, Any]:
    """Patient and an empty Condition searchset, with keys replaced (``None`` is sent as JSON null)."""
    base: dict[str, Any] = {"patient": patient_resource(), "conditions": searchset()}
    for key, value in keys.items():
        if value is DROP:
            base.pop(key)
        else:
            base[key] = value
    return base


def detail_contains(*needles: str) -> Callable[[dict[str, Any]], None]:
    def check(body: dict[str, Any]) -> None:
        assert len(body["cards"]) == 1, body
        detail = body["cards"][0]["detail"]
        for needle in needles:
            assert needle in detail, f"{needle!r} not in card detail:\n{detail}"
    return check


@dataclass
class Case:
    id: str
    status: int
    body: Any = None  # JSON-encoded unless ``raw`` is given
    raw: str | bytes | None = None
    content_type: str | None = "application/json"
    names: tuple[str, ...] = ()  # each must appear in issue[0].diagnostics
    settings: dict[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None
    marks: tuple[Any, ...] = ()


CASES = [
    # -- body and content type
    Case("body not JSON", 400, raw='{"hook": "patient-view", "prefetch": {"patient": {"name": "Zebulon Quixote"',
         names=("JSON",)),
    Case("body not UTF-8", 400, raw=b"\xff\xfe\x00{Zebulon Quixote"),
    Case("empty body", 400, raw=b""),
    Case("JSON array body", 400, body=[minimal_request()], names=("object",)),
    Case("JSON string body", 400, body="Zebulon Quixote", names=("object",)),
    Case("Content-Type text/plain", 415, body=minimal_request(), content_type="text/plain", names=("Content-Type",)),
    Case("Content-Type form", 415, body=minimal_request(), content_type="application/x-www-form-urlencoded",
         names=("Content-Type",)),
    Case("no Content-Type", 415, raw=json.dumps(minimal_request()), content_type=None, names=("Content-Type",)),
    Case("application/fhir+json accepted", 200, body=minimal_request(), content_type="application/fhir+json"),
    Case("charset parameter accepted", 200, body=minimal_request(), content_type="application/json; charset=utf-8"),
    Case("deeply nested arrays", 400, raw="[" * 100_000, names=("nested",)),
    Case("deeply nested objects", 400, raw='{"a":' * 100_000, names=("nested",)),
    Case("body over the limit", 413, body=minimal_request(extension={"org.example.padding": "x" * 2000}),
         settings={"max_body_bytes": 1000}, names=("limit",)),
    # -- required fields
    Case("hook missing", 400, body=minimal_request(hook=DROP), names=("hook",)),
    Case("hookInstance missing", 400, body=minimal_request(hookInstance=DROP), names=("hookInstance",)),
    Case("context missing", 400, body=minimal_request(context=DROP), names=("context",)),
    Case("hook a number", 400, body=minimal_request(hook=5), names=("hook",)),
    Case("hookInstance a number", 400, body=minimal_request(hookInstance=5), names=("hookInstance",)),
    Case("context a string", 400, body=minimal_request(context="Zebulon Quixote"), names=("context",)),
    Case("context.userId missing", 400, body=minimal_request(context={"patientId": PATIENT_ID}),
         names=("context.userId",)),
    Case("context.patientId missing", 400, body=minimal_request(context={"userId": "Practitioner/example"}),
         names=("context.patientId",)),
    Case("context.patientId empty", 400, body=minimal_request(context={"userId": "Practitioner/x", "patientId": ""}),
         names=("context.patientId",)),
    Case("context.patientId a number", 400, body=minimal_request(context={"userId": "Practitioner/x", "patientId": 7}),
         names=("context.patientId",)),
    Case("prefetch not an object", 400, body=minimal_request(prefetch=["Zebulon Quixote"]), names=("prefetch",)),
    # -- hook and service
    Case("hook differs from the service", 400, body=minimal_request(hook="encounter-start"), names=("hook",)),
    Case("hook order-sign with draftOrders", 400,
         body=minimal_request(hook="order-sign", context={"userId": "Practitioner/x", "patientId": PATIENT_ID,
                                                           "draftOrders": searchset()}),
         names=("hook",)),
    Case("hook order-sign without draftOrders", 400, body=minimal_request(hook="order-sign"), names=("hook",)),
    Case("fhirAuthorization without fhirServer", 400, body=minimal_request(fhirAuthorization=FHIR_AUTH),
         names=("fhirServer", "fhirAuthorization")),
    # -- prefetch
    Case("unknown prefetch key ignored", 200,
         body=minimal_request(prefetch=prefetch(patientToGreet={"resourceType": "Patient", "id": "other"}))),
    Case("null required patient", 412, body=minimal_request(prefetch=prefetch(patient=None)), names=("patient",)),
    Case("null required conditions", 412, body=minimal_request(prefetch=prefetch(conditions=None)),
         names=("conditions",)),
    Case("missing prefetch entirely", 412, body=minimal_request(prefetch=DROP), names=("patient", "conditions")),
    Case("null optional key", 200, body=minimal_request(prefetch=prefetch(medicationRequests=None))),
    Case("null optional key, card says not checked", 200,
         body=minimal_request(prefetch=prefetch(conditions=searchset(CRAMPS), medicationRequests=None)),
         check=detail_contains("Could not be checked")),
    Case("OperationOutcome as conditions", 412, body=minimal_request(prefetch=prefetch(conditions=OUTCOME)),
         names=("conditions",)),
    Case("conditions missing, fhirServer given", 412,
         body=minimal_request(prefetch=prefetch(conditions=DROP), fhirServer="https://fhir.example.org/r4"),
         names=("conditions",)),
    Case("conditions missing, fhirServer and token given", 412,
         body=minimal_request(prefetch=prefetch(conditions=DROP), fhirServer="https://fhir.example.org/r4",
                              fhirAuthorization=FHIR_AUTH),
         names=("conditions",)),
    # STATUS.md rev: no card over a required key with unread pages is never an all-clear: 412 naming it.
    Case("Bundle with a next link, no card: 412", 412,
         body=minimal_request(prefetch=prefetch(conditions=searchset(next_url="https://fhir.example.org/r4/x?p=2"))),
         names=("conditions",)),
    Case("Bundle with a next link, card says incomplete", 200,
         body=minimal_request(prefetch=prefetch(
             conditions=searchset(CRAMPS, next_url="https://fhir.example.org/r4/Condition?page=2"))),
         check=detail_contains("incomplete", "conditions")),
    Case("invalid Condition skipped, no card", 200, body=minimal_request(prefetch=prefetch(conditions=searchset(BAD_ONSET)))),
    Case("invalid onsetDateTime named in card", 200,
         body=minimal_request(prefetch=prefetch(conditions=searchset(CRAMPS, BAD_ONSET))),
         check=detail_contains("1 record could not be read", "invalid FHIR R4 (onsetDateTime")),
    Case("code as a string named in card", 200,
         body=minimal_request(prefetch=prefetch(conditions=searchset(CRAMPS, BAD_CODE))),
         check=detail_contains("1 record could not be read", "invalid FHIR R4 (code")),
    Case("invalid Patient birthDate", 400,
         body=minimal_request(prefetch=prefetch(patient=patient_resource(birthDate="yesterday"))),
         names=("prefetch.patient",)),
    Case("Patient of another id", 400,
         body=minimal_request(prefetch=prefetch(patient=patient_resource(id="someone-else"))),
         names=("prefetch.patient",)),
    Case("no Patient in prefetch.patient", 400,
         body=minimal_request(prefetch=prefetch(patient=searchset())), names=("prefetch.patient",)),
    # -- "nothing a client sends may produce a 5xx"
    Case("deeply nested Patient extension", 400,
         raw=json.dumps(minimal_request(prefetch=prefetch(patient=patient_resource(extension="HOLE")))).replace(
             '"HOLE"', '[{"url": "urn:x", "extension": ' * 150 + "[]" + "}]" * 150),
         names=("prefetch.patient",)),
    Case("deeply nested Condition extension", 200,
         raw=json.dumps(minimal_request(prefetch=prefetch(conditions=searchset(condition("deep", extension="HOLE")))))
         .replace('"HOLE"', '[{"url": "urn:x", "extension": ' * 150 + "[]" + "}]" * 150)),
]


def post(client, case: Case):
    data = case.raw if case.raw is not None else json.dumps(case.body)
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    return client.post(SERVICE_URL, data=data, headers=headers)


def assert_clean(response) -> str:
    text = response.get_data(as_text=True)
    for forbidden in FORBIDDEN_TEXT:
        assert forbidden not in text, f"{forbidden!r} leaked into the {response.status_code} body: {text[:500]}"
    return text


def assert_operation_outcome(response, names: tuple[str, ...] = ()) -> dict[str, Any]:
    assert response.mimetype in ("application/fhir+json", "application/json")
    body = json.loads(response.get_data(as_text=True))
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    assert isinstance(issue["code"], str) and issue["code"]
    assert isinstance(issue["diagnostics"], str) and issue["diagnostics"]
    for name in names:
        assert name in issue["diagnostics"], f"{name!r} not named in {issue['diagnostics']!r}"
    return body


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_status_table(case: Case, no_network) -> None:
    client = make_app(**case.settings).test_client()
    response = post(client, case)
    assert response.status_code < 500, assert_clean(response)
    assert response.status_code == case.status, response.get_data(as_text=True)[:500]
    assert_clean(response)
    if response.status_code >= 300:
        assert_operation_outcome(response, case.names)
    else:
        body = response.get_json()
        CdsResponse.model_validate(body)
        if case.check:
            case.check(body)
    assert no_network.attempts == []


def test_the_status_table_covers_every_answer_it_names() -> None:
    # STATUS.md row by row is checked by test_status_coverage.py (it reads STATUS.md); here, that this
    # table holds a case for each status it is named for there.
    statuses = {c.status for c in CASES}
    assert {200, 400, 412, 413, 415} <= statuses


# ------------------------------------------------------------------------------------- service id


def test_unknown_service_id_post_is_404(client) -> None:
    response = client.post("/cds-services/no-such-service", json=minimal_request())
    assert response.status_code == 404
    assert_clean(response)
    assert_operation_outcome(response, ("no-such-service",))


def test_unknown_service_id_get_is_404(client) -> None:
    response = client.get("/cds-services/no-such-service")
    assert response.status_code == 404


def test_get_on_known_service_is_405_operation_outcome(client) -> None:
    response = client.get(SERVICE_URL)
    assert response.status_code == 405
    assert_clean(response)
    assert_operation_outcome(response)


def test_no_phi_in_any_answer_even_on_success(client) -> None:
    response = client.post(SERVICE_URL, json=minimal_request(prefetch=prefetch(conditions=searchset(CRAMPS))))
    assert response.status_code == 200
    assert len(response.get_json()["cards"]) == 1
    assert_clean(response)


# ------------------------------------------------------------------------------------------- CORS


def test_cors_preflight(client) -> None:
    response = client.options(SERVICE_URL, headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")
    allowed = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"authorization", "content-type"} <= allowed
    methods = {m.strip().upper() for m in response.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "POST" in methods


@pytest.mark.parametrize("body, status", [(minimal_request(), 200), (minimal_request(hook=DROP), 400)])
def test_cors_header_on_post(client, body: dict[str, Any], status: int) -> None:
    response = client.post(SERVICE_URL, json=body, headers={"Origin": ORIGIN})
    assert response.status_code == status
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")


def test_cors_header_on_discovery(client) -> None:
    response = client.get("/cds-services", headers={"Origin": ORIGIN})
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")


# -------------------------------------------------------------------------------------- discovery

TOKEN = re.compile(r"\{\{[^}]*\}\}")
PATIENT_TOKEN = "{{context.patientId}}"
RESOURCE_TYPE = r"[A-Z][A-Za-z]+"
PLAIN_CODES = re.compile(r"[A-Za-z0-9.\-]+(,[A-Za-z0-9.\-]+)*")  # token equality, comma = OR
SEARCH_PARAM = re.compile(r"(_count|_sort|[a-z][a-z0-9-]*)")  # no modifiers, no chaining


def assert_in_query_subset(template: str) -> None:
    """CDS Hooks 2.0 §Prefetch query restrictions: instance read or type search with plain parameters."""
    assert [t for t in TOKEN.findall(template) if t != PATIENT_TOKEN] == [], template
    if re.fullmatch(rf"{RESOURCE_TYPE}/\{{\{{context\.patientId\}}\}}", template):
        return  # instance read
    match = re.fullmatch(rf"({RESOURCE_TYPE})\?(.+)", template)
    assert match, f"neither an instance read nor a type search: {template}"
    for pair in match.group(2).split("&"):
        name, sep, value = pair.partition("=")
        assert sep and SEARCH_PARAM.fullmatch(name), f"parameter {name!r} in {template}"
        assert value == PATIENT_TOKEN or PLAIN_CODES.fullmatch(value), f"value {value!r} in {template}"


def test_discovery_lists_the_service(client) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.get_json()["services"]
    service = next(s for s in services if s["id"] == SERVICE_ID)
    assert service["hook"] == "patient-view"
    assert service["title"] and service["description"]
    assert isinstance(service["prefetch"], dict)
    assert {"patient", "conditions", "medicationRequests", "medicationStatements", "observations"} <= set(
        service["prefetch"])
    assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    for template in service["prefetch"].values():
        assert_in_query_subset(template)
    assert all(v is not None for s in services for v in s.values())  # no nulls (spec §JSON)


@pytest.mark.parametrize("template", [
    "Patient/{{context.userId}}", "Condition?patient={{context.patientId}}&code:text=cramp",
    "Condition?subject.name=x", "Patient/{{context.patientId}}/_history", "/Patient/{{context.patientId}}",
    "Observation?patient={{today() - 90 days}}",
])
def test_query_subset_check_rejects(template: str) -> None:
    with pytest.raises(AssertionError):
        assert_in_query_subset(template)


# ------------------------------------------------------------------------------- headers, health


@pytest.mark.parametrize("method, path, body", [
    ("get", "/cds-services", None),
    ("post", SERVICE_URL, minimal_request()),
    ("post", SERVICE_URL, minimal_request(hook=DROP)),
    ("post", "/cds-services/no-such-service", minimal_request()),
    ("get", "/healthz", None),
])
def test_security_headers(client, method: str, path: str, body: Any) -> None:
    response = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


def test_healthz(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
