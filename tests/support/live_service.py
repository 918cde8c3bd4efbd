"""A service application served over real HTTP on 127.0.0.1 (werkzeug, a free port) for CLI tests, and the
client key the CLI signs with (``ec_key_pair``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server

ISSUER = "https://ehr.example.org"
KID = "test-key-1"


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
