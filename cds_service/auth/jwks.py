"""The CDS clients' public keys: JWK Sets read from a URL, a file or the configuration, cached per source.

    JWKSCache       keys per source (``url:``, ``file:``, ``inline:``), for ``ttl`` seconds; an unknown ``kid``
                    reloads its source at most once per ``refetch_interval`` (key rotation, no fetch storm)
    PublicKey       one verification key and the JWK members it was published with; verifies a signature
                    with PyJWT's algorithm object (built once per process, not per token)
    parse_jwks      the usable public signing keys of a JWK Set, by ``kid``
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jwt
from jwt.algorithms import get_default_algorithms

from cds_service.auth.rejection import AuthenticationError, loggable
from cds_service.auth.trusted_clients import ASYMMETRIC_ALGORITHMS
from cds_service.fhir.errors import FhirError
from cds_service.fhir.reader import read_json
from cds_service.fhir.session import build_session

__all__ = ["JWKSCache", "PublicKey", "parse_jwks"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_JWKS_BYTES = 512 * 1024
_MIN_RSA_BITS = 2048
# PyJWT's verifiers (cryptography underneath) of the algorithms a client may be configured with; never HMAC
# or "none". Stateless objects, shared by threads.
_ALGORITHMS = {name: algorithm for name, algorithm in get_default_algorithms().items()
               if name in ASYMMETRIC_ALGORITHMS}


@dataclass(frozen=True)
class PublicKey:
    """A verification key and the JWK members it was published with (kty, crv, alg)."""

    jwk: Mapping[str, Any]
    key: Any  # a cryptography public key object

    def fits(self, alg: str) -> bool:
        """The JWK may be used with ``alg``: matching key type, curve and (if the JWK names one) algorithm."""
        declared = self.jwk.get("alg")
        if declared is not None and declared != alg:
            return False
        if alg.startswith("ES"):
            return self.jwk.get("kty") == "EC" and self.jwk.get("crv") == _EC_CURVE_FOR_ALG[alg]
        return self.jwk.get("kty") == "RSA"  # RS*, PS*

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """Is ``signature`` this key's ``alg`` signature of ``signing_input`` (the JWS's ASCII header.payload)?
        For a key that ``fits(alg)``. PyJWT's ``prepare_key`` checks the key's type and curve once more."""
        algorithm = _ALGORITHMS[alg]
        try:
            return algorithm.verify(signing_input, algorithm.prepare_key(self.key), signature)
        except (jwt.PyJWTError, ValueError, TypeError):
            return False


@dataclass
class _KeySet:
    keys: dict[str, PublicKey]
    fetched_at: float  # last successful load (TTL)
    attempted_at: float  # last load attempt, successful or not (refetch rate limit)


def parse_jwks(document: object, source: str) -> dict[str, PublicKey]:
    """The usable public signing keys of a JWK Set, by ``kid``. Symmetric and unusable keys are skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWK Set (no "keys" array)')
    keys: dict[str, PublicKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, Mapping):
            continue
        kid, kty = entry.get("kid"), entry.get("kty")
        if not isinstance(kid, str) or not kid or kty not in ("EC", "RSA"):
            continue  # no kid to find it by, or a symmetric ("oct") / unsupported key: never used
        if entry.get("use", "sig") != "sig":
            continue
        key_ops = entry.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue
        public = {name: value for name, value in entry.items() if name not in _PRIVATE_JWK_MEMBERS}
        try:
            key = jwt.PyJWK(public).key
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            log.warning("JWKS %s: key %s skipped (%s)", source, loggable(kid), type(exc).__name__)
            continue
        if kty == "RSA" and key.key_size < _MIN_RSA_BITS:
            log.warning("JWKS %s: key %s skipped (RSA below %d bits)", source, loggable(kid), _MIN_RSA_BITS)
            continue
        keys[kid] = PublicKey(jwk=public, key=key)
    return keys


class JWKSCache:
    """Public keys per JWKS source, cached for ``ttl`` seconds.

    A ``kid`` missing from a cached set triggers one reload of that source, at most once every
    ``refetch_interval`` seconds per source (key rotation without letting tokens drive a fetch storm).
    URLs are fetched through the package's one HTTP client (``fhir/reader.read_json`` with ``http``, a
    session of ``fhir/session.py``): a timeout, no redirects, a size cap, typed errors. A failed reload keeps
    the previous keys.
    """

    def __init__(
        self,
        http: Any = None,  # a requests.Session (fhir/session.build_session)
        *,
        ttl: float = 3600.0,
        refetch_interval: float = 60.0,
        timeout: float = 5.0,
        clock: Clock = time.time,
    ) -> None:
        self._http = http if http is not None else build_session(pool_size=4)
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self.timeout = timeout
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._inline: dict[str, Mapping[str, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def register_inline(self, source: str, document: Mapping[str, Any]) -> None:
        """Make an inline JWK Set available under ``source`` (``inline:<issuer>``)."""
        self._inline[source] = document

    def get_key(self, source: str, kid: str) -> PublicKey:
        """The key ``kid`` from ``source`` (``url:<URL>``, ``file:<path>`` or ``inline:<name>``).

        Raises ``AuthenticationError`` when the key cannot be had.
        """
        with self._lock_for(source):
            now = self._clock()
            entry = self._sets.get(source)
            if entry is None or (now - entry.fetched_at >= self.ttl and now - entry.attempted_at >= self.refetch_interval):
                entry = self._load(source, entry, now)
            if kid not in entry.keys and now - entry.attempted_at >= self.refetch_interval:
                entry = self._load(source, entry, now)  # unknown kid: perhaps the client rotated its keys
            key = entry.keys.get(kid)
        if key is None:
            raise AuthenticationError(f"unknown kid {loggable(kid)} in JWKS {loggable(source, 120)}", "signature")
        return key

    def _lock_for(self, source: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(source, threading.Lock())

    @staticmethod
    def _describe(source: str) -> str:
        return source.split(":", 1)[1]

    def _load(self, source: str, previous: _KeySet | None, now: float) -> _KeySet:
        try:
            keys = parse_jwks(self._read(source), self._describe(source))
        except (FhirError, OSError, ValueError) as exc:
            log.warning("JWKS %s could not be loaded: %s", self._describe(source), exc)
            entry = _KeySet(
                keys=previous.keys if previous else {},
                fetched_at=previous.fetched_at if previous else -math.inf,
                attempted_at=now,
            )
        else:
            entry = _KeySet(keys=keys, fetched_at=now, attempted_at=now)
        self._sets[source] = entry
        return entry

    def _read(self, source: str) -> object:
        kind, _, location = source.partition(":")
        if kind == "inline":
            return self._inline[source]
        if kind == "file":
            return json.loads(Path(location).read_text(encoding="utf-8"))
        if kind != "url":
            raise ValueError(f"unknown JWKS source kind {kind!r}")
        return read_json(self._http, location, timeout=self.timeout, max_bytes=_MAX_JWKS_BYTES,
                         accept="application/json, application/jwk-set+json")
