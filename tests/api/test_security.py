"""Security through the HTTP app as production runs it (not development mode), with a test issuer:

- an attack table: each hostile request is refused with the right status, the right body (bare 401 with
  ``WWW-Authenticate``; an OperationOutcome otherwise, without internals), the security headers, and no
  outbound request (``no_network``: ``responses`` with nothing registered, and raw sockets refused);
- the ``fhirServer`` allowlist: checked before any network call (metadata address, private address,
  ``file://``, plain http, look-alike hosts, a redirecting host);
- hardening: body size, JSON nesting, content type, security headers on every response;
- development mode: never the default, not in the Docker image, loud at start and on every request;
- a log scan: every fixture plus a fetch with an access token, logging at DEBUG, and no patient name,
  identifier, birth date, access token or JWT in the output.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest
import responses
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.auth.rejection import CATEGORIES
from cds_service.header_limits import MAX_HEADER_BYTES, MAX_HEADER_FIELD_BYTES, MAX_TOKEN_BYTES
from cds_service.settings import Settings, SettingsError
from cds_service.web.app import DEV_MODE_WARNING, SECURITY_HEADERS, create_app
from cds_service.web.logs import JsonFormatter
from cds_service.web.openapi import openapi_document
from support.hook_requests import SERVICE_ID, SERVICE_URL, minimal_request, patient_resource, searchset
from support.security import (FHIR_SERVER, KID, PATIENT_KEY_SECRET, PUBLIC_BASE_URL, TestIssuer, assert_conforms,
                              secure_app, service_url_for)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fhir_fixtures"
SCENARIOS = sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists())
FEEDBACK_URL = f"/cds-services/{SERVICE_ID}/feedback"
INTERNALS = re.compile(r"Traceback|File \"|\.py\b|sqlalchemy|psycopg|orjson|pydantic|0x[0-9a-f]{6,}", re.I)


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer.create()


@pytest.fixture
def app(tmp_path: Path, issuer: TestIssuer):
    return secure_app(tmp_path, issuer)


@pytest.fixture
def client(app):
    return app.test_client()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def assert_security_headers(response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, f"{response.status_code}: {name} missing"


def assert_bare_401(response, category: str | None = None) -> None:
    """An empty 401 whose WWW-Authenticate names RFC 6750's invalid_token and a coarse category (the one
    given, when given), with the request id an integrator can look the full reason up by."""
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_data() == b""
    match = re.fullmatch(r'Bearer error="invalid_token", error_description="([a-z]+)"',
                         response.headers["WWW-Authenticate"])
    assert match and match[1] in CATEGORIES, response.headers["WWW-Authenticate"]
    if category is not None:
        assert match[1] == category, response.headers["WWW-Authenticate"]
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", response.headers["X-Request-ID"])
    assert_security_headers(response)


def assert_operation_outcome(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert not INTERNALS.search(response.get_data(as_text=True)), response.get_data(as_text=True)
    assert_security_headers(response)
    return body


# -------------------------------------------------------------------------- the JWT attack table


def _forge_hs384_with_public_key(issuer: TestIssuer) -> str:
    header = b64url(json.dumps({"alg": "HS384", "typ": "JWT", "kid": KID}).encode())
    payload = b64url(json.dumps(issuer.claims(SERVICE_URL)).encode())
    signature = hmac.new(issuer.public_pem, f"{header}.{payload}".encode(), hashlib.sha384).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def _alg_none(issuer: TestIssuer) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": KID}).encode())
    return f"{header}.{b64url(json.dumps(issuer.claims(SERVICE_URL)).encode())}."


def _tampered(issuer: TestIssuer) -> str:
    header, _, signature = issuer.token(SERVICE_URL).split(".")
    payload = issuer.claims(SERVICE_URL, sub="Practitioner/admin", tenant="other")
    return f"{header}.{b64url(json.dumps(payload).encode())}.{signature}"


def _attacker(issuer: TestIssuer, **header: Any) -> str:
    attacker = TestIssuer(ec.generate_private_key(ec.SECP384R1()))
    return attacker.token(SERVICE_URL, header=header)


NOW = int(time.time())
# attack -> (the Authorization header it sends, the category its 401 names in WWW-Authenticate)
ATTACKS: dict[str, tuple[Callable[[TestIssuer], str | None], str]] = {
    "no Authorization header": (lambda i: None, "missing"),
    "not the Bearer scheme": (lambda i: "Basic " + base64.b64encode(b"user:pass").decode(), "missing"),
    "malformed token": (lambda i: "Bearer not-a.jwt", "malformed"),
    "three parts but not JSON": (lambda i: "Bearer abc.def.ghi", "malformed"),
    "alg none": (lambda i: f"Bearer {_alg_none(i)}", "malformed"),  # "none" leaves no signature: not a JWS
    "HS384 signed with the public key as secret": (lambda i: f"Bearer {_forge_hs384_with_public_key(i)}",
                                                   "signature"),
    "unknown kid": (lambda i: f"Bearer {i.token(SERVICE_URL, header={'kid': 'unknown-kid'})}", "signature"),
    "unknown iss": (lambda i: f"Bearer {i.token(SERVICE_URL, iss='https://evil.example/oauth2')}", "issuer"),
    "jku not allowlisted (attacker's key)": (lambda i: f"Bearer {_attacker(i, jku='https://evil.example/jwks.json')}",
                                             "signature"),
    "signed by another key with the same kid": (lambda i: f"Bearer {_attacker(i)}", "signature"),
    "expired": (lambda i: f"Bearer {i.token(SERVICE_URL, iat=NOW - 3600, exp=NOW - 3000)}", "expired"),
    "iat in the future": (lambda i: f"Bearer {i.token(SERVICE_URL, iat=NOW + 3600, exp=NOW + 3900)}", "expired"),
    "nbf in the future": (lambda i: f"Bearer {i.token(SERVICE_URL, nbf=NOW + 3600)}", "expired"),
    "lifetime over an hour": (lambda i: f"Bearer {i.token(SERVICE_URL, exp=NOW + 86400)}", "expired"),
    "wrong aud (another service)": (lambda i: f"Bearer {i.token('/cds-services/other-service')}", "audience"),
    "wrong aud (the feedback endpoint)": (lambda i: f"Bearer {i.token(FEEDBACK_URL)}", "audience"),
    "aud of another host": (lambda i: f"Bearer {i.token(SERVICE_URL, aud='https://evil.example' + SERVICE_URL)}",
                            "audience"),
    "no jti": (lambda i: f"Bearer {i.token(SERVICE_URL, jti=None)}", "malformed"),
    "tampered payload": (lambda i: f"Bearer {_tampered(i)}", "signature"),
    "token one byte over 16 KiB": (lambda i: "Bearer " + "a" * (MAX_TOKEN_BYTES - 3) + ".b.c", "malformed"),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_is_refused_with_a_bare_401_and_no_outbound_request(attack: str, client, issuer, no_network) -> None:
    make_header, category = ATTACKS[attack]
    authorization = make_header(issuer)
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.post(SERVICE_URL, json=minimal_request(), headers=headers)
    assert_bare_401(response, category)
    assert no_network.attempts == []


def test_every_401_category_is_reachable_and_none_other_exists() -> None:
    assert {category for _, category in ATTACKS.values()} | {"replayed"} == set(CATEGORIES)


def test_the_401_says_nothing_of_the_token_or_the_keys(client, issuer) -> None:
    token = issuer.token(SERVICE_URL, aud="https://evil.example" + SERVICE_URL)
    response = client.post(SERVICE_URL, json=minimal_request(), headers={"Authorization": f"Bearer {token}",
                                                                         "X-Request-ID": "trace-401"})
    assert_bare_401(response, "audience")
    assert response.headers["X-Request-ID"] == "trace-401"
    everything = " ".join(f"{name}: {value}" for name, value in response.headers.items())
    for secret in (*token.split("."), KID, "evil.example", issuer.issuer, SERVICE_URL):
        assert secret not in everything


# Tokens of the table are minted for the service endpoint, so at the feedback endpoint a valid-looking one
# fails on its audience first (aud is checked before the validity window).
@pytest.mark.parametrize(("attack", "category"), [("no Authorization header", "missing"), ("alg none", "malformed"),
                                                  ("expired", "audience"), ("wrong aud (another service)", "audience")])
def test_feedback_endpoint_is_protected_too(attack: str, category: str, client, issuer, no_network) -> None:
    make_header, _ = ATTACKS[attack]
    authorization = make_header(issuer)
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.post(FEEDBACK_URL, json={"feedback": []}, headers=headers)
    assert_bare_401(response, category)


def test_a_valid_token_is_accepted_once_then_replay_is_refused(client, issuer, no_network) -> None:
    token = issuer.token(SERVICE_URL)
    first = client.post(SERVICE_URL, json=minimal_request(), headers={"Authorization": f"Bearer {token}"})
    assert first.status_code == 200, first.get_data(as_text=True)
    assert_security_headers(first)
    replayed = client.post(SERVICE_URL, json=minimal_request(), headers={"Authorization": f"Bearer {token}"})
    assert_bare_401(replayed, "replayed")
    assert no_network.attempts == []


# The audience attack of issue 11 item 2: a token minted for another service, sent with that service's
# Host (and, over https, X-Forwarded-Proto) so that a request-derived audience would match it.
HOST_ATTACKS = {
    "https, other Host, X-Forwarded-Proto": ("https://other-cds.example",
                                             {"Host": "other-cds.example", "X-Forwarded-Proto": "https"}),
    "plain http, only Host changed": ("http://other-cds.example", {"Host": "other-cds.example"}),
    "X-Forwarded-Host": ("https://other-cds.example",
                         {"X-Forwarded-Host": "other-cds.example", "X-Forwarded-Proto": "https"}),
}


@pytest.mark.parametrize("attack", list(HOST_ATTACKS), ids=list(HOST_ATTACKS))
def test_the_audience_never_follows_the_request(attack: str, client, issuer) -> None:
    minted_for, headers = HOST_ATTACKS[attack]
    token = issuer.token(SERVICE_URL, aud=minted_for + SERVICE_URL)
    base_url = minted_for if "Host" in headers else "http://localhost"
    response = client.post(SERVICE_URL, json=minimal_request(), base_url=base_url,
                           headers={"Authorization": f"Bearer {token}", **headers})
    assert_bare_401(response, "audience")
    # The same request with a token for the configured public URL is served whatever the Host says.
    served = client.post(SERVICE_URL, json=minimal_request(), base_url=base_url,
                         headers={**issuer.headers(SERVICE_URL), **headers})
    assert served.status_code == 200, served.get_data(as_text=True)


def test_a_token_for_any_configured_public_url_is_accepted(tmp_path: Path, issuer) -> None:
    urls = ("https://cds.example.org", "https://cds-internal.example.org/cramp")
    client = secure_app(tmp_path, issuer, public_base_urls=", ".join(urls)).test_client()
    for url in urls:
        response = client.post(SERVICE_URL, json=minimal_request(),
                               headers=issuer.headers(SERVICE_URL, aud=url + SERVICE_URL))
        assert response.status_code == 200, response.get_data(as_text=True)
    token = issuer.token(SERVICE_URL, aud=PUBLIC_BASE_URL + SERVICE_URL)  # not configured here
    assert_bare_401(client.post(SERVICE_URL, json=minimal_request(), headers={"Authorization": f"Bearer {token}"}),
                    "audience")


def test_outside_development_mode_the_public_base_url_is_required(tmp_path: Path, issuer) -> None:
    with pytest.raises(SettingsError, match=r"^CRAMP_PUBLIC_BASE_URL: required outside development mode"):
        secure_app(tmp_path, issuer, public_base_urls=())
    # development mode authenticates nobody, so it needs no audience
    assert create_app(Settings(development_mode=True, database_url="sqlite://")).test_client() \
        .post(SERVICE_URL, json=minimal_request()).status_code == 200


# ------------------------------------------------------------------------------ header limits


def test_a_16_kib_token_gets_past_the_header_limits(client, issuer) -> None:
    token = "a" * (MAX_TOKEN_BYTES - 4) + ".b.c"  # exactly 16 KiB, not a real JWT
    response = client.post(SERVICE_URL, json=minimal_request(), headers={"Authorization": f"Bearer {token}"})
    assert_bare_401(response, "malformed")


@pytest.mark.parametrize("place", ["Authorization", "X-Padding", "many headers"])
def test_headers_over_the_limit_are_431_with_an_operation_outcome(place: str, client, issuer, no_network) -> None:
    headers = issuer.headers(SERVICE_URL)
    if place == "Authorization":
        headers["Authorization"] = "Bearer " + "a" * MAX_HEADER_FIELD_BYTES
    elif place == "X-Padding":
        headers["X-Padding"] = "p" * MAX_HEADER_FIELD_BYTES
    else:
        headers.update({f"X-Pad-{n}": "p" * 8000 for n in range(MAX_HEADER_BYTES // 8000 + 1)})
    response = client.post(SERVICE_URL, json=minimal_request(), headers=headers)
    outcome = assert_operation_outcome(response, 431)
    assert outcome["issue"][0]["code"] == "too-long"
    assert "limit" in outcome["issue"][0]["diagnostics"]
    assert response.headers["X-Request-ID"]
    assert_conforms(openapi_document(), "POST", "/cds-services/{id}", response)


def test_each_401_conforms_to_the_api_description(client, issuer) -> None:
    document = openapi_document()
    for attack in ("no Authorization header", "expired", "wrong aud (another service)", "tampered payload"):
        authorization = ATTACKS[attack][0](issuer)
        response = client.post(SERVICE_URL, json=minimal_request(),
                               headers={"Authorization": authorization} if authorization else {})
        assert_conforms(document, "POST", "/cds-services/{id}", response)


def test_refusals_log_the_reason_never_the_token(client, issuer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = issuer.token(SERVICE_URL, iat=NOW - 3600, exp=NOW - 3000)
    assert_bare_401(client.post(SERVICE_URL, json=minimal_request(), headers={"Authorization": f"Bearer {token}"}))
    reasons = [r.__dict__.get("reason", "") for r in caplog.records if r.getMessage() == "CDS client rejected"]
    assert any("expired" in reason for reason in reasons)
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


# ------------------------------------------------------------------------------ body hardening


def test_oversized_body_is_413_with_an_operation_outcome(tmp_path: Path, issuer, no_network) -> None:
    client = secure_app(tmp_path, issuer, max_body_bytes=64 * 1024).test_client()
    body = json.dumps(minimal_request(extension={"pad": "x" * 100_000})).encode()
    response = client.post(SERVICE_URL, data=body, content_type="application/json", headers=issuer.headers(SERVICE_URL))
    assert_operation_outcome(response, 413)
    feedback = client.post(FEEDBACK_URL, data=body, content_type="application/json", headers=issuer.headers(FEEDBACK_URL))
    assert_operation_outcome(feedback, 413)


def test_oversized_body_without_a_token_is_refused_before_reading(tmp_path: Path, issuer) -> None:
    client = secure_app(tmp_path, issuer, max_body_bytes=1024).test_client()
    assert_bare_401(client.post(SERVICE_URL, data=b"{" * 10_000, content_type="application/json"))


def test_the_default_body_limit_is_16_mib() -> None:
    assert Settings().max_body_bytes == 16 * 1024 * 1024


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml", None])
def test_wrong_content_type_is_415(content_type: str | None, client, issuer) -> None:
    kwargs = {"content_type": content_type} if content_type else {}
    response = client.post(SERVICE_URL, data=json.dumps(minimal_request()), headers=issuer.headers(SERVICE_URL), **kwargs)
    assert_operation_outcome(response, 415)


@pytest.mark.parametrize("content_type", ["application/json", "application/fhir+json", "application/json; charset=utf-8"])
def test_json_content_types_are_accepted(content_type: str, client, issuer) -> None:
    response = client.post(SERVICE_URL, data=json.dumps(minimal_request()), content_type=content_type,
                           headers=issuer.headers(SERVICE_URL))
    assert response.status_code == 200


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("depth", [1025, 10_000, 100_000])
def test_deep_nesting_is_400(depth: int, client, issuer) -> None:
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        body = '{"hook":"patient-view","extension":' + opener * depth + "1" + closer * depth + "}"
        started = time.monotonic()
        response = client.post(SERVICE_URL, data=body, content_type="application/json", headers=issuer.headers(SERVICE_URL))
        assert time.monotonic() - started < 5
        outcome = assert_operation_outcome(response, 400)
        assert "nested too deeply" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("place", ["extension", "prefetch", "condition", "context"])
def test_nesting_just_under_the_parser_limit_is_no_5xx(place: str, client, issuer) -> None:
    """The parser accepts 1024 levels; whatever walks the data afterwards must not hit Python's recursion limit."""
    deep = '{"a":' * 1015 + "1" + "}" * 1015  # built as text: Python's json cannot encode it
    marker = "DEEP-MARKER"
    body = minimal_request()
    if place == "extension":
        body["extension"] = marker
    elif place == "prefetch":
        body["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": marker}]}
    elif place == "condition":
        body["prefetch"]["conditions"] = searchset({"resourceType": "Condition", "id": "c1", "code": marker,
                                                    "subject": {"reference": "Patient/p-zq-1"}})
    else:
        body["context"]["draftOrders"] = marker
    data = json.dumps(body).replace(f'"{marker}"', deep)
    response = client.post(SERVICE_URL, data=data, content_type="application/json", headers=issuer.headers(SERVICE_URL))
    assert response.status_code < 500, response.get_data(as_text=True)
    assert_security_headers(response)


