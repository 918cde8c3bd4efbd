"""Issue 11 item 7: no PHI, token or JWT in any log line at DEBUG, over REAL HTTP.

The service runs as production runs it: ``cramp-cds serve`` (gunicorn, one worker), not development mode
(every call carries a CDS-client JWT), ``CRAMP_LOG_LEVEL=DEBUG``, the access log on, and every line of
its stderr captured: gunicorn's, the service's and every library's (urllib3 logged each FHIR URL, and so
the patient id, at DEBUG: the earlier log scan used ``responses``, which bypasses urllib3). The FHIR server
is a loopback HTTP server (tests/support/fhir_server.py) that requires the access token.

The calls: a patient-view with no prefetch (the service fetches every key from the FHIR server with
the token), the same with a full prefetch, feedback on its cards, a replayed JWT (401), a refused
fhirServer (412), a malformed body (400). Then no patient id, name, identifier, birth date, access token,
JWT (nor its payload or signature) anywhere in the output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.fhir_server import LoopbackFhir
from support.live_service import free_port, wait_healthy
from support.security import PATIENT_KEY_SECRET, PUBLIC_BASE_URL, TestIssuer, write_trusted_clients

PATIENT_ID = "pz-7Qx31-logscan"
ACCESS_TOKEN = "at-LOGSCAN-5d41402abc4b2a76"
PATIENT = {
    "resourceType": "Patient", "id": PATIENT_ID, "gender": "male", "birthDate": "1948-11-23",
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-LOG-4419023"}],
    "name": [{"family": "Wolfenstern", "given": ["Barnabus", "Quill"], "text": "Barnabus Quill Wolfenstern"}],
}
CRAMPS = {
    "resourceType": "Condition", "id": "logscan-c1", "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                   "code": "active"}]},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "449918009", "display": "Leg cramps"}]},
    "onsetDateTime": "2026-06-01",
}
PHI = [PATIENT_ID, "1948-11-23", "MRN-LOG-4419023", "Wolfenstern", "Barnabus", "Quill"]
SERVICE_PATH = "/cds-services/leg-cramp-patient-view"
START_TIMEOUT = 40


@pytest.fixture
def fhir() -> Iterator[LoopbackFhir]:
    with LoopbackFhir([PATIENT, CRAMPS], require_token=ACCESS_TOKEN) as server:
        yield server


@pytest.fixture
def service(tmp_path: Path, fhir: LoopbackFhir) -> Iterator[tuple[str, TestIssuer, Path, subprocess.Popen]]:
    issuer = TestIssuer.create()
    port = free_port()
    env = {
        **os.environ,
        "CRAMP_TRUSTED_CLIENTS_FILE": str(write_trusted_clients(tmp_path, issuer)),
        "CRAMP_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "CRAMP_PATIENT_KEY_SECRET": PATIENT_KEY_SECRET,
        "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'cards.sqlite3'}",
        "CRAMP_FHIR_ALLOWLIST": fhir.base_url,
        "CRAMP_FHIR_ALLOW_HTTP_LOOPBACK": "true",
        "CRAMP_FHIR_DEADLINE_SECONDS": "20",
        "CRAMP_LOG_LEVEL": "DEBUG",
        "CRAMP_ACCESS_LOG": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    env.pop("CRAMP_DEV_MODE", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cds_service.cli.main import main; sys.exit(main())",
             "serve", "--port", str(port), "--workers", "1", "--threads", "2"],
            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, seconds=START_TIMEOUT, log_path=log_path, request_timeout=2)
        yield base, issuer, log_path, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _post(url: str, body: Any, token: str | None) -> tuple[int, dict[str, Any] | None]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw.strip() else None


def hook_body(fhir_server: str, prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view", "hookInstance": "logscan-1",
        "context": {"userId": "Practitioner/example", "patientId": PATIENT_ID},
        "fhirServer": fhir_server,
        "fhirAuthorization": {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "leg-cramp-cds"},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": r} for r in resources]}


def test_debug_logs_of_real_fetches_hold_no_phi_tokens_or_jwts(service, fhir: LoopbackFhir) -> None:
    base, issuer, log_path, process = service
    url = PUBLIC_BASE_URL + SERVICE_PATH

    def call(body: Any, token: str | None = None) -> tuple[int, dict[str, Any] | None]:
        return _post(base + SERVICE_PATH, body, token or issuer.token(SERVICE_PATH))

    with urllib.request.urlopen(base + "/cds-services", timeout=30) as response:
        keys = next(s for s in json.load(response)["services"] if s["id"] == SERVICE_PATH.rsplit("/", 1)[1])["prefetch"]
    status, fetched = call(hook_body(fhir.base_url))  # no prefetch: every key over HTTP, with the token
    assert status == 200, fetched
    assert len(fhir.requests) == len(keys) and all(h.get("Authorization") == f"Bearer {ACCESS_TOKEN}"
                                                   for _, h in fhir.requests)
    assert fetched and fetched["cards"], "the chart has documented cramps: a card is expected"

    full = {**{key: searchset() for key in keys}, "patient": PATIENT, "conditions": searchset(CRAMPS)}
    status, prefetched = call(hook_body(fhir.base_url, full))
    assert status == 200 and prefetched and prefetched["cards"]

    feedback_path = SERVICE_PATH + "/feedback"
    items = [{"card": c["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T12:00:00Z",
              "overrideReason": {"userComment": "seen"}} for c in prefetched["cards"]]
    status, _ = _post(base + feedback_path, {"feedback": items}, issuer.token(feedback_path))
    assert status == 200

    replayed = issuer.token(SERVICE_PATH)
    assert call(hook_body(fhir.base_url, full), replayed)[0] == 200
    assert call(hook_body(fhir.base_url, full), replayed)[0] == 401
    assert call(hook_body("https://10.0.0.5/fhir"))[0] == 412  # not on the allowlist: no request made
    assert call({**hook_body(fhir.base_url, full), "hook": 7})[0] == 400
    assert call(hook_body(fhir.base_url), "not.a-jwt")[0] == 401

    process.send_signal(signal.SIGTERM)  # flush and stop before reading everything it wrote
    process.wait(20)
    output = log_path.read_text(errors="replace")
    lines = output.splitlines()
    assert any('"level": "DEBUG"' in line for line in lines), "the service did not log at DEBUG"
    assert sum('"message": "fhir fetch"' in line for line in lines) >= len(keys)  # the fetches were logged

    secrets = {"access token": [ACCESS_TOKEN], "PHI": PHI}
    secrets["JWT"] = list(issuer.minted) + [part for token in issuer.minted for part in token.split(".")[1:]]
    for kind, values in secrets.items():
        for value in values:
            found = re.search(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])", output)
            assert found is None, (f"{kind} {value[:40]!r} in the logs: "
                                   f"...{output[max(0, found.start() - 300):found.end() + 80]}")
