"""A bounded fuzz run (marker ``fuzz``): schemathesis generates requests from the service's own OpenAPI
description (cds_service/data/openapi.yaml) and sends them to the Flask app in-process (WSGI; no socket,
no network: ``no_network`` refuses any outbound call). The app runs as in production, not in development
mode; every request carries a fresh, valid ES384 JWT from a test issuer (unique ``jti``, ``aud`` the URL of
the endpoint called), so the fuzzing reaches past authentication into parsing, prefetch and the rules.

Two descriptions are fuzzed: the published one (any hook, any prefetch: mostly 400/412, which exercises
parsing and the fhirServer checks), and a service profile of it, where ``hook`` is ``patient-view`` and the
prefetch holds a Patient and Bundles whose entries are either resources from fhir_fixtures/ (real codes, so
the rules fire) or generated ones: that run reaches the rules and must produce cards (200).

Bounds: about 200 examples in all, derandomized (the same inputs on every run), no shrinking, a deadline per
example, and each operation's run checked to finish well under a minute.

Asserted for every response: no 5xx; a documented status, content type, headers and body (schemathesis'
conformance checks); for schema-invalid input (negative mode), a 4xx.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, note, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_service.web.openapi import openapi_document
from support.hook_requests import SERVICE_ID
from support.security import TestIssuer, secure_app

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"
PROFILE_PATIENT = "fuzz-patient-1"

pytestmark = pytest.mark.fuzz

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# A hang detector, not a speed test: the run is bounded by its example count (RUNS), and one example's
# deadline is generous so that a loaded 2-core CI machine never fails it (speed is measured in bench/).
PER_EXAMPLE_DEADLINE = timedelta(seconds=30)

# (description, method, path, generation mode, fixed path parameters, examples). ~200 in all.
RUNS = [
    ("profile", "POST", "/cds-services/{id}", POSITIVE, {"id": SERVICE_ID}, 40),
    ("published", "POST", "/cds-services/{id}", POSITIVE, {"id": SERVICE_ID}, 30),
    ("published", "POST", "/cds-services/{id}", NEGATIVE, {"id": SERVICE_ID}, 40),
    ("published", "POST", "/cds-services/{id}/feedback", POSITIVE, {"id": SERVICE_ID}, 30),
    ("published", "POST", "/cds-services/{id}/feedback", NEGATIVE, {"id": SERVICE_ID}, 20),
    ("published", "POST", "/cds-services/{id}", POSITIVE, None, 10),  # any service id: mostly 404 (or 401: aud from an odd path)
    ("published", "GET", "/cds-services/{id}", POSITIVE, None, 10),
    ("published", "GET", "/cds-services", POSITIVE, None, 3),
    ("published", "GET", "/healthz", POSITIVE, None, 2),
    ("published", "GET", "/readyz", POSITIVE, None, 2),
    ("published", "GET", "/openapi.json", POSITIVE, None, 2),
]
STATISTICS: dict[str, Counter] = {}


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer.create()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, issuer: TestIssuer):
    return secure_app(tmp_path_factory.mktemp("fuzz"), issuer)


def _fixture_resources() -> dict[str, list[dict]]:
    """Every resource in the fixtures' prefetch Bundles by type, its subject pointed at the profile's patient."""
    found: dict[str, list[dict]] = {}
    for request in sorted(FIXTURES.glob("*/request.json")):
        for value in json.loads(request.read_text())["prefetch"].values():
            for entry in (value or {}).get("entry", []) if (value or {}).get("resourceType") == "Bundle" else []:
                resource = copy.deepcopy(entry["resource"])
                resource["subject"] = {"reference": f"Patient/{PROFILE_PATIENT}"}
                found.setdefault(resource["resourceType"], []).append(resource)
    return found


def service_profile(document: dict) -> dict:
    """The published description narrowed to what the patient-view service answers with cards."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    fixtures = _fixture_resources()

    def bundle(resource_type: str) -> dict:
        generated = {
            "type": "object",
            "required": ["resourceType", "id"],
            "properties": {
                "resourceType": {"const": resource_type},
                "id": {"type": "string", "pattern": "^[A-Za-z0-9.-]{1,16}$"},
                "subject": {"const": {"reference": f"Patient/{PROFILE_PATIENT}"}},
            },
        }
        return {
            "type": "object",
            "required": ["resourceType", "type", "entry"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "type": {"const": "searchset"},
                "entry": {
                    "type": "array",
                    "maxItems": 6,
                    "items": {
                        "type": "object",
                        "required": ["resource"],
                        "properties": {"resource": {"anyOf": [{"enum": fixtures[resource_type]}, generated]}},
                    },
                },
            },
        }

    schemas["ProfilePrefetch"] = {
        "type": "object",
        "additionalProperties": False,  # an unknown key must hold a resource or null, else 400 (published schema)
        "required": ["patient", "conditions"],
        "properties": {
            "patient": {
                "type": "object",
                "required": ["resourceType", "id", "birthDate"],
                "properties": {
                    "resourceType": {"const": "Patient"},
                    "id": {"const": PROFILE_PATIENT},
                    "gender": {"enum": ["male", "female", "other", "unknown"]},
                    "birthDate": {"type": "string", "pattern": "^19[2-9][0-9]-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$"},
                },
            },
            "conditions": bundle("Condition"),
            "medicationRequests": {"anyOf": [bundle("MedicationRequest"), {"type": "null"}]},
            "medicationStatements": {"anyOf": [bundle("MedicationStatement"), {"type": "null"}]},
            "observations": {"anyOf": [bundle("Observation"), {"type": "null"}]},
        },
    }
    request = schemas["HookRequest"]
    request["required"] = [*request["required"], "prefetch"]
    request["properties"]["hook"] = {"const": "patient-view"}
    request["properties"]["prefetch"] = {"$ref": "#/components/schemas/ProfilePrefetch"}
    request["properties"].pop("fhirServer")
    request["properties"].pop("fhirAuthorization")
    request["properties"]["context"] = {
        "type": "object",
        "required": ["userId", "patientId"],
        "properties": {"userId": {"type": "string", "minLength": 1}, "patientId": {"const": PROFILE_PATIENT}},
    }
    request["additionalProperties"] = False
    return document


