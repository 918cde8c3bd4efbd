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
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from support.live_service import free_port  # noqa: F401  (also for importers)

ROOT = Path(__file__).resolve().parents[2]
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


# ---------------------------------------------------------------------------------------------------------
# A small loopback FHIR server in this process, for what sekmet can't do: drip-feeding answers (a hanging
# EHR), counting the connections it holds, and recording the requests it got.

DRIP_PADDING = 64 * 1024  # bytes of trailing whitespace on a dripped answer


class LoopbackFhir:
    """``GET {base_url}/Patient/{id}`` and ``GET {base_url}/{Type}?patient={id}...`` over real HTTP on 127.0.0.1.

        with LoopbackFhir(resources, drip=0.02) as server:    # answers one byte every 20 ms, for ever
            server.base_url, server.open_connections, server.requests

    ``resources``: FHIR resources, any patients; a search returns the ones whose ``subject`` or ``patient``
    is ``Patient/{id}``, as one searchset page. ``drip`` (seconds per byte) applies to every answer, or to
    the resource types in ``drip_types`` when given; ``drip_headers`` drips the status line and headers too
    (else they are sent at once and only the body drips). ``delay`` adds seconds before each answer;
    ``require_token``: 401 without ``Authorization: Bearer <it>``.
    """

    def __init__(self, resources: list[dict[str, Any]] | None = None, *, drip: float | None = None,
                 drip_types: tuple[str, ...] = (), drip_headers: bool = False, delay: float = 0.0,
                 require_token: str | None = None) -> None:
        import http.server
        import threading

        self.resources = list(resources or [])
        self.drip, self.drip_types, self.drip_headers, self.delay = drip, drip_types, drip_headers, delay
        self.require_token = require_token
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path with query, headers)
        self.open_connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner.open_connections += 1

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with owner._lock:
                        owner.open_connections -= 1

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests.append((self.path, dict(self.headers)))
                status, body, resource_type = owner.answer(self.path)
                if owner.require_token and self.headers.get("Authorization") != f"Bearer {owner.require_token}":
                    status, body = 401, b'{"resourceType": "OperationOutcome", "issue": []}'
                if owner.delay:
                    owner.stopping.wait(owner.delay)
                dripping = owner.drip is not None and (not owner.drip_types or resource_type in owner.drip_types)
                if dripping:
                    body += b" " * DRIP_PADDING  # valid JSON still: long enough to drip for minutes
                head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                        f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                try:
                    if not dripping:
                        self.wfile.write(head + body)
                        return
                    if not owner.drip_headers:
                        self.wfile.write(head)
                        self.wfile.flush()
                    for byte in (head + body if owner.drip_headers else body):
                        if owner.stopping.wait(owner.drip):
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:  # the client closed the connection: what the fetcher does at its deadline
                    pass
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-fhir", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/fhir"

    def answer(self, path: str) -> tuple[int, bytes, str]:
        import json
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(path)
        segments = [s for s in parts.path.split("/") if s][1:]  # after /fhir
        if len(segments) == 2:
            found = [r for r in self.resources if [r.get("resourceType"), r.get("id")] == segments]
            return (200, json.dumps(found[0]).encode(), segments[0]) if found else (404, b"{}", segments[0])
        resource_type = segments[0] if segments else ""
        patient = (parse_qs(parts.query).get("patient") or [""])[0]
        matches = [r for r in self.resources if r.get("resourceType") == resource_type and patient and
                   f"Patient/{patient}" in (r.get("subject", {}).get("reference"), r.get("patient", {}).get("reference"))]
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                  "entry": [{"resource": r} for r in matches]}
        return 200, json.dumps(bundle).encode(), resource_type

    def __enter__(self) -> "LoopbackFhir":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
