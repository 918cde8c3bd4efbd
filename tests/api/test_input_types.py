"""Every field of every request body, sent with each wrong JSON type, over HTTP (issue 11 item 4).

The fields are generated from the OpenAPI description the service publishes (cds_service/data/openapi.yaml):
the CDS Hooks envelope, its context for each hook the service answers (patient-view, order-select,
order-sign), the prefetch keys discovery names, and the feedback body. Each field gets each JSON type its
schema does not allow (array, object, string, number, boolean, null): the answer is a 400 with an
OperationOutcome naming the field, never a 5xx. A type the schema allows may be answered anything but a 5xx.

Inside prefetch resources (and draft orders), each element the rules read gets each wrong type: a bad
record is skipped and counted in the request's one log line, a bad Patient is a 400; never a 5xx.
"""

from __future__ import annotations

import copy
import logging
from importlib import resources
from typing import Any, Iterator

import pytest
import yaml

from support.app import make_app
from support.hook_requests import PATIENT_ID, SERVICE_URL, minimal_request, patient_resource, searchset

SELECT_URL = "/cds-services/leg-cramp-order-select"
SIGN_URL = "/cds-services/leg-cramp-order-sign"
CARD_UUID = "9368d37b-283f-44a0-93ea-547cebab93ed"
SUGGESTION_UUID = "1b1c4b4e-1f0c-4a5e-9a55-0d3f4e0e8c11"
# One value of each JSON type; "number" twice: an integer field accepts 7 but not 1.5.
WRONG_VALUES: dict[str, list[Any]] = {
    "array": [[], ["x"]],
    "object": [{}, {"a": 1}],
    "string": ["x"],
    "number": [7, 1.5],
    "boolean": [True, False],
    "null": [None],
}


# ------------------------------------------------------------------------- the OpenAPI description

def _openapi() -> dict[str, Any]:
    return yaml.safe_load(resources.files("cds_service").joinpath("data/openapi.yaml").read_text())


OPENAPI = _openapi()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = OPENAPI
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(schema)
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        return [b for alternative in alternatives for b in _branches(alternative)]
    return [schema]


def allowed_types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a schema lets through (no type given: any)."""
    found: set[str] = set()
    for branch in _branches(schema):
        if "const" in branch or "enum" in branch:
            found |= {_json_type(v) for v in ([branch["const"]] if "const" in branch else branch["enum"])}
            continue
        declared = branch.get("type")
        if declared is None:
            return set(WRONG_VALUES) | {"integer"}
        found |= set(declared) if isinstance(declared, list) else {declared}
    if "number" in found:
        found.add("integer")
    return found


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {str: "string", float: "number", list: "array", dict: "object"}[type(value)]


def schema_fields(schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict]]:
    """(path, schema) of every property and array item the schema describes, depth first."""
    for branch in _branches(schema):
        for name, sub in (branch.get("properties") or {}).items():
            yield path + (name,), sub
            yield from schema_fields(sub, path + (name,))
        if "items" in branch:
            yield path + (0,), branch["items"]
            yield from schema_fields(branch["items"], path + (0,))


def request_schema(operation: str) -> dict[str, Any]:
    for item in OPENAPI["paths"].values():
        for method in item.values():
            if isinstance(method, dict) and method.get("operationId") == operation:
                return method["requestBody"]["content"]["application/json"]["schema"]
    raise KeyError(operation)


def field_name(path: tuple[Any, ...]) -> str:
    """The name the service gives a field: ``context.selections[0]``, ``feedback[0].card``."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name


def with_value(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    target: Any = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return changed


def has_path(body: Any, path: tuple[Any, ...]) -> bool:
    for part in path[:-1]:
        try:
            body = body[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(body, (dict, list))


# ------------------------------------------------------------------------- complete valid bodies

def draft_order(rid: str = "q1") -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "draft", "intent": "order",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "medicationCodeableConcept": {"text": "quinine sulfate 324 MG Oral Capsule"}}


def hook_body(hook: str) -> dict[str, Any]:
    """A valid request for ``hook`` with every optional envelope field present."""
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": PATIENT_ID, "encounterId": "e1"}
    if hook != "patient-view":
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": draft_order()}]}
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/q1"]
    return minimal_request(
        hook=hook, context=context, extension={},
        fhirServer="https://ehr.example/fhir",
        fhirAuthorization={"access_token": "t0k3n", "token_type": "Bearer", "expires_in": 300,
                           "scope": "patient/*.read", "subject": "cds-service", "patient": PATIENT_ID},
    )


def feedback_body() -> dict[str, Any]:
    return {"feedback": [{
        "card": CARD_UUID, "outcome": "overridden",
        "acceptedSuggestions": [{"id": SUGGESTION_UUID}],
        "overrideReason": {"reason": {"system": "http://example.org/reasons", "code": "patient-refuses",
                                      "display": "Patient declined"}, "userComment": "Discussed."},
        "outcomeTimestamp": "2026-06-15T12:00:00Z",
    }]}


HOOK_URLS = {"patient-view": SERVICE_URL, "order-select": SELECT_URL, "order-sign": SIGN_URL}


@pytest.fixture(scope="module")
def app():
    return make_app()


@pytest.fixture(scope="module")
def http(app):
    return app.test_client()


def _prefetch_keys(app, url: str) -> list[str]:
    service_id = url.rsplit("/", 1)[1]
    return [t.key for t in app.extensions["leg_cramp_engine"].registry.get(service_id).templates]


def _cases(body: dict[str, Any], schema: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], dict, Any]]:
    for path, sub in schema_fields(schema):
        if not has_path(body, path):
            continue
        allowed = allowed_types(sub)
        for kind, values in WRONG_VALUES.items():
            for value in values:
                yield path, sub, value, _json_type(value) not in allowed


