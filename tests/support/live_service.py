"""A service application served over real HTTP on 127.0.0.1 (werkzeug, a free port) for CLI tests, the
client key the CLI signs with (``ec_key_pair``), and for servers started as processes: a free loopback port
(``free_port``) and the wait until one answers /healthz (``wait_healthy``)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server

ISSUER = "https://ehr.example.org"
KID = "test-key-1"


def free_port() -> int:
    """A port free on 127.0.0.1 now (for a server process that must be told its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(base: str, process: "subprocess.Popen", *, seconds: float = 30, log_path: Path | None = None,
                 request_timeout: float = 1) -> None:
    """Return once ``base``/healthz answers 200; AssertionError (with the log's tail) when the process exits
    first or ``seconds`` pass (a hang guard, not a speed target)."""
    def tail() -> str:
        return log_path.read_text(errors="replace")[-2000:] if log_path is not None and log_path.exists() else ""

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {tail()}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=request_timeout) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server not healthy within {seconds} s: {tail()}")


def serve_app(app) -> tuple[str, Callable[[], None]]:
    """(base URL, stop): the WSGI app answering on a free loopback port until ``stop()``."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=10)

    return f"http://127.0.0.1:{server.server_port}", stop


def ec_key_pair(folder: Path) -> tuple[Path, dict]:
    """(PEM file of a new ES384 private key, its public JWK with KID)."""
    key = ec.generate_private_key(ec.SECP384R1())
    path = folder / "client.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return path, {**public, "kid": KID, "alg": "ES384", "use": "sig"}