def test_security_headers_on_every_kind_of_response(client, issuer) -> None:
    responses_seen = [
        client.get("/healthz"),
        client.get("/readyz"),
        client.get("/openapi.json"),
        client.get("/cds-services"),
        client.get("/no-such-path"),
        client.put(SERVICE_URL, headers=issuer.headers(SERVICE_URL)),  # 405
        client.post(SERVICE_URL, json=minimal_request()),  # 401
        client.post(SERVICE_URL, json=minimal_request(), headers=issuer.headers(SERVICE_URL)),  # 200
        client.post(SERVICE_URL, data=b"{", content_type="application/json", headers=issuer.headers(SERVICE_URL)),  # 400
        client.post("/cds-services/nope", json={}, headers=issuer.headers("/cds-services/nope")),  # 404
        client.post(SERVICE_URL, json=minimal_request(prefetch={}), headers=issuer.headers(SERVICE_URL)),  # 412
        client.post(SERVICE_URL, data=b"{}", content_type="text/plain", headers=issuer.headers(SERVICE_URL)),  # 415
        client.options(SERVICE_URL, headers={"Origin": "https://sandbox.cds-hooks.org",
                                             "Access-Control-Request-Method": "POST"}),
    ]
    assert {r.status_code for r in responses_seen} >= {200, 400, 401, 404, 405, 412, 415}
    for response in responses_seen:
        assert_security_headers(response)


