"""``cramp-cds invoke``, ``check-server`` and ``load-fixtures`` without a FHIR server: a live service over
HTTP for invoke (--from-file; a signed client JWT against a service that authenticates), canned FHIR answers
(``responses``) for check-server and load-fixtures, and the exit codes. The real FHIR server is in
tests/integration/test_fhir_integration.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import jwt
import pytest
import responses
import yaml
from click.testing import CliRunner

from support.card_kinds import card_id
from support.live_service import ISSUER, KID, serve_app
from cds_service.cli.invoke import sign_call
from cds_service.cli.load_fixtures import fixture_resources, transaction_resources
from cds_service.cli.main import main
from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fhir_fixtures" / "05-cramps-varicose-snomed"
NOW = "2026-06-15T12:00:00Z"
FHIR = "https://fhir.example.org/r4"


@pytest.fixture(scope="module")
def secure_service(ec_key, tmp_path_factory) -> Iterator[str]:
    """A service that authenticates its clients (not development mode), trusting ISSUER's key."""
    _, jwk = ec_key
    clients = tmp_path_factory.mktemp("clients") / "clients.yaml"
    clients.write_text(yaml.safe_dump({"clients": [{"issuer": ISSUER, "jwks": {"keys": [jwk]}}]}))
    apps: list = []  # the server's URL is the app's public base URL (the JWT audience), known once it listens
    url, stop = serve_app(lambda environ, start_response: apps[0](environ, start_response))
    settings = Settings(database_url="sqlite://", trusted_clients_path=clients, patient_key_secret="x" * 32,
                        public_base_urls=url)
    apps.append(create_app(settings, clock=fixed_clock(NOW)))
    yield url
    stop()


@pytest.fixture(scope="module")
def dev_service() -> Iterator[str]:
    url, stop = serve_app(create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(NOW)))
    yield url
    stop()


def test_invoke_signed_jwt_is_accepted_and_without_it_401(secure_service: str, ec_key):
    key_path, _ = ec_key
    runner = CliRunner()
    common = ["invoke", "--service-url", secure_service, "--from-file", str(FIXTURE / "request.json")]
    signed = runner.invoke(main, [*common, "--jwt-key", str(key_path), "--jwt-kid", KID, "--jwt-iss", ISSUER])
    assert signed.exit_code == 0, signed.output
    assert "(card venous-duplex-workup)" in signed.stdout
    assert "suggestion: Order bilateral lower-extremity venous duplex ultrasound" in signed.stdout
    unsigned = runner.invoke(main, common)
    assert unsigned.exit_code == 1
    assert re.fullmatch(rf"Error: 401 from {secure_service}/cds-services/leg-cramp-patient-view: missing "
                        r"\(request id [A-Za-z0-9._:-]+\)\n", unsigned.stderr), unsigned.stderr


def test_client_jwt_claims(ec_key):
    """invoke signs with auth/client_keys.py (the one signer): the kid and iss given, aud the endpoint."""
    key_path, _ = ec_key
    token = sign_call(key_path, KID, ISSUER, "https://cds.example.org/cds-services/x")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header == {"alg": "ES384", "kid": KID, "typ": "JWT"}
    assert claims["aud"] == "https://cds.example.org/cds-services/x"
    assert claims["iss"] == ISSUER and claims["exp"] - claims["iat"] == 300 and claims["jti"]
    assert sign_call(key_path, KID, ISSUER, "https://cds.example.org/cds-services/x") != token  # fresh jti


