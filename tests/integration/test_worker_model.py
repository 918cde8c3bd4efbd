"""Issue 11 item 10: a request hanging on a slow FHIR server must not delay one that carries its prefetch.

Real gunicorn (``cramp-cds serve --dev``, 2 workers x 1 thread: the smallest model where it matters) and a
loopback FHIR server that drip-feeds its answers. One request without prefetch hangs on it in one worker
(deadline 20 s); then requests with full prefetch, one after another. Each must be answered while the
hanging one is still in flight: the busy worker does not accept connections it has no thread for, so each
goes to the free worker. (gunicorn's gthread accepts up to 1000 and queues them behind the hanging call:
about half of them waited for its deadline.) Counts, not a stopwatch: no wall-clock bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from support.hook_requests import SERVICE_URL, minimal_request
from support.fhir_server import LoopbackFhir, free_port

PREFETCH_REQUESTS = 12
START_TIMEOUT = 40


@pytest.fixture
def dripping() -> Iterator[LoopbackFhir]:
    with LoopbackFhir([], drip=0.05) as server:
        yield server


@pytest.fixture
def service(tmp_path: Path, dripping: LoopbackFhir) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'cards.sqlite3'}",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "CRAMP_FHIR_ALLOWLIST": dripping.base_url,
           "CRAMP_FHIR_ALLOW_HTTP_LOOPBACK": "true", "CRAMP_FHIR_DEADLINE_SECONDS": "20"}
    for name in ("CRAMP_KEEPALIVE", "CRAMP_WORKER_CLASS", "CRAMP_THREADS", "CRAMP_WORKERS"):
        env.pop(name, None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cds_service.cli.main import main; sys.exit(main())",
             "serve", "--dev", "--port", str(port), "--workers", "2", "--threads", "1"],
            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        waited = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < waited, "not healthy in time: " + log_path.read_text()[-2000:]
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)  # both workers booted
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_request_hanging_on_fhir_does_not_delay_one_with_its_prefetch(service: str, dripping: LoopbackFhir) -> None:
    hanging_done = threading.Event()
    no_prefetch = {"hook": "patient-view", "hookInstance": "hanging-1", "fhirServer": dripping.base_url,
                   "context": {"userId": "Practitioner/example", "patientId": "hang-1"}}
    hanging = threading.Thread(target=lambda: (_post(service + SERVICE_URL, no_prefetch), hanging_done.set()),
                               daemon=True)
    hanging.start()
    waited = time.monotonic() + 20
    while len(dripping.requests) < 2 and time.monotonic() < waited:  # its fetches have reached the server
        time.sleep(0.02)
    assert dripping.requests, "the no-prefetch request never reached the FHIR server"

    answered_while_hanging = 0
    for _ in range(PREFETCH_REQUESTS):
        assert _post(service + SERVICE_URL, minimal_request()) == 200
        answered_while_hanging += not hanging_done.is_set()
    assert answered_while_hanging == PREFETCH_REQUESTS, (
        f"only {answered_while_hanging} of {PREFETCH_REQUESTS} answered while the hanging request was in flight: "
        "the others waited for its deadline")
    dripping.stopping.set()  # let the hanging request end (its fetches see the server stop)
    hanging.join(timeout=60)
