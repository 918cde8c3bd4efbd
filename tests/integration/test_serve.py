"""`cramp-cds serve` under gunicorn: a request in flight when SIGTERM arrives completes (200), then the
server exits 0. Also: /metrics adds up the workers (Prometheus multiprocess mode).

The slow request comes from the test, not the service: the server runs in a subprocess whose
``Engine.run`` is wrapped (before gunicorn forks its workers) to touch a marker file and sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support.hook_requests import SERVICE_URL, minimal_request
from support.live_service import free_port, wait_healthy

DELAY_SECONDS = 2.0

SERVER = """
import os, sys, time
from pathlib import Path
from cds_service.cli.main import main
from cds_service.engine import pipeline

marker, delay = Path(os.environ["TEST_MARKER"]), float(os.environ["TEST_DELAY"])
original = pipeline.Engine.run

def slow_run(self, *args, **kwargs):
    marker.write_text("in flight")
    time.sleep(delay)
    return original(self, *args, **kwargs)

pipeline.Engine.run = slow_run
sys.exit(main(sys.argv[1:], prog_name="cramp-cds"))
"""


@pytest.fixture
def server(tmp_path: Path):
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {
        **os.environ,
        "TEST_MARKER": str(tmp_path / "in-flight"),
        "TEST_DELAY": str(DELAY_SECONDS),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'cards.sqlite3'}",
    }
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, "serve", "--dev", "--port", str(port), "--workers", "2", "--threads", "2"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, seconds=15)
        yield process, f"http://127.0.0.1:{port}", tmp_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()


def _post(base: str, results: list) -> None:
    request = urllib.request.Request(
        base + SERVICE_URL, data=json.dumps(minimal_request()).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            results.append((response.status, json.loads(response.read())))
    except Exception as exc:  # noqa: BLE001 - reported by the assertion
        results.append(("error", repr(exc)))


def test_sigterm_drains_the_request_in_flight_and_exits_0(server):
    process, base, tmp_path = server
    marker = tmp_path / "in-flight"
    results: list = []
    caller = threading.Thread(target=_post, args=(base, results))
    started = time.monotonic()
    caller.start()
    while not marker.exists():  # the worker is inside Engine.run
        # a hang guard (generous for a loaded machine), not a speed test
        assert time.monotonic() - started < 60, "the request never reached the engine"
        time.sleep(0.02)

    process.send_signal(signal.SIGTERM)
    caller.join(timeout=15)
    exit_code = process.wait(timeout=15)
    log = (tmp_path / "server.log").read_text(errors="replace")

    assert results and results[0][0] == 200, (results, log[-2000:])
    assert "cards" in results[0][1]
    assert time.monotonic() - started >= DELAY_SECONDS  # it really was in flight
    assert exit_code == 0, log[-2000:]
    # Gunicorn's own lines are JSON too.
    gunicorn_lines = [line for line in log.splitlines() if '"logger": "gunicorn.error"' in line]
    assert gunicorn_lines and all(json.loads(line)["level"] for line in gunicorn_lines)


def test_metrics_add_up_the_workers(server):
    process, base, tmp_path = server
    results: list = []
    threads = [threading.Thread(target=_post, args=(base, results)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert [status for status, _ in results] == [200] * 4
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    line = next(l for l in text.splitlines() if l.startswith("cramp_requests_total{") and 'status="200"' in l)
    assert float(line.rsplit(" ", 1)[1]) == 4.0
    assert list((tmp_path / "metrics").glob("*.db"))  # the workers wrote there
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


# ------------------------------------------------ production mode under real gunicorn: audience, header limits
#
# `cramp-cds serve` without --dev, trusting a test issuer, with CRAMP_PUBLIC_BASE_URL its own loopback URL.
# X-Forwarded-* from 127.0.0.1 are trusted here (CRAMP_FORWARDED_ALLOW_IPS), the setting under which the
# audience attack of issue 11 item 2 got 200: the audience must not follow them either.


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):
    from support.security import SecureServer, TestIssuer

    issuer = TestIssuer.create()
    with SecureServer(tmp_path_factory.mktemp("secure-serve"), issuer, CRAMP_FORWARDED_ALLOW_IPS="127.0.0.1") as server:
        yield server.base, issuer, server.directory


def _call(server, headers: dict[str, str]):
    from support.security import http_request

    base, _, _ = server
    return http_request(base, "POST", SERVICE_URL, headers, json.dumps(minimal_request()).encode())


def _www_authenticate(headers: dict[str, str]) -> str:
    return {name.lower(): value for name, value in headers.items()}.get("www-authenticate", "")


@pytest.mark.parametrize(("minted_for", "headers"), [
    ("https://other-cds.example", {"Host": "other-cds.example", "X-Forwarded-Proto": "https"}),
    ("http://other-cds.example", {"Host": "other-cds.example"}),
    ("https://other-cds.example", {"X-Forwarded-Host": "other-cds.example", "X-Forwarded-Proto": "https"}),
], ids=["https Host + X-Forwarded-Proto", "http Host only", "X-Forwarded-Host"])
def test_gunicorn_audience_never_follows_the_request(secure_server, minted_for: str, headers: dict[str, str]):
    base, issuer, _ = secure_server
    token = issuer.token(SERVICE_URL, aud=minted_for + SERVICE_URL)
    status, response_headers, body = _call(secure_server, {"Authorization": f"Bearer {token}", **headers})
    assert (status, body) == (401, b"")
    assert _www_authenticate(response_headers) == 'Bearer error="invalid_token", error_description="audience"'
    assert response_headers["X-Request-ID"]
    # A token for the configured URL is served, whatever Host and X-Forwarded-* say.
    status, _, body = _call(secure_server, {**issuer.headers(SERVICE_URL, aud=base + SERVICE_URL), **headers})
    assert status == 200, body[:500]


def test_gunicorn_a_16_kib_token_fits(secure_server):
    from support.security import padded_token

    base, issuer, _ = secure_server
    token = padded_token(issuer, base + SERVICE_URL, 16 * 1024)  # base64url lengths step by 4/3; within 2 of the limit
    assert 16 * 1024 - 2 <= len(token) <= 16 * 1024
    status, _, body = _call(secure_server, {"Authorization": f"Bearer {token}"})
    assert status == 200, body[:500]
    forged = token[:-8] + ("A" if token[-8] != "A" else "B") + token[-7:]  # the same size, a bad signature
    status, headers, body = _call(secure_server, {"Authorization": f"Bearer {forged}"})
    assert (status, body) == (401, b"")
    assert _www_authenticate(headers) == 'Bearer error="invalid_token", error_description="signature"'


@pytest.mark.parametrize("header", ["Authorization", "X-Padding"])
def test_gunicorn_a_header_over_the_limit_is_431_with_an_operation_outcome(secure_server, header: str):
    from cds_service.header_limits import MAX_HEADER_FIELD_BYTES
    from cds_service.web.app import SECURITY_HEADERS

    value = ("Bearer " if header == "Authorization" else "") + "a" * MAX_HEADER_FIELD_BYTES
    status, headers, body = _call(secure_server, {header: value})
    assert status == 431, body[:300]
    assert headers["Content-Type"].startswith("application/fhir+json")
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-long"
    for name, expected in SECURITY_HEADERS.items():
        assert headers.get(name) == expected
    assert headers["X-Request-ID"]


def test_gunicorn_refuses_a_header_over_its_own_limit_first(secure_server):
    """Over gunicorn's limit_request_field_size (32 KiB) the application is never reached: gunicorn's own 431,
    a short HTML page without the security headers (docs/security.md)."""
    from cds_service.header_limits import SERVER_HEADER_FIELD_BYTES

    status, headers, _ = _call(secure_server, {"X-Padding": "a" * SERVER_HEADER_FIELD_BYTES})
    assert status == 431 and headers["Content-Type"] == "text/html"
    assert "X-Content-Type-Options" not in headers


def test_serve_without_the_public_base_url_exits_2_with_one_line(tmp_path: Path):
    env = {**os.environ, "CRAMP_PATIENT_KEY_SECRET": "serve-test-secret-0123456789",
           "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'cards.sqlite3'}"}
    for name in ("CRAMP_DEV_MODE", "CRAMP_PUBLIC_BASE_URL"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "cds_service.cli.main", "serve", "--port", str(free_port())],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["Error: CRAMP_PUBLIC_BASE_URL: required outside development mode (the external base URL "
                     "EHRs call, e.g. https://cds.example.org; several comma-separated)"], result.stderr
    assert not (tmp_path / "cards.sqlite3").exists()  # refused before anything was touched


def test_the_docker_cmd_without_the_public_base_url_exits_2_before_any_worker(tmp_path: Path):
    """The image's CMD (gunicorn -c python:cds_service.serve.gunicorn_conf): the master checks the settings once."""
    env = {**os.environ, "CRAMP_PATIENT_KEY_SECRET": "serve-test-secret-0123456789",
           "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'cards.sqlite3'}", "CRAMP_BIND": f"127.0.0.1:{free_port()}"}
    for name in ("CRAMP_DEV_MODE", "CRAMP_PUBLIC_BASE_URL"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "python:cds_service.serve.gunicorn_conf",
                             "cds_service.serve.wsgi:app"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "CRAMP_PUBLIC_BASE_URL" in line]
    assert errors == ["cramp-cds: configuration error: CRAMP_PUBLIC_BASE_URL: required outside development mode "
                      "(the external base URL EHRs call, e.g. https://cds.example.org; several comma-separated)"]
    assert "Booting worker" not in result.stderr