def test_an_unexpected_error_is_a_500_without_internals(app, issuer, monkeypatch) -> None:
    engine = app.extensions["leg_cramp_engine"]

    def explode(*args: Any, **kwargs: Any):
        raise RuntimeError("secret internals: /srv/app/cds_service/engine/pipeline.py line 42 password=hunter2")

    monkeypatch.setattr(type(engine), "invoke", explode)
    response = app.test_client().post(SERVICE_URL, json=minimal_request(), headers=issuer.headers(SERVICE_URL))
    body = assert_operation_outcome(response, 500)
    assert "hunter2" not in json.dumps(body) and "secret" not in json.dumps(body)


# ------------------------------------------------------------------------ the fhirServer allowlist


def _fetch_request(fhir_server: str) -> dict[str, Any]:
    """A request whose required data must be fetched (no prefetch), with an access token for the server."""
    return minimal_request(
        prefetch={},
        fhirServer=fhir_server,
        fhirAuthorization={"access_token": "at-SECRET-123", "token_type": "Bearer", "expires_in": 300,
                           "scope": "patient/*.read", "subject": "cds-service"},
    )


REFUSED_SERVERS = {
    "cloud metadata address": "http://169.254.169.254/",
    "cloud metadata over https": "https://169.254.169.254/latest/meta-data",
    "private address": "https://10.0.0.5/fhir",
    "loopback": "https://127.0.0.1/fhir",
    "file URL": "file:///etc/passwd",
    "gopher URL": "gopher://fhir.test.example/r4",
    "plain http to the allowlisted host": "http://fhir.test.example/r4",
    "look-alike host": "https://fhir.test.example.evil.com/r4",
    "credentials before the host": "https://fhir.test.example@evil.com/r4",
    "sibling path": "https://fhir.test.example/r4-evil",
    "dot segments out of the allowed path": "https://fhir.test.example/r4/../admin",
    "a host that redirects elsewhere (not allowlisted)": "https://redirector.example/fhir",
    "not a URL": "fhir.test.example/r4",
}


