"""CDS client keys for testing and integration (``cramp-cds keys``, docs/security.md): a key pair, its
public JWK Set, a trusted-clients entry for it, and signed client JWTs.

What a CDS client (an EHR) does with its own key, in small functions::

    key = generate_private_key("ES384")                  # or "RS384" (RSA 3072)
    write_private_key(path, key)                         # PKCS#8 PEM, mode 0600, never overwritten silently
    jwks = public_jwks(key)                              # {"keys": [public JWK]}: no private member
    entry = trusted_client_entry(issuer, jwks_file="jwks.json", algorithm=algorithm_for(key))
    token = make_client_token(key, issuer=..., audience=endpoint_url)

The ``kid`` is the key's RFC 7638 thumbprint unless given: the same key always has the same ``kid``, so
``keys token --key FILE`` finds it without being told. Tokens carry what CDS Hooks 2.0 requires (header
``alg``, ``typ: JWT``, ``kid``; claims ``iss``, ``aud``, ``exp``, ``iat``, a fresh ``jti``) plus ``sub``
(extra to the spec; Epic sends its client id), and live at most 5 minutes.

Errors are ``ClientKeyError`` (ValueError) with a one-line message naming the file or value.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Union

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

ALGORITHMS = ("ES384", "RS384")  # CDS Hooks 2.0's recommended pair (docs/security.md)
RSA_BITS = 3072
MAX_TOKEN_LIFETIME_SECONDS = 300  # CDS Hooks: exp no more than 5 minutes after iat
_PUBLIC_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}  # RFC 7638 required members


class ClientKeyError(ValueError):
    """A key file, key or value cannot be used; the message names it."""


def generate_private_key(algorithm: str = "ES384") -> PrivateKey:
    """A new private key for ``algorithm``: P-384 for ES384, RSA 3072 for RS384."""
    if algorithm == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ClientKeyError(f"algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")


def algorithm_for(key: PrivateKey | Any) -> str:
    """ES384 for a P-384 key, RS384 for an RSA key of at least 2048 bits (what the service accepts)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP384R1):
            raise ClientKeyError(f"an EC key on {public.curve.name}: ES384 needs P-384 (secp384r1)")
        return "ES384"
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise ClientKeyError(f"an RSA key of {public.key_size} bits: the service ignores keys under 2048")
        return "RS384"
    raise ClientKeyError("not an EC (P-384) or RSA key")


def write_private_key(path: Path, key: PrivateKey, *, overwrite: bool = False) -> None:
    """The key as unencrypted PKCS#8 PEM, readable by its owner only (0600) from the moment it exists."""
    if path.exists() and not overwrite:
        raise ClientKeyError(f"{path}: already exists (a private key is never overwritten without --force)")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_private_key(path: Path) -> PrivateKey:
    """An unencrypted PEM private key (EC P-384 or RSA) from ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClientKeyError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ClientKeyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ClientKeyError(f"{path}: not an EC (P-384) or RSA private key")
    try:
        algorithm_for(key)
    except ClientKeyError as exc:
        raise ClientKeyError(f"{path}: {exc}") from None
    return key


def _bare_public_jwk(key: PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(public, as_dict=True))
    return dict(RSAAlgorithm.to_jwk(public, as_dict=True))


def key_id(key: PrivateKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key."""
    jwk = _bare_public_jwk(key)
    members = {name: jwk[name] for name in _PUBLIC_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical)
    return jwt.utils.base64url_encode(digest.finalize()).decode()


def public_jwk(key: PrivateKey, kid: str | None = None) -> dict[str, Any]:
    """The public JWK: its public members and kty, plus ``kid``, ``alg`` and ``use: sig``. Nothing private."""
    jwk = _bare_public_jwk(key)
    public = {name: jwk[name] for name in _PUBLIC_MEMBERS[jwk["kty"]]}
    return {**public, "kid": kid or key_id(key), "alg": algorithm_for(key), "use": "sig"}


def public_jwks(key: PrivateKey, kid: str | None = None) -> dict[str, Any]:
    """A JWK Set holding the public key only (what a client publishes, or a ``jwks_file`` holds)."""
    return {"keys": [public_jwk(key, kid)]}


def trusted_client_entry(issuer: str, *, algorithm: str, jwks_file: str | None = None,
                         jwks_url: str | None = None, jwks: dict[str, Any] | None = None,
                         tenant: str | None = None) -> dict[str, Any]:
    """One ``clients:`` entry of a trusted-clients file (docs/security.md) for this client's key."""
    sources = {name: value for name, value in
               (("jwks_file", jwks_file), ("jwks_url", jwks_url), ("jwks", jwks)) if value is not None}
    if len(sources) != 1:
        raise ClientKeyError("give exactly one key source: a JWKS file, a JWKS URL or an inline JWKS")
    if not issuer.strip():
        raise ClientKeyError("issuer: must not be empty")
    entry: dict[str, Any] = {"issuer": issuer, **sources, "algorithms": [algorithm]}
    if tenant is not None:
        entry["tenant"] = tenant
    return entry


def make_client_token(key: PrivateKey, *, issuer: str, audience: str, kid: str | None = None,
                      subject: str | None = None, tenant: str | None = None,
                      lifetime: int = MAX_TOKEN_LIFETIME_SECONDS, now: float | None = None) -> str:
    """A signed CDS client JWT for one call to ``audience`` (the endpoint URL, as the client calls it)."""
    if not 1 <= lifetime <= MAX_TOKEN_LIFETIME_SECONDS:
        raise ClientKeyError(f"lifetime {lifetime}: expected 1 to {MAX_TOKEN_LIFETIME_SECONDS} seconds")
    if not audience.startswith(("https://", "http://")):
        raise ClientKeyError(f"audience {audience!r}: expected the endpoint's URL, e.g. "
                             "https://cds.example.org/cds-services/leg-cramp-patient-view")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": issuer, "sub": subject or issuer, "aud": audience, "iat": issued,
                              "exp": issued + lifetime, "jti": str(uuid.uuid4())}
    if tenant is not None:
        claims["tenant"] = tenant
    return jwt.encode(claims, key, algorithm=algorithm_for(key), headers={"kid": kid or key_id(key), "typ": "JWT"})