def _assert_refused_naming(response, name: str) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code == 400, (name, response.status_code, text[:300])
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome", text
    issue = outcome["issue"][0]
    assert name in issue.get("expression", []) or name in issue["diagnostics"], (name, issue)
    assert "Traceback" not in text


# ------------------------------------------------------------------------- the sweep

def test_openapi_describes_the_fields_the_sweep_sends():
    """The generator itself: it finds the envelope, every context field and every feedback field."""
    names = {field_name(p) for p, _ in schema_fields(request_schema("callService"))}
    assert {"hook", "hookInstance", "fhirServer", "fhirAuthorization.access_token", "context.userId",
            "context.patientId", "context.encounterId", "context.draftOrders", "context.selections[0]",
            "prefetch", "extension"} <= names
    feedback = {field_name(p) for p, _ in schema_fields(request_schema("feedback"))}
    assert {"feedback[0].card", "feedback[0].outcome", "feedback[0].acceptedSuggestions[0].id",
            "feedback[0].overrideReason.reason.code", "feedback[0].overrideReason.userComment",
            "feedback[0].outcomeTimestamp"} <= feedback
    assert allowed_types({"type": "string"}) == {"string"}
    assert "null" in allowed_types(_resolve({"$ref": "#/components/schemas/HookRequest"})["properties"]["prefetch"]
                                   ["additionalProperties"])


@pytest.mark.parametrize("hook", sorted(HOOK_URLS))
def test_hook_request_every_field_every_wrong_type_is_400_naming_it(hook, http, no_network):
    url, body = HOOK_URLS[hook], hook_body(hook)
    assert http.post(url, json=body).status_code in (200, 412)  # valid (412: fhirServer not on the allowlist)
    sent = 0
    for path, _, value, wrong in _cases(body, request_schema("callService")):
        response = http.post(url, json=with_value(body, path, value))
        assert response.status_code < 500, (field_name(path), value, response.get_data(as_text=True)[:300])
        if wrong:
            _assert_refused_naming(response, field_name(path))
            sent += 1
    assert sent > 60


@pytest.mark.parametrize("hook", sorted(HOOK_URLS))
def test_prefetch_values_every_wrong_type_is_400_naming_the_key(hook, app, http, no_network):
    url, body = HOOK_URLS[hook], hook_body(hook)
    additional = _resolve(request_schema("callService"))["properties"]["prefetch"]["additionalProperties"]
    resource_schema = next(b for b in _branches(additional) if b.get("type") == "object")
    for key in _prefetch_keys(app, url):
        body = with_value(body, ("prefetch", key), {"resourceType": "Bundle", "type": "searchset", "entry": []}) \
            if key not in body["prefetch"] else body
        for value in (v for values in WRONG_VALUES.values() for v in values):
            response = http.post(url, json=with_value(body, ("prefetch", key), value))
            assert response.status_code < 500, (key, value)
            if _json_type(value) not in allowed_types(additional):
                _assert_refused_naming(response, f"prefetch.{key}")
        for path, _, value, wrong in _cases(body["prefetch"][key], resource_schema):
            response = http.post(url, json=with_value(body, ("prefetch", key, *path), value))
            assert response.status_code < 500, (key, path, value)
            if wrong:
                _assert_refused_naming(response, field_name(("prefetch", key, *path)))