@pytest.mark.parametrize("name", list(REFUSED_SERVERS), ids=list(REFUSED_SERVERS))
def test_fhir_server_not_allowed_is_412_without_any_network_call(name: str, client, issuer, no_network) -> None:
    response = client.post(SERVICE_URL, json=_fetch_request(REFUSED_SERVERS[name]), headers=issuer.headers(SERVICE_URL))
    outcome = assert_operation_outcome(response, 412)
    assert "no request was made" in outcome["issue"][0]["diagnostics"]
    assert "at-SECRET-123" not in response.get_data(as_text=True)
    assert no_network.attempts == []


def test_an_allowlisted_server_that_redirects_is_not_followed(client, issuer, no_network) -> None:
    for path in ("Patient/p-zq-1", "Condition"):
        no_network._mock.add(responses.GET, re.compile(re.escape(f"{FHIR_SERVER}/{path}") + r"(\?.*)?$"),
                             status=302, headers={"Location": "http://169.254.169.254/latest/meta-data"})
    response = client.post(SERVICE_URL, json=_fetch_request(FHIR_SERVER), headers=issuer.headers(SERVICE_URL))
    assert_operation_outcome(response, 412)
    called = [call.request.url for call in no_network._mock.calls]
    assert called and all(url.startswith(FHIR_SERVER + "/") for url in called)
    no_network._mock.reset()  # the calls above went only to the allowlisted server (asserted); clear for the guard


