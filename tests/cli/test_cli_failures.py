"""Every failure the integration CLI reports is ONE line, its cause first, with no traceback and no
urllib3 warning (issue 16 item 1). The real ``cramp-cds`` executable against real loopback servers: a port
nothing listens on, a plain-http server contacted with https, a service outside development mode given a
wrong kid or iss, and a service whose allowlist refuses a plain-http fhirServer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from support.fhir_server import LoopbackFhir, free_port
from support.live_service import ISSUER, serve_app
from cds_service.auth import client_keys
from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "cramp-cds"
FIXTURE = ROOT / "fhir_fixtures" / "05-cramps-varicose-snomed" / "request.json"
SERVICE = "leg-cramp-patient-view"
NOW = "2026-06-15T12:00:00Z"
NOISE = ("Traceback", "Max retries", "urllib3", "Warning", "WARNING", "HTTPConnectionPool")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's single stderr line (and nothing on stdout, no noise)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    for noise in NOISE:
        assert noise not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def dev_service() -> Iterator[str]:
    """Development mode (no authentication), an empty FHIR allowlist: every fhirServer is refused."""
    url, stop = serve_app(create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(NOW)))
    yield url
    stop()


@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "client.pem"
    client_keys.write_private_key(path, client_keys.generate_private_key("ES384"))
    return path


@pytest.fixture(scope="module")
def secure_service(client_key: Path, tmp_path_factory) -> Iterator[str]:
    """Outside development mode, trusting ISSUER's key (its kid: the key's thumbprint)."""
    key = client_keys.read_private_key(client_key)
    clients = tmp_path_factory.mktemp("clients") / "clients.yaml"
    entry = client_keys.trusted_client_entry(ISSUER, algorithm="ES384", jwks=client_keys.public_jwks(key))
    clients.write_text(yaml.safe_dump({"clients": [entry]}))
    apps: list = []
    url, stop = serve_app(lambda environ, start_response: apps[0](environ, start_response))
    settings = Settings(database_url="sqlite://", trusted_clients_path=clients, patient_key_secret="x" * 32,
                        public_base_urls=url)
    apps.append(create_app(settings, clock=fixed_clock(NOW)))
    yield url
    stop()


def test_cli_fhir_server_down_is_one_line(dev_service: str) -> None:
    down = f"http://127.0.0.1:{free_port()}/fhir"
    line = one_line(run_cli("invoke", "--service-url", dev_service, "--patient", "p1", "--fhir-server", down))
    assert line == f"Error: FHIR server {down} is not answering (connection refused)"
    line = one_line(run_cli("check-server", down))
    assert line == f"Error: FHIR server {down} is not answering (connection refused)"


def test_cli_https_to_a_plain_http_server_says_use_http(dev_service: str) -> None:
    with LoopbackFhir() as fhir:
        https = fhir.base_url.replace("http://", "https://")
        line = one_line(run_cli("invoke", "--service-url", dev_service, "--patient", "p1", "--fhir-server", https))
        assert line == f"Error: FHIR server {https} speaks plain HTTP, not TLS: use {fhir.base_url}"
        assert one_line(run_cli("check-server", https)) == line


def test_cli_cds_service_down_is_one_line() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    line = one_line(run_cli("invoke", "--service-url", down, "--from-file", str(FIXTURE)))
    assert line == f"Error: CDS service {down} is not answering (connection refused)"


def test_cli_refused_fhir_server_names_both_reasons_at_once(dev_service: str) -> None:
    """http (not loopback) and not on the allowlist: the 412 says both, in the service's words, on one line."""
    line = one_line(run_cli("invoke", "--service-url", dev_service, "--patient", "p1",
                            "--fhir-server", "http://ehr.example.org/fhir", "--no-prefetch"))
    endpoint = f"{dev_service}/cds-services/{SERVICE}"
    assert re.fullmatch(
        rf"Error: 412 from {re.escape(endpoint)}: Unable to obtain required prefetch data with key\(s\) "
        rf"patient, conditions for CDS Hooks service {SERVICE}: fhirServer must be https \(plain http .*\) and "
        r"is not on this service's allowlist; no request was made\. \(request id [A-Za-z0-9._:-]+\)", line), line


@pytest.mark.parametrize("kid, issuer, category", [
    ("not-the-kid", ISSUER, "signature"),
    (None, "https://other-ehr.example.org", "issuer"),
])
def test_cli_401_names_the_category_and_the_request_id(secure_service: str, client_key: Path,
                                                       kid: str | None, issuer: str, category: str) -> None:
    kid = kid or client_keys.key_id(client_keys.read_private_key(client_key))
    line = one_line(run_cli("invoke", "--service-url", secure_service, "--from-file", str(FIXTURE),
                            "--jwt-key", str(client_key), "--jwt-kid", kid, "--jwt-iss", issuer))
    endpoint = f"{secure_service}/cds-services/{SERVICE}"
    match = re.fullmatch(rf"Error: 401 from {re.escape(endpoint)}: {category} \(request id ([A-Za-z0-9._:-]+)\)",
                         line)
    assert match, line


def test_cli_right_key_is_accepted(secure_service: str, client_key: Path) -> None:
    """The same call with the trusted kid and iss succeeds: the 401s above are about the kid and iss alone."""
    kid = client_keys.key_id(client_keys.read_private_key(client_key))
    done = run_cli("invoke", "--service-url", secure_service, "--from-file", str(FIXTURE), "--json",
                   "--jwt-key", str(client_key), "--jwt-kid", kid, "--jwt-iss", ISSUER)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cards"]
