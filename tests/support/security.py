"""A test CDS client (JWT issuer) and a production-mode app that trusts it: for the HTTP-level security,
OpenAPI and fuzz tests. Not development mode: every /cds-services call needs a valid JWT.

    issuer = TestIssuer.create()
    app = secure_app(tmp_path, issuer)
    client.post(SERVICE_URL, json=body, headers=issuer.headers(SERVICE_URL))   # a fresh jti each time

    with SecureServer(tmp_path, issuer) as server:           # the same under real gunicorn (cramp-cds serve)
        http_request(server.base, "POST", SERVICE_URL, headers, body)
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app
from support.live_service import free_port, wait_healthy  # noqa: F401  (free_port: for importers)

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


def padded_token(issuer: TestIssuer, aud: str, size: int) -> str:
    """A valid token for ``aud`` of at most ``size`` characters, as long as padding a claim makes it."""
    token = issuer.token(urlsplit(aud).path, aud=aud, pad="")
    pad = "x" * int((size - len(token)) * 3 / 4)
    while len(token := issuer.token(urlsplit(aud).path, aud=aud, pad=pad)) > size:
        pad = pad[:-1]
    return token


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


# ------------------------------------------------------------------ the service under real gunicorn


class SecureServer:
    """`cramp-cds serve` in production mode (no --dev) on 127.0.0.1:``port``, trusting ``issuer``, with
    ``public_base_url`` as CRAMP_PUBLIC_BASE_URL (the JWT audience); its own URL unless given. Use as a
    context manager: started and healthy inside, terminated on exit."""

    def __init__(self, directory: Path, issuer: TestIssuer, *, public_base_url: str | None = None,
                 workers: int = 1, threads: int = 2, **extra_env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.public_base_url = public_base_url or self.base
        self.directory = directory
        self.env = {
            **os.environ,
            "CRAMP_TRUSTED_CLIENTS_FILE": str(write_trusted_clients(directory, issuer)),
            "CRAMP_PUBLIC_BASE_URL": self.public_base_url,
            "CRAMP_PATIENT_KEY_SECRET": PATIENT_KEY_SECRET,
            "CRAMP_DATABASE_URL": f"sqlite:///{directory / 'cards.sqlite3'}",
            "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"),
            **extra_env,
        }
        self.env.pop("CRAMP_DEV_MODE", None)
        self.command = [sys.executable, "-m", "cds_service.cli.main", "serve", "--port", str(self.port),
                        "--workers", str(workers), "--threads", str(threads)]
        self.process: Any = None

    def __enter__(self) -> "SecureServer":
        self._log = open(self.directory / "server.log", "wb")
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.directory, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        wait_healthy(self.base, self.process, log_path=self.directory / "server.log")
        return self

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except Exception:  # noqa: BLE001 - a server that does not stop is killed
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def http_request(base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None):
    """One request with exactly these headers (Host included when given): (status, headers, body)."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()