@pytest.fixture(scope="module")
def schemas(app) -> dict:
    published = schemathesis.openapi.from_wsgi("/openapi.json", app)
    assert published.raw_schema == openapi_document()
    return {"published": published, "profile": schemathesis.openapi.from_dict(service_profile(openapi_document()))}


def _run_id(run: tuple) -> str:
    description, method, path, mode, fixed, examples = run
    return f"{description} {method} {path} {mode.value}{' fixed-id' if fixed else ''} x{examples}"


def _negative_header(case) -> bool:
    """schemathesis made the headers (here: the bearer credentials) invalid on purpose."""
    components = case.meta.components if case.meta is not None else {}
    return any("HEADER" in str(location).upper() and info.mode is NEGATIVE for location, info in components.items())


@pytest.mark.parametrize("run", RUNS, ids=[_run_id(r) for r in RUNS])
def test_fuzz_operation(run: tuple, schemas: dict, app, issuer: TestIssuer, no_network) -> None:
    description, method, path, mode, fixed, examples = run
    operation = schemas[description][path][method]
    strategy = operation.as_strategy(generation_mode=mode, **({"path_parameters": fixed} if fixed else {}))
    checks = CONFORMANCE + ([negative_data_rejection] if mode is NEGATIVE else [])
    statuses: Counter = Counter()

    @settings(
        max_examples=examples,
        deadline=PER_EXAMPLE_DEADLINE,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as generated
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=strategy)
    def fuzz(case) -> None:
        request_path = unquote(case.formatted_path)
        headers = issuer.headers(request_path) if request_path.startswith("/cds-services") else {}
        if case.headers:
            # The fuzzed app runs outside development mode, where X-Cramp-As-Of is refused by design (400):
            # sent at random it would keep the valid cases from reaching the rules. Its own tests are in
            # test_as_of_and_suppressed_header.py.
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "x-cramp-as-of"}
        note(f"{case.method} {case.formatted_path} body={case.body!r:.2000}")
        response = case.call(app=app, headers=headers)
        statuses[response.status_code] += 1
        if fixed and response.status_code == 401:
            # A valid JWT for the endpoint called is refused only when schemathesis broke the credentials.
            assert _negative_header(case), f"a valid JWT was refused: {case.method} {case.formatted_path}"
            statuses[401] -= 1
            statuses["401 (credentials made invalid on purpose)"] += 1
        assert response.status_code < 500, f"5xx for {case.method} {case.formatted_path}: {case.body!r:.2000}"
        case.validate_response(response, checks=checks, headers=headers)

    started = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - started
    STATISTICS[_run_id(run)] = statuses
    print(f"\nfuzz {_run_id(run)}: {sum(statuses.values())} requests in {elapsed:.1f} s, statuses {dict(statuses)}")
    assert sum(statuses.values()) <= examples * 4, "more requests than the example bound allows"
    assert no_network.attempts == []
    assert not any(isinstance(status, int) and status >= 500 for status in statuses)
    if fixed and mode is POSITIVE:
        # Every request carried a valid JWT for the endpoint it called: authentication never refused one,
        # so the fuzzing reached the parser and the engine.
        assert 401 not in statuses, statuses
    if description == "profile":
        assert statuses[200] >= examples // 2, "the fuzzing did not reach the rules"