def test_feedback_every_field_every_wrong_type_is_400_naming_it(http, no_network):
    url = f"{SERVICE_URL}/feedback"
    body = feedback_body()
    assert http.post(url, json=body).status_code == 404  # the base body is valid: a card never issued
    sent = 0
    for path, _, value, wrong in _cases(body, request_schema("feedback")):
        response = http.post(url, json=with_value(body, path, value))
        assert response.status_code < 500, (field_name(path), value, response.get_data(as_text=True)[:300])
        if wrong:
            _assert_refused_naming(response, field_name(path))
            sent += 1
    assert sent > 40


@pytest.mark.parametrize("value", [[], {}, ["patient-view"], {"hook": "patient-view"}])
def test_unhashable_hook_is_400_not_500(value, http, no_network):
    """The reported defect: ``"hook": []`` or ``{}`` was a 500 (TypeError: unhashable type)."""
    response = http.post(SERVICE_URL, json=minimal_request(hook=value))
    _assert_refused_naming(response, "hook")


# ------------------------------------------------------------------------- inside prefetch resources

SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}
SNOMED, LOINC = "http://snomed.info/sct", "http://loinc.org"


def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


# Per resource type: a valid record the rules read, the prefetch key it goes under, and the elements the
# rules read with their FHIR JSON type (object, array or string).
RECORDS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "Condition": ("conditions", {
        "resourceType": "Condition", "id": "c1", "subject": SUBJECT, "code": _concept(SNOMED, "449918009"),
        "clinicalStatus": _concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
        "verificationStatus": _concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"),
        "bodySite": [_concept(SNOMED, "30021000")], "onsetDateTime": "2026-05-01", "recordedDate": "2026-05-01",
    }, {"code": "object", "clinicalStatus": "object", "verificationStatus": "object", "bodySite": "array",
        "onsetDateTime": "string", "onsetPeriod": "object", "recordedDate": "string",
        "abatementDateTime": "string", "abatementPeriod": "object", "abatementAge": "object",
        "abatementRange": "object", "abatementString": "string"}),
    "MedicationRequest": ("medicationRequests", {
        "resourceType": "MedicationRequest", "id": "m1", "subject": SUBJECT, "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "hydrochlorothiazide 25 MG Oral Tablet"}, "authoredOn": "2026-05-01",
    }, {"status": "string", "intent": "string", "medicationCodeableConcept": "object",
        "medicationReference": "object", "authoredOn": "string"}),
    "MedicationStatement": ("medicationStatements", {
        "resourceType": "MedicationStatement", "id": "s1", "subject": SUBJECT, "status": "active",
        "medicationCodeableConcept": {"text": "hydrochlorothiazide 25 MG Oral Tablet"},
        "effectiveDateTime": "2026-05-01",
    }, {"status": "string", "medicationCodeableConcept": "object", "medicationReference": "object",
        "effectiveDateTime": "string", "effectivePeriod": "object"}),
    "Observation": ("observations", {
        "resourceType": "Observation", "id": "o1", "subject": SUBJECT, "status": "final",
        "code": _concept(LOINC, "2823-3"), "effectiveDateTime": "2026-06-01",
        "valueQuantity": {"value": 3.1, "unit": "mmol/L"},
    }, {"code": "object", "status": "string", "valueQuantity": "object", "valueCodeableConcept": "object",
        "effectiveDateTime": "string", "effectivePeriod": "object", "issued": "string",
        "interpretation": "array", "component": "array"}),
    "Procedure": ("procedures", {
        "resourceType": "Procedure", "id": "p1", "subject": SUBJECT, "status": "completed",
        "category": _concept(SNOMED, "387713003"),  # surgical: the rules read it (recent surgery)
        "code": _concept(SNOMED, "80146002"), "performedDateTime": "2026-06-01",
    }, {"status": "string", "code": "object", "category": "object", "performedDateTime": "string",
        "performedPeriod": "object"}),
    "ServiceRequest": ("serviceRequests", {
        "resourceType": "ServiceRequest", "id": "r1", "subject": SUBJECT, "status": "active", "intent": "order",
        "code": _concept(LOINC, "46364-6"), "authoredOn": "2026-06-01",  # a venous duplex: read
    }, {"status": "string", "intent": "string", "code": "object", "authoredOn": "string", "category": "array"}),
}
JSON_VALUES = {"array": ["x"], "object": {"a": 1}, "string": "x", "number": 7, "boolean": True}
RECORD_CASES = [(kind, element, wrong) for kind, (_, _, elements) in RECORDS.items()
                for element, fhir_type in elements.items() for wrong in JSON_VALUES if wrong != fhir_type]


