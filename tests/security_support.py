"""A test CDS client (JWT issuer) and a production-mode app that trusts it: for the HTTP-level security,
OpenAPI and fuzz tests. Not development mode: every /cds-services call needs a valid JWT.

    issuer = TestIssuer.create()
    app = secure_app(tmp_path, issuer)
    client.post(SERVICE_URL, json=body, headers=issuer.headers(SERVICE_URL))   # a fresh jti each time
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from cds_service.app import create_app
from cds_service.clock import fixed_clock
from cds_service.settings import Settings

ISSUER = "https://ehr.test.example/oauth2"
KID = "test-es384-1"
PUBLIC_BASE_URL = "http://localhost"
FHIR_SERVER = "https://fhir.test.example/r4"
PATIENT_KEY_SECRET = "test-secret-0123456789abcdef"
CLOCK_NOW = "2026-06-15T12:00:00Z"


@dataclass
class TestIssuer:
    """An ES384 key pair; mints tokens for this service's endpoints and remembers every one it minted."""

    __test__ = False  # not a pytest class

    private: ec.EllipticCurvePrivateKey
    issuer: str = ISSUER
    kid: str = KID
    minted: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> "TestIssuer":
        return cls(ec.generate_private_key(ec.SECP384R1()))

    @property
    def jwk(self) -> dict[str, Any]:
        data = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "alg": "ES384", "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, path: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        values: dict[str, Any] = {
            "iss": self.issuer,
            "aud": PUBLIC_BASE_URL + path,
            "iat": now - 5,
            "exp": now + 295,
            "jti": str(uuid.uuid4()),
        }
        values.update(overrides)
        return {k: v for k, v in values.items() if v is not None}

    def token(self, path: str, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
        headers = {"kid": self.kid, "typ": "JWT", **(header or {})}
        token = jwt.encode(self.claims(path, **claims), self.private, algorithm="ES384", headers=headers)
        self.minted.append(token)
        return token

    def headers(self, path: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(path, **claims)}"}


def write_trusted_clients(directory: Path, issuer: TestIssuer, **client_fields: Any) -> Path:
    """A trusted-clients YAML trusting ``issuer`` with a JWKS file beside it."""
    jwks_path = directory / "test-jwks.json"
    jwks_path.write_text(json.dumps({"keys": [issuer.jwk]}))
    config = directory / "trusted-clients.yaml"
    client = {"issuer": issuer.issuer, "jwks_file": jwks_path.name, "algorithms": ["ES384"], **client_fields}
    config.write_text(yaml.safe_dump({"clients": [client]}))
    return config


def secure_settings(directory: Path, issuer: TestIssuer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "trusted_clients_path": write_trusted_clients(directory, issuer),
        "public_base_urls": PUBLIC_BASE_URL,
        "database_url": "sqlite://",
        "patient_key_secret": PATIENT_KEY_SECRET,
        "fhir_server_allowlist": (FHIR_SERVER,),
    }
    values.update(overrides)
    return Settings(**values)


def secure_app(directory: Path, issuer: TestIssuer, *, now: str = CLOCK_NOW, **overrides: Any):
    """The service as production runs it (no development mode), trusting ``issuer``."""
    settings = secure_settings(directory, issuer, **overrides)
    assert not settings.development_mode
    return create_app(settings, clock=fixed_clock(now))


# ------------------------------------------------------------------------ OpenAPI conformance


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def openapi_response_spec(document: dict[str, Any], method: str, template: str, status: int) -> dict[str, Any]:
    operation = document["paths"][template][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {template}: status {status} is not documented"
    return _resolve(document, responses[str(status)])


def assert_conforms(document: dict[str, Any], method: str, template: str, response: Any) -> None:
    """``response`` (a Flask test response) has a documented status, content type, headers and body."""
    from jsonschema import Draft202012Validator, FormatChecker

    spec = openapi_response_spec(document, method, template, response.status_code)
    for name, header in (spec.get("headers") or {}).items():
        header = _resolve(document, header)
        if header.get("required"):
            assert name in response.headers, f"{response.status_code}: header {name} missing"
        if name in response.headers:
            Draft202012Validator(header["schema"]).validate(response.headers[name])
    content = spec.get("content")
    if not content:
        assert response.get_data() == b"", f"{response.status_code}: a body where none is documented"
        return
    mimetype = response.mimetype
    assert mimetype in content, f"{response.status_code}: content type {mimetype} not documented ({list(content)})"
    schema = content[mimetype]["schema"]
    if mimetype.endswith("json"):
        body = json.loads(response.get_data())
        validator = Draft202012Validator(
            {"components": document["components"], **schema}, format_checker=FormatChecker()
        )
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{method} {template} {response.status_code}: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5]
        )


def service_url_for(client: Any, hook: str) -> str:
    """The URL of the service answering ``hook``, from discovery (open in a production app by default)."""
    services = client.get("/cds-services").get_json()["services"]
    return next(f"/cds-services/{s['id']}" for s in services if s["hook"] == hook)