# ----------------------------------------------------------------------------- development mode


def test_default_settings_require_authentication(no_network) -> None:
    assert Settings().development_mode is False
    assert Settings.from_env({}).development_mode is False
    app = create_app(Settings(database_url="sqlite://", patient_key_secret=PATIENT_KEY_SECRET,
                              public_base_urls=PUBLIC_BASE_URL))
    client = app.test_client()
    assert_bare_401(client.post(SERVICE_URL, json=minimal_request()), "missing")
    assert_bare_401(client.post(FEEDBACK_URL, json={"feedback": []}), "missing")
    assert client.get("/healthz").status_code == 200


def test_default_settings_trust_nobody(tmp_path: Path, issuer: TestIssuer) -> None:
    client = create_app(Settings(database_url="sqlite://", patient_key_secret=PATIENT_KEY_SECRET,
                                 public_base_urls=PUBLIC_BASE_URL)).test_client()
    assert_bare_401(client.post(SERVICE_URL, json=minimal_request(), headers=issuer.headers(SERVICE_URL)), "issuer")


def test_dockerfile_does_not_enable_development_mode() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        code = line.split("#", 1)[0]
        if "CRAMP_DEV_MODE" in code:
            assert re.search(r"CRAMP_DEV_MODE\s*[= ]\s*[\"']?(0|false|no|off)\b", code, re.I), line


