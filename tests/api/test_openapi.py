"""The OpenAPI 3.1 description (cds_service/data/openapi.yaml): valid, served, complete, and true of the
service's real responses (status, content type, headers and body checked with jsonschema)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from cds_service.web.openapi import openapi_document, openapi_yaml
from support.hook_requests import SERVICE_ID, SERVICE_URL, minimal_request
from support.security import TestIssuer, assert_conforms, secure_app, service_url_for

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"
SCENARIOS = sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists())
SERVICE_TEMPLATE = "/cds-services/{id}"
FEEDBACK_TEMPLATE = "/cds-services/{id}/feedback"


@pytest.fixture(scope="module")
def document() -> dict:
    return openapi_document()


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer.create()


@pytest.fixture
def app(tmp_path: Path, issuer: TestIssuer):
    return secure_app(tmp_path, issuer)


@pytest.fixture
def client(app):
    return app.test_client()


def test_document_is_valid_openapi_3_1(document: dict) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator: raises on any error


def test_document_ships_in_the_package() -> None:
    import importlib.resources

    assert importlib.resources.files("cds_service").joinpath("data/openapi.yaml").is_file()
    setup_cfg = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    assert "data/*.yaml" in setup_cfg  # package_data glob that ships it in the wheel


def test_served_as_json_and_yaml_without_authentication(client, document: dict) -> None:
    as_json = client.get("/openapi.json")
    assert as_json.status_code == 200 and as_json.mimetype == "application/json"
    assert as_json.get_json() == document
    as_yaml = client.get("/openapi.yaml")
    assert as_yaml.status_code == 200 and as_yaml.mimetype == "application/yaml"
    assert yaml.safe_load(as_yaml.get_data(as_text=True)) == document
    assert as_yaml.get_data(as_text=True) == openapi_yaml()


def _openapi_template(rule: str) -> str:
    return rule.replace("<service_id>", "{id}")


def test_every_route_is_described(app, document: dict) -> None:
    routes = {
        (_openapi_template(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.rule.startswith("/admin")  # the console: not the API (docs/admin-console.md)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    described = {(path, method) for path, item in document["paths"].items() for method in item if method != "parameters"}
    assert routes == described


def test_post_endpoints_need_the_bearer_jwt(document: dict) -> None:
    assert document["components"]["securitySchemes"]["cdsClientJwt"] == {
        **document["components"]["securitySchemes"]["cdsClientJwt"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"
    }
    for template in (SERVICE_TEMPLATE, FEEDBACK_TEMPLATE):
        post = document["paths"][template]["post"]
        assert "security" not in post  # the global requirement applies
        assert "401" in post["responses"]
    assert document["security"] == [{"cdsClientJwt": []}]


# -------------------------------------------------------------------- real responses conform


def test_operational_endpoints_conform(client, document: dict) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/openapi.yaml", "/cds-services"):
        assert_conforms(document, "GET", path, client.get(path))


@pytest.mark.parametrize("folder", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_fixture_responses_conform(tmp_path: Path, issuer: TestIssuer, document: dict, folder: Path) -> None:
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    client = secure_app(tmp_path, issuer, now=expected["now"]).test_client()
    body = json.loads((folder / "request.json").read_text())
    url = service_url_for(client, body["hook"])
    response = client.post(url, json=body, headers=issuer.headers(url))
    assert response.status_code == expected.get("status", 200)
    assert_conforms(document, "POST", SERVICE_TEMPLATE, response)


def test_error_responses_conform(client, issuer: TestIssuer, document: dict) -> None:
    def post(path: str = SERVICE_URL, **kwargs):
        return client.post(path, headers=issuer.headers(path), **kwargs)

    cases = {
        400: post(data=b"{not json", content_type="application/json"),
        404: post("/cds-services/no-such-service", json=minimal_request()),
        412: post(json=minimal_request(prefetch={})),
        415: post(data=b"{}", content_type="text/plain"),
        401: client.post(SERVICE_URL, json=minimal_request()),
    }
    for status, response in cases.items():
        assert response.status_code == status, (status, response.get_data(as_text=True))
        assert_conforms(document, "POST", SERVICE_TEMPLATE, response)
    assert_conforms(document, "GET", SERVICE_TEMPLATE, client.get(SERVICE_URL, headers=issuer.headers(SERVICE_URL)))


def test_oversized_body_conforms(tmp_path: Path, issuer: TestIssuer, document: dict) -> None:
    client = secure_app(tmp_path, issuer, max_body_bytes=1024).test_client()
    response = client.post(SERVICE_URL, data=b" " * 4096, content_type="application/json",
                           headers=issuer.headers(SERVICE_URL))
    assert response.status_code == 413
    assert_conforms(document, "POST", SERVICE_TEMPLATE, response)


def test_feedback_responses_conform(client, issuer: TestIssuer, document: dict) -> None:
    answered = client.post(SERVICE_URL, json=json.loads((FIXTURES / "08-possible-dvt-two-signs-right" / "request.json").read_text()),
                           headers=issuer.headers(SERVICE_URL))
    cards = answered.get_json()["cards"]
    feedback_url = f"/cds-services/{SERVICE_ID}/feedback"
    item = {"card": cards[0]["uuid"] if cards else "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden", "overrideReason": {"userComment": "seen"},
            "outcomeTimestamp": "2026-06-15T12:00:00Z"}
    responses = [
        client.post(feedback_url, json={"feedback": [item]}, headers=issuer.headers(feedback_url)),
        client.post(feedback_url, json={"feedback": [{**item, "outcome": "maybe"}]}, headers=issuer.headers(feedback_url)),
        client.post(feedback_url, json={"feedback": [{**item, "card": "00000000-0000-4000-8000-000000000000"}]},
                    headers=issuer.headers(feedback_url)),
        client.post(feedback_url, json={"feedback": [item]}),
    ]
    assert [r.status_code for r in responses] == [200 if cards else 404, 400, 404, 401]
    for response in responses:
        assert_conforms(document, "POST", FEEDBACK_TEMPLATE, response)