class Records(logging.Handler):
    """Log records written while it is attached to the root logger (after the app configured logging)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def log_records(http):  # the app replaces the root handlers when it first configures logging: attach after it
    records = Records()
    logging.getLogger().addHandler(records)
    yield records
    logging.getLogger().removeHandler(records)


def _skipped(log_records) -> list[dict[str, dict[str, int]]]:
    """The ``records skipped`` log lines of the request just made (there must be at most one)."""
    lines = [r.skipped_by_type_and_reason for r in log_records.records if r.getMessage() == "records skipped"]
    log_records.records.clear()
    return lines


def _read_elements(kind: str) -> frozenset[str]:
    from cds_service.engine.chart import READ_ELEMENTS
    return READ_ELEMENTS[kind]


def test_each_record_kind_is_read_when_valid(http, log_records, no_network):
    """The sweep's base records are valid: none is skipped (so a skip below is the wrong type's doing)."""
    prefetch = {"patient": patient_resource()}
    for key, record, _ in RECORDS.values():
        prefetch[key] = searchset(record)
    response = http.post(SERVICE_URL, json=minimal_request(prefetch=prefetch))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _skipped(log_records) == []


@pytest.mark.parametrize("kind, element, wrong", RECORD_CASES)
def test_prefetch_record_element_of_a_wrong_type_is_skipped_and_counted(kind, element, wrong, http, log_records,
                                                                        no_network):
    key, record, _ = RECORDS[kind]
    bad = {**record, element: JSON_VALUES[wrong]}
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(), key: searchset(bad)})
    response = http.post(SERVICE_URL, json=body)
    assert response.status_code == 200, (kind, element, wrong, response.get_data(as_text=True)[:300])
    lines = _skipped(log_records)
    if element in _read_elements(kind):
        assert len(lines) == 1 and sum(lines[0][kind].values()) == 1, (kind, element, wrong, lines)
    else:  # not read by any rule: not validated, never a reason to drop the record
        assert lines == [], (kind, element, lines)


@pytest.mark.parametrize("wrong", ["array", "object", "number", "boolean"])
def test_patient_birth_date_of_a_wrong_type_is_400(wrong, http, no_network):
    body = minimal_request(prefetch={"patient": patient_resource(birthDate=JSON_VALUES[wrong]),
                                     "conditions": searchset()})
    _assert_refused_naming(http.post(SERVICE_URL, json=body), "prefetch.patient")


@pytest.mark.parametrize("element", ["entry", "link"])
@pytest.mark.parametrize("wrong", ["object", "string", "number", "boolean"])
def test_bundle_entry_or_link_of_a_wrong_type_is_400_naming_it(element, wrong, http, no_network):
    bundle = {**searchset(), element: JSON_VALUES[wrong]}
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": bundle})
    _assert_refused_naming(http.post(SERVICE_URL, json=body), f"prefetch.conditions.{element}")


@pytest.mark.parametrize("wrong", ["array", "string", "number", "boolean"])
def test_bundle_entry_item_or_resource_of_a_wrong_type_is_skipped_and_counted(wrong, http, log_records, no_network):
    value = JSON_VALUES[wrong]
    bundle = {**searchset(), "entry": [value, {"resource": value}]}
    response = http.post(SERVICE_URL, json=minimal_request(
        prefetch={"patient": patient_resource(), "conditions": bundle}))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _skipped(log_records) == [{"?": {"not a JSON object": 2}}]


LINK_CASES = [("item", w) for w in ("array", "string", "number", "boolean")] + \
    [("relation", w) for w in ("array", "object", "number", "boolean")]


@pytest.mark.parametrize("part, wrong", LINK_CASES)
def test_bundle_link_item_of_a_wrong_type_is_400_naming_it(part, wrong, http, no_network):
    value = JSON_VALUES[wrong] if part == "item" else {"relation": JSON_VALUES[wrong], "url": "https://x.example/p2"}
    bundle = {**searchset(), "link": [value]}
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": bundle})
    _assert_refused_naming(http.post(SERVICE_URL, json=body), "prefetch.conditions.link[0]")


DRAFT_ELEMENTS = RECORDS["MedicationRequest"][2]


@pytest.mark.parametrize("element, wrong", [(e, w) for e, t in DRAFT_ELEMENTS.items() for w in JSON_VALUES if w != t])
def test_draft_order_element_of_a_wrong_type_is_skipped_and_counted(element, wrong, http, log_records, no_network):
    body = hook_body("order-sign")
    del body["fhirServer"], body["fhirAuthorization"]
    body["context"]["draftOrders"]["entry"].append({"resource": {**draft_order("q2"), element: JSON_VALUES[wrong]}})
    response = http.post(SIGN_URL, json=body)
    assert response.status_code == 200, (element, wrong, response.get_data(as_text=True)[:300])
    assert response.get_json()["cards"], "the valid quinine order still gets its card"
    lines = _skipped(log_records)
    assert len(lines) == 1 and sum(lines[0]["MedicationRequest"].values()) == 1, (element, wrong, lines)
