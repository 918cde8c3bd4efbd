"""`cramp-cds serve` under gunicorn: a request in flight when SIGTERM arrives completes (200), then the
server exits 0. Also: /metrics adds up the workers (Prometheus multiprocess mode).

The slow request comes from the test, not the service: the server runs in a subprocess whose
``Engine.run`` is wrapped (before gunicorn forks its workers) to touch a marker file and sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SERVICE_URL, minimal_request

DELAY_SECONDS = 2.0

SERVER = """
import os, sys, time
from pathlib import Path
from cds_service import pipeline
from cds_service.cli import main

marker, delay = Path(os.environ["TEST_MARKER"]), float(os.environ["TEST_DELAY"])
original = pipeline.Engine.run

def slow_run(self, service, request):
    marker.write_text("in flight")
    time.sleep(delay)
    return original(self, service, request)

pipeline.Engine.run = slow_run
sys.exit(main(sys.argv[1:], prog_name="cramp-cds"))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base: str, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server not healthy in time")


@pytest.fixture
def server(tmp_path: Path):
    port = _free_port()
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
        _wait_healthy(f"http://127.0.0.1:{port}", process, time.monotonic() + 15)
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
        assert time.monotonic() - started < 10, "the request never reached the engine"
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
