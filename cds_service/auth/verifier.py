"""CDS Hooks 2.0 client authentication: verify the CDS client's JWT (``Authorization: Bearer <JWT>``).

The HTTP layer makes one call per request::

    authenticator = ClientAuthenticator.from_settings(settings)          # once, in create_app
    audiences = endpoint_urls(settings.required_public_base_urls(), request.path)   # never from the request
    try:
        client = authenticator.authenticate(request.headers.get("Authorization"), audiences)
    except AuthenticationError as exc:
        log.warning("CDS client rejected: %s", exc.reason)             # never the token itself
        return "", 401, {"WWW-Authenticate": www_authenticate(exc.category)}

What is checked, in order (docs/security.md says the same for deployers):

1. ``Authorization: Bearer <compact JWS>`` is present and well formed (three base64url parts).
2. Header: ``alg`` is on the issuer's list (ES384/RS384 by default; asymmetric algorithms only, never
   ``none`` or HMAC whatever the token says); ``kid`` present; ``typ``, if present, is ``JWT``; no ``crit``.
3. ``iss`` (read before verification only to pick the client's configuration) is a trusted client.
4. The key is looked up by ``kid`` in that client's JWKS: from the header's ``jku`` only when that exact
   URL is on the client's ``allowed_jku`` list, else from its ``jwks_url`` / ``jwks_file`` / inline
   ``jwks``. The key's type, curve, ``alg`` and ``use`` must fit the token's ``alg``.
5. The signature is verified (PyJWT; no hand-rolled cryptography).
6. Claims, with an injectable clock and leeway: ``aud`` is this endpoint's external URL, one of the
   configured base URLs + the path called (string, or an array containing it); ``exp`` required, not
   past; ``iat`` required, not in the future; ``nbf`` honoured; lifetime ``exp - iat`` at most
   ``max_lifetime``; ``tenant`` equals the client's when configured; ``jti`` required.
7. ``jti`` not seen before for this issuer (``ReplayCache``), checked last so that rejected tokens never
   fill the cache.

Exceptions::

    AuthenticationError        a request is not authenticated; ``reason`` is for logs, ``category`` (one of
                               ``CATEGORIES``) for the 401's ``WWW-Authenticate`` -> bare 401
    TrustedClientsError        (ValueError) the trusted-clients configuration is invalid; names file and field

Thread safety: ``ClientAuthenticator``, ``JWKSCache`` and ``MemoryReplayCache`` may be shared by threads.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import jwt
import requests
import yaml

from cds_service.storage.replay import MemoryReplayCache, RedisReplayCache, ReplayCache  # (moved to storage/replay.py; re-exported)

from cds_service.header_limits import MAX_TOKEN_BYTES

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "CATEGORIES",
    "AuthenticationError",
    "ClientAuthenticator",
    "JWKSCache",
    "MemoryReplayCache",
    "RedisReplayCache",
    "ReplayCache",
    "TrustedClient",
    "TrustedClientsError",
    "VerifiedClient",
    "endpoint_urls",
    "load_trusted_clients",
    "www_authenticate",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: Coarse reasons a token is refused, the only detail a 401 gives (``error_description``; STATUS.md):
#: missing (no bearer token), malformed (not a well-formed CDS client JWT), issuer (untrusted ``iss``, or
#: another tenant), signature (algorithm, key or signature), audience (``aud`` not this endpoint),
#: expired (outside its validity: ``exp`` past, ``iat``/``nbf`` ahead, lifetime too long), replayed (``jti``).
CATEGORIES = ("missing", "malformed", "issuer", "signature", "audience", "expired", "replayed")

#: Algorithms a client may be configured with. HMAC (HS*) and ``none`` are never among them.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
#: The CDS Hooks 2.0 recommendation (S2 L1016-1026).
DEFAULT_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384")

_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_MAX_TOKEN_CHARS = MAX_TOKEN_BYTES  # docs/security.md: tokens up to 16 KiB; the headers limits fit them
_MAX_JTI_CHARS = 512
_MAX_JWKS_BYTES = 512 * 1024
_MIN_RSA_BITS = 2048
_CLIENT_FIELDS = ("issuer", "jwks_url", "jwks_file", "jwks", "allowed_jku", "algorithms", "tenant")


# --------------------------------------------------------------------------------------------- errors


class AuthenticationError(Exception):
    """The request is not authenticated. ``reason`` is for the log, never for the HTTP response;
    ``category`` (one of ``CATEGORIES``) is all the response says (``www_authenticate``).

    Reasons never contain the token; values taken from the token (``iss``, ``kid``...) are clipped.
    """

    def __init__(self, reason: str, category: str, *, issuer: str | None = None) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown authentication failure category {category!r}")
        super().__init__(reason)
        self.reason = reason
        self.category = category
        self.issuer = issuer


def www_authenticate(category: str) -> str:
    """The 401's ``WWW-Authenticate`` (RFC 6750 section 3): the error and the coarse category, nothing more."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown authentication failure category {category!r}")
    return f'Bearer error="invalid_token", error_description="{category}"'


