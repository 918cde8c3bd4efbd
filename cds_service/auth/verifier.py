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
5. The signature is verified (PyJWT's algorithm object, cryptography underneath: no hand-rolled
   cryptography) over the token's own header.payload bytes, the ones its claims were read from: the token is
   decoded once, before anything is trusted, and nothing of it is cached.
6. Claims, with an injectable clock and leeway: ``aud`` is this endpoint's external URL, one of the
   configured base URLs + the path called (string, or an array containing it); ``exp`` required, not
   past; ``iat`` required, not in the future; ``nbf`` honoured; lifetime ``exp - iat`` at most
   ``max_lifetime``; ``tenant`` equals the client's when configured; ``jti`` required.
7. ``jti`` not seen before for this issuer (``ReplayCache``), checked last so that rejected tokens never
   fill the cache.

The package, one concept a module::

    rejection.py        AuthenticationError: a request is not authenticated; ``reason`` is for logs,
                        ``category`` (one of ``CATEGORIES``) for the 401's ``WWW-Authenticate`` -> bare 401
    trusted_clients.py  TrustedClient, load_trusted_clients; TrustedClientsError (ValueError): the
                        trusted-clients configuration is invalid; names file and field
    jwks.py             JWKSCache: the clients' public keys, per source
    verifier.py         ClientAuthenticator (this module): the checks above, in that order
    client_keys.py      key pairs, JWKS and tokens for testing and for the ``keys`` CLI
    (storage/replay.py  the ReplayCache protocol and its memory, database and Redis implementations)

Thread safety: ``ClientAuthenticator``, ``JWKSCache`` and ``MemoryReplayCache`` may be shared by threads.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeGuard

from cds_service.auth.jwks import JWKSCache
from cds_service.auth.rejection import AuthenticationError, loggable
from cds_service.auth.trusted_clients import ASYMMETRIC_ALGORITHMS, TrustedClient, TrustedClientsError, load_trusted_clients
from cds_service.header_limits import MAX_TOKEN_BYTES
from cds_service.storage.replay import MemoryReplayCache, ReplayCache

__all__ = ["ClientAuthenticator", "VerifiedClient", "endpoint_urls"]

Clock = Callable[[], float]

_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_MAX_TOKEN_CHARS = MAX_TOKEN_BYTES  # docs/security.md: tokens up to 16 KiB; the headers limits fit them
_MAX_JTI_CHARS = 512


@dataclass(frozen=True)
class _CompactJws:
    """A compact JWS decoded once: header and claims as sent (not yet trusted), and what the signature covers."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes  # the ASCII "header.payload" the signature is over
    signature: bytes


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


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ClientAuthenticator:
    """Verifies CDS clients' JWTs against the configured ``TrustedClient`` list."""

    def __init__(
        self,
        clients: Iterable[TrustedClient],
        replay_cache: ReplayCache | None = None,
        clock: Clock = time.time,
        leeway: float = 60.0,
        http: Any = None,  # a requests.Session for JWKS URLs (fhir/session.build_session)
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
        jws = self._unverified_parts(self._bearer_token(authorization_header))
        header, claims = jws.header, jws.claims
        alg, kid = header["alg"], header["kid"]

        issuer = claims.get("iss")
        client = self._clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise AuthenticationError(f"untrusted iss {loggable(issuer)}", "issuer")
        if alg not in client.algorithms:
            raise AuthenticationError(f"alg {loggable(alg)} not allowed for this issuer", "signature", issuer=issuer)

        key = self._jwks.get_key(self._key_source(client, header.get("jku")), kid)
        if not key.fits(alg):
            raise AuthenticationError(f"key {loggable(kid)} does not fit alg {alg}", "signature", issuer=issuer)
        if not key.verify(alg, jws.signing_input, jws.signature):
            raise AuthenticationError("signature not verified", "signature", issuer=issuer)

        return self._check_claims(client, claims, audiences)  # the claims just verified: read from those bytes

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
    def _unverified_parts(token: str) -> _CompactJws:
        """The token decoded, its header checked: header and claims choose the client, algorithm and key,
        and are trusted only once the signature over their own bytes is verified."""
        jws = _decode_compact(token)
        header = jws.header
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:  # 'none', HS*, anything unknown: before any key is touched
            raise AuthenticationError(f"alg {loggable(alg)} refused", "signature")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("no kid in JWT header", "malformed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthenticationError(f"typ {loggable(typ)} is not JWT", "malformed")
        if "crit" in header or header.get("b64") is False:
            raise AuthenticationError("malformed JWT: critical JWS extensions are not supported", "malformed")
        return jws

    @staticmethod
    def _key_source(client: TrustedClient, jku: object) -> str:
        if jku is not None and jku in client.allowed_jku:
            return f"url:{jku}"
        source = client.configured_source
        if source is None:
            raise AuthenticationError(f"jku {loggable(jku)} is not allowlisted for this issuer", "signature", issuer=client.issuer)
        return source

    def _check_claims(self, client: TrustedClient, claims: dict[str, Any], audiences: tuple[str, ...]) -> VerifiedClient:
        issuer = client.issuer
        now, leeway = self._clock(), self.leeway

        aud = claims.get("aud")
        named = aud if isinstance(aud, list) else [aud]
        if not set(audiences) & {value for value in named if isinstance(value, str)}:
            expected = " or ".join(loggable(value) for value in audiences) or "(no audience configured)"
            raise AuthenticationError(f"aud {loggable(aud)} is not {expected}", "audience", issuer=issuer)

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
            raise AuthenticationError(f"tenant {loggable(tenant)} is not the configured one", "issuer", issuer=issuer)

        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise AuthenticationError("sub not a string", "malformed", issuer=issuer)

        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
            raise AuthenticationError("jti missing or invalid", "malformed", issuer=issuer)
        if self._replay.seen_before(jti, issuer, float(exp) + leeway):
            raise AuthenticationError(f"jti {loggable(jti)} replayed", "replayed", issuer=issuer)

        return VerifiedClient(issuer=issuer, jti=jti, tenant=tenant, sub=sub)


def _decode_compact(token: str) -> _CompactJws:
    """Split and decode a compact JWS (``_bearer_token`` matched its three base64url parts), as strictly as
    PyJWT does: each part canonical base64url (one token string per signature), header and claims JSON
    objects. Once per request: PyJWT's unverified reads and its verifying decode each decoded it again."""
    header_part, payload_part, signature_part = token.split(".")
    try:
        header = json.loads(_base64url(header_part))
        claims = json.loads(_base64url(payload_part))
        signature = _base64url(signature_part)
    except (ValueError, RecursionError):  # binascii.Error and json's errors are ValueErrors
        raise AuthenticationError("malformed JWT", "malformed") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthenticationError("malformed JWT", "malformed")
    return _CompactJws(header, claims, f"{header_part}.{payload_part}".encode("ascii"), signature)


def _base64url(part: str) -> bytes:
    """Unpadded base64url, canonical only: a string whose unused bits are not zero is refused (binascii.Error)."""
    decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != part.encode("ascii"):
        raise binascii.Error("not canonical base64url")
    return decoded