def test_development_mode_warns_at_start_and_on_every_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app = create_app(Settings(development_mode=True, database_url="sqlite://"))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING and r.getMessage() == DEV_MODE_WARNING]
    client = app.test_client()
    for path in (SERVICE_URL, SERVICE_URL, "/cds-services"):
        caplog.clear()
        if path == "/cds-services":
            client.get(path)
        else:
            assert client.post(path, json=minimal_request()).status_code == 200  # no token needed
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "development mode" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    caplog.clear()
    client.get("/healthz")
    assert not [r for r in caplog.records if "development mode" in r.getMessage()]


# ------------------------------------------------------------------------------------ log scan


def _patients(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("resourceType") == "Patient":
            found.append(node)
        for value in node.values():
            found += _patients(value)
    elif isinstance(node, list):
        for value in node:
            found += _patients(value)
    return found


def _phi_of(patients: list[dict[str, Any]]) -> set[str]:
    values = set()
    for patient in patients:
        for name in patient.get("name", []):
            values.update(filter(None, [name.get("family"), name.get("text"), *name.get("given", [])]))
        values.update(i["value"] for i in patient.get("identifier", []) if i.get("value"))
        if patient.get("birthDate"):
            values.add(patient["birthDate"])
    return values


FETCHED_PATIENT = patient_resource(
    identifier=[{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-7734119"}],
    name=[{"family": "Quixote", "given": ["Zebulon", "Alonso"], "text": "Zebulon Alonso Quixote"}],
    birthDate="1951-07-19",
)


def test_logs_hold_no_phi_tokens_or_jwts(tmp_path: Path, issuer: TestIssuer, no_network) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    raw_records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raw_records.append(record)

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    for name in ("werkzeug", "flask", "flask.app", "urllib3", "requests", "sqlalchemy", "alembic"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    root.handlers = [handler, Keep()]  # create_app keeps an existing JSON handler and sets the level
    try:
        phi: set[str] = set()
        for folder in SCENARIOS:
            body = json.loads((folder / "request.json").read_text())
            phi |= _phi_of(_patients(body))
            now = yaml.safe_load((folder / "expected.yaml").read_text())["now"]
            client = secure_app(tmp_path, issuer, now=now, log_level="DEBUG").test_client()
            assert root.level == logging.DEBUG
            url = service_url_for(client, body["hook"])
            response = client.post(url, json=body, headers=issuer.headers(url))
            assert response.status_code == 200, response.get_data(as_text=True)
            # the same patient refused: a replayed token, a malformed body, feedback on an unknown card
            token = issuer.token(url)
            client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
            assert client.post(url, json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 401
            assert client.post(url, json={**body, "hook": 7}, headers=issuer.headers(url)).status_code == 400
            for card in response.get_json()["cards"]:
                feedback = url + "/feedback"
                item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": now,
                        "overrideReason": {"userComment": "seen"}}
                assert client.post(feedback, json={"feedback": [item]}, headers=issuer.headers(feedback)).status_code == 200

        # A fetch with fhirAuthorization from the allowlisted server (mocked), and a refused server.
        phi |= _phi_of([FETCHED_PATIENT])
        mock = no_network._mock
        mock.add(responses.GET, f"{FHIR_SERVER}/Patient/p-zq-1", json=FETCHED_PATIENT)
        client = secure_app(tmp_path, issuer, log_level="DEBUG").test_client()
        templates = next(s for s in client.get("/cds-services").get_json()["services"]
                         if f"/cds-services/{s['id']}" == SERVICE_URL)["prefetch"]
        searched = {template.split("?", 1)[0] for template in templates.values() if "?" in template}
        for resource_type in searched:  # every search the service's prefetch templates make
            mock.add(responses.GET, re.compile(re.escape(f"{FHIR_SERVER}/{resource_type}") + r"\?.*"), json=searchset())
        fetched = client.post(SERVICE_URL, json=_fetch_request(FHIR_SERVER), headers=issuer.headers(SERVICE_URL))
        assert fetched.status_code == 200, fetched.get_data(as_text=True)
        assert all(call.request.headers["Authorization"] == "Bearer at-SECRET-123" for call in mock.calls)
        assert len(mock.calls) == len(templates)  # one call per prefetch key
        refused = client.post(SERVICE_URL, json=_fetch_request("https://10.0.0.5/fhir"), headers=issuer.headers(SERVICE_URL))
        assert refused.status_code == 412
        mock.reset()
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])

    output = stream.getvalue()
    everything = output + "\n".join(repr(vars(record)) for record in raw_records)
    assert len(raw_records) > 3 * len(SCENARIOS)
    assert any(r.levelno == logging.DEBUG for r in raw_records) or root.level == logging.DEBUG
    secrets = {"access token": ["at-SECRET-123"]}
    secrets["JWT"] = list(issuer.minted) + [part for token in issuer.minted for part in token.split(".")[1:]]
    secrets["PHI"] = sorted(phi)
    for kind, values in secrets.items():
        for value in values:
            pattern = re.compile(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])")
            match = pattern.search(everything)
            assert match is None, f"{kind} {value[:40]!r} in the logs: ...{everything[max(0, match.start() - 200):match.end() + 50]}"
    assert "Quixote" not in everything and "MRN-7734119" not in everything