def test_invoke_from_synthea_style_bundle_and_json_output(dev_service: str, tmp_path: Path):
    request = json.loads((FIXTURE / "request.json").read_text())
    entries = [{"fullUrl": f"urn:uuid:{i}", "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
               for i, r in enumerate(fixture_resources(request, "f"))]
    bundle = tmp_path / "patient.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    result = CliRunner().invoke(main, ["invoke", "--service-url", dev_service, "--from-file", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    assert [card_id(c) for c in json.loads(result.stdout)["cards"]] == ["venous-duplex-workup"]


@pytest.mark.parametrize("args, message", [
    (["--from-file", "/no/such/file.json"], "--from-file /no/such/file.json: cannot be read"),
    (["--patient", "p1"], "--prefetch needs --fhir-server or --from-file"),
    (["--patient", "p1", "--jwt-key", "k.pem"], "--jwt-key needs --jwt-kid and --jwt-iss"),
    (["--patient", "p1", "--fhir-token", "t"], "--fhir-token needs --fhir-server"),
])
def test_invoke_usage_errors_exit_2(args, message):
    result = CliRunner().invoke(main, ["invoke", "--service-url", "http://127.0.0.1:9", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_invoke_bad_file_names_the_field(tmp_path: Path, dev_service: str):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hook": "patient-view", "context": {"userId": "Practitioner/x"}}))
    result = CliRunner().invoke(main, ["invoke", "--service-url", dev_service, "--from-file", str(bad)])
    assert result.exit_code == 2
    assert f"--from-file {bad}: context.patientId is missing" in result.output
    orders = tmp_path / "orders.json"
    orders.write_text(json.dumps({"resourceType": "Patient"}))
    result = CliRunner().invoke(main, ["invoke", "--service-url", dev_service, "--hook", "order-sign",
                                       "--patient", "p", "--fhir-server", FHIR, "--no-prefetch",
                                       "--draft-orders", str(orders)])
    assert result.exit_code == 2
    assert f"--draft-orders {orders}: resourceType: expected a Bundle" in result.output


def _capability(types: dict[str, list[str]], transaction: bool = True, version: str = "4.0.1") -> dict:
    return {
        "resourceType": "CapabilityStatement", "fhirVersion": version, "format": ["application/fhir+json"],
        "rest": [{"mode": "server",
                  "interaction": [{"code": "transaction"}] if transaction else [],
                  "resource": [{"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}],
                                "searchParam": [{"name": p, "type": "token"} for p in params]}
                               for t, params in types.items()]}],
    }


@responses.activate
def test_check_server_missing_condition_search_exits_1():
    responses.get(f"{FHIR}/metadata", json=_capability({"Patient": [], "Condition": ["subject"]}))
    result = CliRunner().invoke(main, ["check-server", FHIR])
    assert result.exit_code == 1
    assert "[MISSING] Condition search by patient (required): missing: search parameter patient" in result.stdout
    assert "[missing] Observation search by patient and code (optional)" in result.stdout


@responses.activate
def test_check_server_wrong_fhir_version_exits_1():
    full = {"Patient": [], "Condition": ["patient"], "MedicationRequest": ["patient", "status"],
            "MedicationStatement": ["patient"], "Observation": ["patient", "code"]}
    responses.get(f"{FHIR}/metadata", json=_capability(full, version="5.0.0"))
    result = CliRunner().invoke(main, ["check-server", FHIR])
    assert result.exit_code == 1
    assert "MUST be 4.0.x" in result.stdout


@responses.activate
def test_load_fixtures_falls_back_to_puts_and_reports_failures(tmp_path: Path):
    fixtures = tmp_path / "fixtures" / "01"
    fixtures.mkdir(parents=True)
    (fixtures / "request.json").write_text((FIXTURE / "request.json").read_text())
    responses.get(f"{FHIR}/metadata", json=_capability({"Patient": []}, transaction=False))
    responses.put(f"{FHIR}/Patient/fixture-05", json={}, status=201)
    responses.put(f"{FHIR}/Condition/fixture-05-c1", status=422,
                  json={"resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad code"}]})
    responses.add_callback(responses.PUT, re.compile(rf"{re.escape(FHIR)}/.*"), callback=lambda r: (200, {}, "{}"))
    result = CliRunner().invoke(main, ["load-fixtures", FHIR, "--fixtures", str(tmp_path / "fixtures")])
    assert result.exit_code == 1, result.output
    assert "loaded (individual PUTs)" in result.stdout
    assert "FAILED:" in result.stdout and "PUT Condition/fixture-05-c1: HTTP 422 (error invalid: bad code)" in result.stdout
    puts = [call.request for call in responses.calls if call.request.method == "PUT"]
    body = json.loads(next(p.body for p in puts if p.url.endswith("/Condition/fixture-05-c2")))
    assert body["id"] == "fixture-05-c2" and body["subject"]["reference"] == "Patient/fixture-05"


def test_transaction_resources_keep_ids_and_rewrite_urns():
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaa", "resource": {"resourceType": "Patient", "id": "aaa"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:bbb", "resource": {"resourceType": "Condition", "id": "bbb",
                                                 "subject": {"reference": "urn:uuid:aaa"}},
         "request": {"method": "POST", "url": "Condition"}},
    ]}
    resources = transaction_resources(bundle, "b.json")
    assert [r["id"] for r in resources] == ["aaa", "bbb"]
    assert resources[1]["subject"] == {"reference": "Patient/aaa"}
    bundle["entry"][1]["resource"].pop("id")
    with pytest.raises(Exception, match=r"b.json: entry\[1\].resource.id"):
        transaction_resources(bundle, "b.json")