class TrustedClientsError(ValueError):
    """The trusted-clients configuration is invalid; the message names the file and the field."""

    def __init__(self, message: str, *, path: Path | str | None = None, field: str | None = None) -> None:
        self.message = message
        self.path = path
        self.field = field
        where = ": ".join(str(part) for part in (path, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


def _clip(value: object, limit: int = 80) -> str:
    """A token-supplied value made safe for a log line (repr, so no newlines; truncated)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------- trusted clients


def _is_acceptable_jwks_url(url: str) -> bool:
    parts = urlsplit(url)
    if not parts.hostname or parts.username or parts.password:
        return False
    if parts.scheme == "https":
        return True
    # Plain http only for a JWKS served on this machine (development).
    return parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1", "::1"}


def _check_jwks_document(document: object, field_name: str) -> None:
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise TrustedClientsError('expected a JWK Set: an object with a "keys" array', field=field_name)


@dataclass(frozen=True)
class TrustedClient:
    """One CDS client (JWT issuer) this service trusts, and where its public keys come from.

    Exactly one of ``jwks_url``, ``jwks_file`` or ``jwks`` (an inline JWK Set) may be given; with none,
    keys come only from an allowlisted ``jku``. ``tenant``, when set, must equal the token's ``tenant``.
    """

    issuer: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jwks: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    allowed_jku: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer.strip():
            raise TrustedClientsError("must be a non-empty string", field="issuer")
        if isinstance(self.allowed_jku, str):
            raise TrustedClientsError("must be a list of URLs, not a single string", field="allowed_jku")
        object.__setattr__(self, "allowed_jku", tuple(self.allowed_jku))
        for index, url in enumerate(self.allowed_jku):
            if not isinstance(url, str) or not _is_acceptable_jwks_url(url):
                raise TrustedClientsError(
                    f"{_clip(url)} is not an https URL (http only on localhost)", field=f"allowed_jku[{index}]"
                )
        if isinstance(self.algorithms, str):
            raise TrustedClientsError("must be a list, not a single string", field="algorithms")
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        if not self.algorithms:
            raise TrustedClientsError("must not be empty", field="algorithms")
        for index, alg in enumerate(self.algorithms):
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise TrustedClientsError(
                    f"{_clip(alg)} is not allowed; CDS Hooks forbids 'none' and HMAC (HS*). "
                    f"Choose from {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}",
                    field=f"algorithms[{index}]",
                )
        if self.tenant is not None and (not isinstance(self.tenant, str) or not self.tenant):
            raise TrustedClientsError("must be a non-empty string or null", field="tenant")
        sources = [name for name in ("jwks_url", "jwks_file", "jwks") if getattr(self, name) is not None]
        if len(sources) > 1:
            raise TrustedClientsError(f"give only one of {', '.join(sources)}", field=sources[1])
        if not sources and not self.allowed_jku:
            raise TrustedClientsError("no key source: give jwks_url, jwks_file, jwks or allowed_jku", field="issuer")
        if self.jwks_url is not None and (
            not isinstance(self.jwks_url, str) or not _is_acceptable_jwks_url(self.jwks_url)
        ):
            raise TrustedClientsError(
                f"{_clip(self.jwks_url)} is not an https URL (http only on localhost)", field="jwks_url"
            )
        if self.jwks_file is not None:
            object.__setattr__(self, "jwks_file", Path(self.jwks_file))
        if self.jwks is not None:
            _check_jwks_document(self.jwks, "jwks")

    @property
    def configured_source(self) -> str | None:
        """The cache key of the configured JWKS (``url:``, ``file:`` or ``inline:``), if any."""
        if self.jwks_url is not None:
            return f"url:{self.jwks_url}"
        if self.jwks_file is not None:
            return f"file:{self.jwks_file}"
        if self.jwks is not None:
            return f"inline:{self.issuer}"
        return None


def load_trusted_clients(path: str | Path) -> list[TrustedClient]:
    """Read trusted CDS clients from a YAML (or JSON) file; see docs/security.md for the format.

    Relative ``jwks_file`` paths resolve against the file's folder. Errors name the file and field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TrustedClientsError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TrustedClientsError(f"not valid YAML{where}", path=path) from None
    if not isinstance(document, Mapping) or "clients" not in document:
        raise TrustedClientsError('expected a mapping with a "clients" list', path=path, field="clients")
    extra = sorted(set(document) - {"clients"})
    if extra:
        raise TrustedClientsError(f"unknown top-level field(s): {', '.join(map(str, extra))}", path=path)
    entries = document["clients"]
    if not isinstance(entries, list) or not entries:
        raise TrustedClientsError("must be a non-empty list", path=path, field="clients")

    clients: list[TrustedClient] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        prefix = f"clients[{index}]"
        if not isinstance(entry, Mapping):
            raise TrustedClientsError("must be a mapping", path=path, field=prefix)
        unknown = sorted(set(map(str, entry)) - set(_CLIENT_FIELDS))
        if unknown:
            raise TrustedClientsError(
                f"unknown field; expected one of {', '.join(_CLIENT_FIELDS)}", path=path, field=f"{prefix}.{unknown[0]}"
            )
        values = {name: entry[name] for name in _CLIENT_FIELDS if entry.get(name) is not None}
        for list_field in ("allowed_jku", "algorithms"):
            if list_field in values and not isinstance(values[list_field], list):
                raise TrustedClientsError("must be a list", path=path, field=f"{prefix}.{list_field}")
        if "jwks_file" in values:
            raw = values["jwks_file"]
            if not isinstance(raw, str) or not raw:
                raise TrustedClientsError("must be a file path", path=path, field=f"{prefix}.jwks_file")
            jwks_path = Path(raw)
            if not jwks_path.is_absolute():
                jwks_path = path.parent / jwks_path
            try:
                _check_jwks_document(json.loads(jwks_path.read_text(encoding="utf-8")), "jwks_file")
            except OSError as exc:
                raise TrustedClientsError(
                    f"cannot read {jwks_path} ({exc.strerror or exc})", path=path, field=f"{prefix}.jwks_file"
                ) from None
            except ValueError:
                raise TrustedClientsError(
                    f"{jwks_path} is not a JSON JWK Set", path=path, field=f"{prefix}.jwks_file"
                ) from None
            values["jwks_file"] = jwks_path.resolve()
        if "tenant" in values and not isinstance(values["tenant"], str):
            values["tenant"] = str(values["tenant"])  # YAML may read a numeric tenant id as an int
        try:
            client = TrustedClient(**values)
        except TrustedClientsError as exc:
            raise TrustedClientsError(exc.message, path=path, field=f"{prefix}.{exc.field}") from None
        except TypeError as exc:  # e.g. missing issuer
            raise TrustedClientsError(str(exc), path=path, field=f"{prefix}.issuer") from None
        if client.issuer in seen:
            raise TrustedClientsError(
                f"duplicate issuer (already in clients[{seen[client.issuer]}])", path=path, field=f"{prefix}.issuer"
            )
        seen[client.issuer] = index
        clients.append(client)
    return clients


# ---------------------------------------------------------------------------------------------- JWKS


@dataclass(frozen=True)
class _PublicKey:
    """A verification key and the JWK members it was published with (kty, crv, alg)."""

    jwk: Mapping[str, Any]
    key: Any  # a cryptography public key object


@dataclass
class _KeySet:
    keys: dict[str, _PublicKey]
    fetched_at: float  # last successful load (TTL)
    attempted_at: float  # last load attempt, successful or not (refetch rate limit)


def _parse_jwks(document: object, source: str) -> dict[str, _PublicKey]:
    """The usable public signing keys of a JWK Set, by ``kid``. Symmetric and unusable keys are skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWK Set (no "keys" array)')
    keys: dict[str, _PublicKey] = {}
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
            log.warning("JWKS %s: key %s skipped (%s)", source, _clip(kid), type(exc).__name__)
            continue
        if kty == "RSA" and key.key_size < _MIN_RSA_BITS:
            log.warning("JWKS %s: key %s skipped (RSA below %d bits)", source, _clip(kid), _MIN_RSA_BITS)
            continue
        keys[kid] = _PublicKey(jwk=public, key=key)
    return keys


class JWKSCache:
    """Public keys per JWKS source, cached for ``ttl`` seconds.

    A ``kid`` missing from a cached set triggers one reload of that source, at most once every
    ``refetch_interval`` seconds per source (key rotation without letting tokens drive a fetch storm).
    URLs are fetched with ``http`` (a ``requests.Session``): a timeout, no redirects, a size cap. A failed
    reload keeps the previous keys.
    """

    def __init__(
        self,
        http: requests.Session | None = None,
        *,
        ttl: float = 3600.0,
        refetch_interval: float = 60.0,
        timeout: float = 5.0,
        clock: Clock = time.time,
    ) -> None:
        self._http = http if http is not None else requests.Session()
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

    def get_key(self, source: str, kid: str) -> _PublicKey:
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
            raise AuthenticationError(f"unknown kid {_clip(kid)} in JWKS {_clip(source, 120)}", "signature")
        return key

    def _lock_for(self, source: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(source, threading.Lock())

    @staticmethod
    def _describe(source: str) -> str:
        return source.split(":", 1)[1]

    def _load(self, source: str, previous: _KeySet | None, now: float) -> _KeySet:
        try:
            keys = _parse_jwks(self._read(source), self._describe(source))
        except (requests.RequestException, OSError, ValueError) as exc:
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
        with self._http.get(
            location,
            timeout=self.timeout,
            allow_redirects=False,
            stream=True,
            headers={"Accept": "application/json, application/jwk-set+json"},
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=16384):
                body.extend(chunk)
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {_MAX_JWKS_BYTES} bytes")
        return json.loads(bytes(body))


# ------------------------------------------------------------------------------------- authenticator


@dataclass(frozen=True)
class VerifiedClient:
    """Who called: taken from a token whose signature and claims were verified."""

    issuer: str
    jti: str
    tenant: str | None = None
    sub: str | None = None


def endpoint_urls(public_base_urls: Iterable[str], path: str) -> tuple[str, ...]:
    """The URLs a JWT ``aud`` may name for a call to ``path``: each configured external base URL (e.g.
    ``https://cds.example.org/cramp``) + the path. Never derived from the request's Host or X-Forwarded-*
    headers, which the caller controls."""
    return tuple(base.rstrip("/") + "/" + path.lstrip("/") for base in public_base_urls)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _key_fits(key: _PublicKey, alg: str) -> bool:
    """The JWK may be used with ``alg``: matching key type, curve and (if the JWK names one) algorithm."""
    data = key.jwk
    declared = data.get("alg")
    if declared is not None and declared != alg:
        return False
    if alg.startswith("ES"):
        return data.get("kty") == "EC" and data.get("crv") == _EC_CURVE_FOR_ALG[alg]
    return data.get("kty") == "RSA"  # RS*, PS*


class ClientAuthenticator:
    """Verifies CDS clients' JWTs against the configured ``TrustedClient`` list."""

    def __init__(
        self,
        clients: Iterable[TrustedClient],
        replay_cache: ReplayCache | None = None,
        clock: Clock = time.time,
        leeway: float = 60.0,
        http: requests.Session | None = None,
        *,
        jwks_cache: JWKSCache | None = None,
        jwks_ttl: float = 3600.0,
        jwks_refetch_interval: float = 60.0,
        jwks_timeout: float = 5.0,
        max_lifetime: float = 3600.0,
    ) -> None:
        self._clients: dict[str, TrustedClient] = {}
        for client in clients:
            if client.issuer in self._clients:
                raise TrustedClientsError("duplicate issuer", field="issuer")
            self._clients[client.issuer] = client
        self._clock = clock
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self._replay = replay_cache if replay_cache is not None else MemoryReplayCache(clock)
        self._jwks = jwks_cache or JWKSCache(
            http, ttl=jwks_ttl, refetch_interval=jwks_refetch_interval, timeout=jwks_timeout, clock=clock
        )
        for client in self._clients.values():
            if client.jwks is not None:
                self._jwks.register_inline(f"inline:{client.issuer}", client.jwks)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> "ClientAuthenticator":
        return cls(load_trusted_clients(path), **kwargs)

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> "ClientAuthenticator":
        """From ``Settings.trusted_clients_path`` (required: there is no implicit trust)."""
        if settings.trusted_clients_path is None:
            raise TrustedClientsError("no trusted-clients file configured", field="CRAMP_TRUSTED_CLIENTS_FILE")
        try:
            return cls.from_file(settings.trusted_clients_path, **kwargs)
        except TrustedClientsError as exc:  # one line that names the variable, the file and the field
            where = f"CRAMP_TRUSTED_CLIENTS_FILE: {exc.path or settings.trusted_clients_path}"
            raise TrustedClientsError(exc.message, path=where, field=exc.field) from None

    @property
    def clients(self) -> tuple[TrustedClient, ...]:
        return tuple(self._clients.values())

    @property
    def replay_cache(self) -> ReplayCache:
        return self._replay

    def authenticate(self, authorization_header: str | None, audience: str | Iterable[str]) -> VerifiedClient:
        """Verify the bearer JWT for a call to ``audience``: this endpoint's external URL, or several (one
        per configured base URL; the token must name one of them).

        Returns who called; raises ``AuthenticationError`` (answer: bare 401, ``www_authenticate``).
        """
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        token = self._bearer_token(authorization_header)
        header, claims = self._unverified_parts(token)
        alg, kid = header["alg"], header["kid"]

        issuer = claims.get("iss")
        client = self._clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise AuthenticationError(f"untrusted iss {_clip(issuer)}", "issuer")
        if alg not in client.algorithms:
            raise AuthenticationError(f"alg {_clip(alg)} not allowed for this issuer", "signature", issuer=issuer)

        key = self._jwks.get_key(self._key_source(client, header.get("jku")), kid)
        if not _key_fits(key, alg):
            raise AuthenticationError(f"key {_clip(kid)} does not fit alg {alg}", "signature", issuer=issuer)
        try:
            decoded = jwt.api_jws.decode_complete(token, key=key.key, algorithms=[alg])
            payload = json.loads(decoded["payload"])
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthenticationError(f"signature not verified ({type(exc).__name__})", "signature", issuer=issuer) from None
        if not isinstance(payload, dict) or payload.get("iss") != issuer:
            raise AuthenticationError("signed payload differs from the parsed one", "signature", issuer=issuer)

        return self._check_claims(client, payload, audiences)

    # -- steps

    @staticmethod
    def _bearer_token(authorization_header: str | None) -> str:
        if not authorization_header:
            raise AuthenticationError("no Authorization header", "missing")
        scheme, _, token = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationError("Authorization scheme is not Bearer", "missing")
        token = token.strip()
        if len(token) > _MAX_TOKEN_CHARS or not _COMPACT_JWS.match(token):
            raise AuthenticationError("bearer token is not a compact JWS", "malformed")
        return token

    @staticmethod
    def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims before verification: used only to choose the client, algorithm and key."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError):
            raise AuthenticationError("malformed JWT", "malformed") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise AuthenticationError("malformed JWT", "malformed")
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:  # 'none', HS*, anything unknown: before any key is touched
            raise AuthenticationError(f"alg {_clip(alg)} refused", "signature")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("no kid in JWT header", "malformed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthenticationError(f"typ {_clip(typ)} is not JWT", "malformed")
        if "crit" in header or header.get("b64") is False:
            raise AuthenticationError("critical JWS extensions are not supported", "malformed")
        return header, claims

    @staticmethod
    def _key_source(client: TrustedClient, jku: object) -> str:
        if jku is not None and jku in client.allowed_jku:
            return f"url:{jku}"
        source = client.configured_source
        if source is None:
            raise AuthenticationError(f"jku {_clip(jku)} is not allowlisted for this issuer", "signature", issuer=client.issuer)
        return source

    def _check_claims(self, client: TrustedClient, claims: dict[str, Any], audiences: tuple[str, ...]) -> VerifiedClient:
        issuer = client.issuer
        now, leeway = self._clock(), self.leeway

        aud = claims.get("aud")
        named = aud if isinstance(aud, list) else [aud]
        if not set(audiences) & {value for value in named if isinstance(value, str)}:
            expected = " or ".join(_clip(value) for value in audiences) or "(no audience configured)"
            raise AuthenticationError(f"aud {_clip(aud)} is not {expected}", "audience", issuer=issuer)

        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not _is_number(exp):
            raise AuthenticationError("exp missing or not a number", "malformed", issuer=issuer)
        if not _is_number(iat):
            raise AuthenticationError("iat missing or not a number", "malformed", issuer=issuer)
        if now > exp + leeway:
            raise AuthenticationError(f"expired (exp {exp}, now {now:.0f})", "expired", issuer=issuer)
        if iat > now + leeway:
            raise AuthenticationError(f"iat {iat} is in the future (now {now:.0f})", "expired", issuer=issuer)
        if nbf is not None:
            if not _is_number(nbf):
                raise AuthenticationError("nbf not a number", "malformed", issuer=issuer)
            if nbf > now + leeway:
                raise AuthenticationError(f"not yet valid (nbf {nbf}, now {now:.0f})", "expired", issuer=issuer)
        if exp - iat > self.max_lifetime:
            raise AuthenticationError(f"lifetime {exp - iat:.0f} s exceeds {self.max_lifetime:.0f} s", "expired", issuer=issuer)

        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthenticationError("tenant not a string", "malformed", issuer=issuer)
        if client.tenant is not None and tenant != client.tenant:
            raise AuthenticationError(f"tenant {_clip(tenant)} is not the configured one", "issuer", issuer=issuer)

        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise AuthenticationError("sub not a string", "malformed", issuer=issuer)

        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
            raise AuthenticationError("jti missing or invalid", "malformed", issuer=issuer)
        if self._replay.seen_before(jti, issuer, float(exp) + leeway):
            raise AuthenticationError(f"jti {_clip(jti)} replayed", "replayed", issuer=issuer)

        return VerifiedClient(issuer=issuer, jti=jti, tenant=tenant, sub=sub)
