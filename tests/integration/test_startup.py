"""Start-up, as an operator sees it (issue 16 item 3): a busy port stops the start with one line naming
how to choose another (not gunicorn's five retries and "Can't connect"), and the start-up log is short:
alembic at WARNING, one line saying the schema was migrated or is current."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

DOCKER_CMD = [sys.executable, "-m", "gunicorn", "-c", "python:cds_service.serve.gunicorn_conf",
              "cds_service.serve.wsgi:app"]


@pytest.fixture
def busy_port():
    """A real listener on a loopback port, as another server would hold it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'cards.sqlite3'}", **extra}
    for name in ("CRAMP_DEV_MODE", "CRAMP_BIND", "PROMETHEUS_MULTIPROC_DIR"):
        if name not in extra:
            env.pop(name, None)
    return env


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "already in use" in line]


def test_serve_on_a_busy_port_exits_2_with_one_line_naming_port(tmp_path: Path, busy_port: int):
    result = subprocess.run([sys.executable, "-m", "cds_service.cli.main", "serve", "--dev", "--port", str(busy_port)],
                            env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _errors(result.stderr) == [
        f"Error: port {busy_port} on 127.0.0.1 is already in use: choose another port: PORT=N scripts/run-dev, "
        "cramp-cds serve --port N, or CRAMP_BIND=HOST:N"], result.stderr[-2000:]
    assert "Retrying in 1 second" not in result.stderr and "Can't connect" not in result.stderr
    assert not (tmp_path / "cards.sqlite3").exists()  # refused before anything was touched


def test_the_docker_cmd_on_a_busy_port_exits_2_with_one_line(tmp_path: Path, busy_port: int):
    env = _env(tmp_path, CRAMP_BIND=f"127.0.0.1:{busy_port}", CRAMP_PATIENT_KEY_SECRET="startup-test-secret-0123456789",
               CRAMP_PUBLIC_BASE_URL="https://cds.example.org")
    result = subprocess.run(DOCKER_CMD, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _errors(result.stderr) == [f"cramp-cds: configuration error: port {busy_port} on 127.0.0.1 is already in "
                                      "use: choose another port: PORT=N scripts/run-dev, cramp-cds serve --port N, "
                                      "or CRAMP_BIND=HOST:N"], result.stderr[-2000:]
    assert "Retrying in 1 second" not in result.stderr and "Booting worker" not in result.stderr


def _start_and_stop(tmp_path: Path) -> list[dict]:
    """`cramp-cds serve --dev` with one worker until healthy, then SIGTERM: its JSON log lines."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "cds_service.cli.main", "serve", "--dev", "--port", str(port),
                                   # no dry-run job worker: a third process that logs its own schema line
                                   # whenever it gets that far before the SIGTERM (a race under load)
                                   "--workers", "1", "--no-worker"], env=_env(tmp_path, CRAMP_PATIENT_KEY_SECRET="startup-test-secret-0123456789"),
                                  cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60  # a hang guard on a loaded machine, not a speed target
            while True:
                assert server.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "never healthy"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]


def test_start_up_logs_are_quiet_one_schema_line_per_process(tmp_path: Path):
    first = _start_and_stop(tmp_path)
    assert not [line for line in first if line["logger"].startswith("alembic")], first
    schema = [line for line in first if line["logger"] == "cds_service.storage.store"]
    # the master migrates the new database; the worker finds it current
    assert [(line["message"], line.get("from_revision")) for line in schema] == [
        ("database schema migrated", "empty"), ("database schema current", None)], schema
    assert schema[0]["revision"] == schema[1]["revision"]
    # start and stop, master and one worker: gunicorn's few lines, the dev-mode warnings (service and admin
    # console), the schema lines, one "rules:" line (which source, which version)
    assert len(first) <= 16, "\n".join(line["message"] for line in first)
    rules = [line["message"] for line in first if line["message"].startswith("rules:")]
    assert rules[0].startswith("rules: database, version ") and "seeded the database" in rules[0], rules
    assert len(rules) == 2, rules

    again = _start_and_stop(tmp_path)  # the same database: current everywhere
    assert [line["message"] for line in again if line["logger"] == "cds_service.storage.store"] == [
        "database schema current"] * 2
