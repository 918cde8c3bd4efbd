"""A real FHIR server for the integration tests: sekmet-fhir (FastAPI + SQLite) in its own virtual
environment (``.venv-fhir``, made by ``tools/setup-fhir-server``), started on a free port of 127.0.0.1 with a
temporary database, and stopped at the end (terminate, then kill after a timeout).

    venv = ensure_fhir_venv()            # FhirServerUnavailable when it can't be had
    with SekmetServer(venv, tmp_dir) as server:
        server.base_url                  # http://127.0.0.1:PORT/fhir

Its settings bind 127.0.0.1, set ``base_url`` to that address (so that its ``next`` links point back at it),
and turn inbound validation, the workflow simulator and the traffic log off.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = ROOT / "tools" / "setup-fhir-server"
DEFAULT_VENV = ROOT / ".venv-fhir"
INSTALL_TIMEOUT = 420
START_TIMEOUT = 60
STOP_TIMEOUT = 10


class FhirServerUnavailable(RuntimeError):
    """sekmet-fhir could not be installed or started; the message says why."""


def ensure_fhir_venv() -> Path:
    """The virtual environment holding sekmet-fhir: ``$CRAMP_FHIR_VENV``, else ``.venv-fhir`` (created with
    tools/setup-fhir-server when it is missing)."""
    venv = Path(os.environ.get("CRAMP_FHIR_VENV") or DEFAULT_VENV)
    if (venv / "bin" / "sekmet").exists():
        return venv
    try:
        done = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=ROOT, env={**os.environ, "FHIR_VENV": str(venv)},
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FhirServerUnavailable(f"tools/setup-fhir-server could not run: {exc}") from None
    if done.returncode != 0 or not (venv / "bin" / "sekmet").exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise FhirServerUnavailable("tools/setup-fhir-server failed: " + " | ".join(tail))
    return venv


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_yaml(port: int, data_dir: Path) -> str:
    return "\n".join([
        f"base_url: http://127.0.0.1:{port}/fhir",
        "host: 127.0.0.1",
        f"port: {port}",
        f"data_dir: {data_dir}",
        f"db_path: {data_dir / 'sekmet.db'}",
        f"own_private_key_path: {data_dir / 'keys' / 'sekmet_private.pem'}",
        "log_inbound: false",
        "validation:",
        "  inbound: 'off'",
        "simulator:",
        "  enabled: false",
        "server_auth:",
        "  types: [none]",
        "",
    ])


class SekmetServer:
    def __init__(self, venv: Path, work_dir: Path) -> None:
        self.venv = venv
        self.work_dir = work_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / "sekmet.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self, attempts: int = 3) -> "SekmetServer":
        last = ""
        for _ in range(attempts):  # a free port can be taken between choosing and binding it: try another
            try:
                self._start_once()
                return self
            except FhirServerUnavailable as exc:
                last = str(exc)
                self.stop()
        raise FhirServerUnavailable(last)

    def _start_once(self) -> None:
        self.port = free_port()
        data_dir = self.work_dir / f"data-{self.port}"
        (data_dir / "keys").mkdir(parents=True, exist_ok=True)
        config = self.work_dir / f"settings-{self.port}.yaml"
        config.write_text(settings_yaml(self.port, data_dir))
        env = {**os.environ, "SEKMET_CONFIG": str(config)}
        for name in ("SEKMET_BASE_URL", "SEKMET_DB", "SEKMET_PUBLIC_URL", "SEKMET_PORT"):
            env.pop(name, None)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [str(self.venv / "bin" / "sekmet"), "serve", "--config", str(config)],
                cwd=self.work_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FhirServerUnavailable(f"sekmet exited with {self.process.returncode}: {self.log_tail()}")
            if self.metadata() is not None:
                return
            time.sleep(0.2)
        raise FhirServerUnavailable(f"sekmet did not answer /metadata within {START_TIMEOUT} s: {self.log_tail()}")

    def metadata(self) -> dict[str, Any] | None:
        try:
            response = requests.get(f"{self.base_url}/metadata", timeout=2,
                                    headers={"Accept": "application/fhir+json"})
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> "SekmetServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
