"""CDS client JWT verification (cds_service.auth.verifier): an attack table, the accepted shapes, the real Sandbox token.

No test talks to the network: every test that could fetch runs inside ``responses.RequestsMock()``, where
an unregistered request fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.auth.jwks import JWKSCache
from cds_service.auth.rejection import CATEGORIES, AuthenticationError, www_authenticate
from cds_service.auth.trusted_clients import TrustedClient, TrustedClientsError, load_trusted_clients
from cds_service.auth.verifier import ClientAuthenticator, VerifiedClient, endpoint_urls
from cds_service.storage.replay import MemoryReplayCache, RedisReplayCache, ReplayCache

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SANDBOX_REQUEST = SHARED / "spec" / "sandbox" / "request-patient-view.json"
SANDBOX_JWKS = SHARED / "spec" / "sandbox" / "jwks.json"
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_AUDIENCE = "http://127.0.0.1:3001/cds-services/leg-cramp-stub"
SANDBOX_NOW = 1795642300  # inside iat 1795642200 .. exp 1795642500

ISSUER = "https://ehr.example.org"
JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"
AUDIENCE = "https://cds.example.org/cds-services/leg-cramp"
NOW = 1_800_000_000.0


# ------------------------------------------------------------------------------------------- helpers


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        data = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk for key in keys]}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 290,
        "jti": str(uuid.uuid4()),
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def sign(key: SigningKey, payload: dict[str, Any] | None = None, **header: Any) -> str:
    headers = {"kid": key.kid, "typ": "JWT", **header}
    return jwt.encode(payload or claims(), key.private, algorithm=key.alg, headers=headers)


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class FakeClock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    """An authenticator over one trusted client, with its clock and keys."""

    authenticator: ClientAuthenticator
    clock: FakeClock
    keys: dict[str, SigningKey] = field(default_factory=dict)

    def authenticate(self, token: str, audience: str = AUDIENCE) -> VerifiedClient:
        return self.authenticator.authenticate(bearer(token), audience)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def es384_key() -> SigningKey:
    return SigningKey("es384-1", "ES384", ec.generate_private_key(ec.SECP384R1()))


@pytest.fixture(scope="session")
def es384_rotated_key() -> SigningKey:
    return SigningKey("es384-2", "ES384", ec.generate_private_key(ec.SECP384R1()))


@pytest.fixture(scope="session")
def es256_key() -> SigningKey:
    return SigningKey("es256-1", "ES256", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="session")
def rs384_key() -> SigningKey:
    return SigningKey("rs384-1", "RS384", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def attacker_key() -> SigningKey:
    return SigningKey("es384-1", "ES384", ec.generate_private_key(ec.SECP384R1()))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_setup(clock: FakeClock) -> Callable[..., Setup]:
    def make(*keys: SigningKey, **client_fields: Any) -> Setup:
        fields = {"issuer": ISSUER, "jwks": jwks_of(*keys), **client_fields}
        if "jwks_url" in client_fields or "jwks_file" in client_fields:
            fields.pop("jwks")
        authenticator = ClientAuthenticator([TrustedClient(**fields)], MemoryReplayCache(clock), clock=clock)
        return Setup(authenticator, clock, {key.kid: key for key in keys})

    return make


@pytest.fixture
def setup(make_setup: Callable[..., Setup], es384_key: SigningKey, rs384_key: SigningKey) -> Setup:
    """Trusted: ISSUER with an inline JWKS (ES384 + RS384 keys), default algorithms, tenant "tenant-a"."""
    return make_setup(es384_key, rs384_key, tenant="tenant-a", allowed_jku=(JWKS_URL,))


@pytest.fixture
def no_network():
    """Any HTTP request inside the test fails (nothing registered); yields the mock to inspect calls."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# -------------------------------------------------------------------------------------- attack table


def _no_header(keys: dict[str, SigningKey]) -> str | None:
    return None


def _not_bearer(keys: dict[str, SigningKey]) -> str:
    return "Basic " + base64.b64encode(b"user:pass").decode()


def _alg_none(keys: dict[str, SigningKey]) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": "es384-1"}
    return bearer(f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims(tenant='tenant-a')).encode())}.")


def _alg_none_with_signature(keys: dict[str, SigningKey]) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": "es384-1"}
    body = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims(tenant='tenant-a')).encode())}"
    return bearer(f"{body}.{b64url(b'x' * 16)}")


def _hs384_with_public_key(keys: dict[str, SigningKey]) -> str:
    """The classic key-confusion attack: HMAC keyed with the server's (public) verification key."""
    key = keys["es384-1"]
    header = {"alg": "HS384", "typ": "JWT", "kid": key.kid}
    body = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims(tenant='tenant-a')).encode())}"
    mac = hmac.new(key.public_pem, body.encode("ascii"), hashlib.sha384).digest()
    return bearer(f"{body}.{b64url(mac)}")


def _hs384_with_jwk_json(keys: dict[str, SigningKey]) -> str:
    key = keys["es384-1"]
    header = {"alg": "HS384", "typ": "JWT", "kid": key.kid}
    body = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims(tenant='tenant-a')).encode())}"
    mac = hmac.new(json.dumps(key.jwk).encode(), body.encode("ascii"), hashlib.sha384).digest()
    return bearer(f"{body}.{b64url(mac)}")


def _valid(keys: dict[str, SigningKey], **overrides: Any) -> str:
    return bearer(sign(keys["es384-1"], claims(tenant="tenant-a", **overrides)))


def _tampered_payload(keys: dict[str, SigningKey]) -> str:
    token = sign(keys["es384-1"], claims(tenant="tenant-a"))
    header, _, signature = token.split(".")
    forged = claims(tenant="tenant-a", sub="admin")
    return bearer(f"{header}.{b64url(json.dumps(forged).encode())}.{signature}")


def _tampered_signature(keys: dict[str, SigningKey]) -> str:
    token = sign(keys["es384-1"], claims(tenant="tenant-a"))
    header, payload, signature = token.split(".")
    flipped = ("A" if signature[5] != "A" else "B")
    return bearer(f"{header}.{payload}.{signature[:5]}{flipped}{signature[6:]}")


_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _non_canonical(part: int) -> Callable[[dict[str, SigningKey]], str]:
    """A valid token with one part re-spelt: the last character's unused bits set, so the part decodes to the
    same bytes (the signature covers the spelling, but it is refused before that as malformed)."""
    def make(keys: dict[str, SigningKey]) -> str:
        for pad in range(4):  # a claim that gives both header and payload a last character with unused bits
            parts = sign(keys["es384-1"], claims(tenant="tenant-a", pad="x" * pad)).split(".")
            if len(parts[part]) % 4 in (2, 3):
                break
        last = parts[part][-1]
        parts[part] = parts[part][:-1] + _BASE64URL[_BASE64URL.index(last) ^ 1]
        assert base64.urlsafe_b64decode(parts[part] + "==") == base64.urlsafe_b64decode(
            parts[part][:-1] + last + "==")
        return bearer(".".join(parts))
    return make


def _short_signature(keys: dict[str, SigningKey]) -> str:
    header, payload, signature = sign(keys["es384-1"], claims(tenant="tenant-a")).split(".")
    return bearer(f"{header}.{payload}.{signature[:-4]}")


def _attacker_same_kid(keys: dict[str, SigningKey], attacker: SigningKey) -> str:
    return bearer(sign(attacker, claims(tenant="tenant-a")))


ATTACKS: list[tuple[str, Callable[..., str | None], str, str]] = [
    ("no header", _no_header, r"no Authorization", "missing"),
    ("empty header", lambda keys: "", r"no Authorization", "missing"),
    ("not Bearer", _not_bearer, r"not Bearer", "missing"),
    ("Bearer without token", lambda keys: "Bearer ", r"compact JWS", "malformed"),
    ("malformed: one part", lambda keys: "Bearer abc", r"compact JWS", "malformed"),
    ("malformed: two parts", lambda keys: "Bearer abc.def", r"compact JWS", "malformed"),
    ("malformed: garbage parts", lambda keys: "Bearer abc.def.ghi", r"malformed", "malformed"),
    ("malformed: JWE (five parts)", lambda keys: "Bearer a.b.c.d.e", r"compact JWS", "malformed"),
    ("malformed: header not JSON", lambda keys: f"Bearer {b64url(b'not json')}.{b64url(b'{}')}.{b64url(b'sig')}", r"malformed", "malformed"),
    ("alg none", _alg_none, r"compact JWS|'none' refused", "malformed"),
    ("alg none with a signature", _alg_none_with_signature, r"'none' refused", "signature"),
    ("HS384 keyed with the public key PEM", _hs384_with_public_key, r"'HS384' refused", "signature"),
    ("HS384 keyed with the JWK JSON", _hs384_with_jwk_json, r"'HS384' refused", "signature"),
    ("unknown kid", lambda keys: bearer(sign(keys["es384-1"], claims(tenant="tenant-a"), kid="who-knows")), r"unknown kid", "signature"),
    ("no kid", lambda keys: bearer(jwt.encode(claims(tenant="tenant-a"), keys["es384-1"].private, algorithm="ES384")), r"no kid", "malformed"),
    ("unknown iss", lambda keys: _valid(keys, iss="https://evil.example"), r"untrusted iss", "issuer"),
    ("no iss", lambda keys: _valid(keys, iss=None), r"untrusted iss", "issuer"),
    ("expired", lambda keys: _valid(keys, iat=int(NOW) - 600, exp=int(NOW) - 61), r"expired", "expired"),
    ("no exp", lambda keys: _valid(keys, exp=None), r"exp missing", "malformed"),
    ("exp not a number", lambda keys: _valid(keys, exp="1800000300"), r"exp missing", "malformed"),
    ("iat in the future", lambda keys: _valid(keys, iat=int(NOW) + 61, exp=int(NOW) + 300), r"iat .* future", "expired"),
    ("no iat", lambda keys: _valid(keys, iat=None), r"iat missing", "malformed"),
    ("nbf in the future", lambda keys: _valid(keys, nbf=int(NOW) + 120), r"not yet valid", "expired"),
    ("lifetime over an hour", lambda keys: _valid(keys, iat=int(NOW) - 10, exp=int(NOW) + 7200), r"lifetime", "expired"),
    ("wrong aud", lambda keys: _valid(keys, aud="https://cds.example.org/cds-services/other"), r"aud", "audience"),
    ("aud with a query", lambda keys: _valid(keys, aud=AUDIENCE + "?x=1"), r"aud", "audience"),
    ("aud array without us", lambda keys: _valid(keys, aud=["https://a.example", "https://b.example"]), r"aud", "audience"),
    ("no aud", lambda keys: _valid(keys, aud=None), r"aud", "audience"),
    ("no jti", lambda keys: _valid(keys, jti=None), r"jti", "malformed"),
    ("empty jti", lambda keys: _valid(keys, jti=""), r"jti", "malformed"),
    ("tampered payload", _tampered_payload, r"signature not verified", "signature"),
    ("tampered signature", _tampered_signature, r"signature not verified", "signature"),
    ("signature of the wrong length", _short_signature, r"signature not verified", "signature"),
    ("header spelt non-canonically", _non_canonical(0), r"malformed", "malformed"),
    ("payload spelt non-canonically", _non_canonical(1), r"malformed", "malformed"),
    ("a part of 4n+1 characters", lambda keys: f"Bearer {b64url(b'{}')}.{b64url(b'{}')}.abcde", r"malformed",
     "malformed"),
    ("payload not a JSON object", lambda keys: f"Bearer {b64url(b'{}')}.{b64url(b'[1]')}.{b64url(b'sig')}",
     r"malformed", "malformed"),
    ("wrong tenant", lambda keys: bearer(sign(keys["es384-1"], claims(tenant="tenant-b"))), r"tenant", "issuer"),
    ("missing tenant", lambda keys: bearer(sign(keys["es384-1"], claims())), r"tenant", "issuer"),
    ("typ not JWT", lambda keys: bearer(sign(keys["es384-1"], claims(tenant="tenant-a"), typ="at+jwt")), r"typ", "malformed"),
    ("crit header", lambda keys: bearer(sign(keys["es384-1"], claims(tenant="tenant-a"), crit=["exp"], exp=1)), r"malformed", "malformed"),
]


@pytest.mark.parametrize(("make_header", "reason", "category"), [(a, r, c) for _, a, r, c in ATTACKS],
                         ids=[n for n, _, _, _ in ATTACKS])
def test_auth_rejects_attack(
    setup: Setup, no_network, make_header: Callable[..., str | None], reason: str, category: str
) -> None:
    header = make_header(setup.keys)
    with pytest.raises(AuthenticationError, match=reason) as caught:
        setup.authenticator.authenticate(header, AUDIENCE)
    assert caught.value.category == category
    assert not no_network.calls, "an attack must not make the service fetch anything"


def test_auth_rejects_replayed_jti(setup: Setup, es384_key: SigningKey) -> None:
    token = sign(es384_key, claims(tenant="tenant-a"))
    setup.authenticate(token)
    with pytest.raises(AuthenticationError, match="replayed") as caught:
        setup.authenticate(token)
    assert caught.value.category == "replayed"
    # The same jti in a freshly signed token is a replay too.
    again = sign(es384_key, claims(tenant="tenant-a", jti=jwt.decode(token, options={"verify_signature": False})["jti"]))
    with pytest.raises(AuthenticationError, match="replayed"):
        setup.authenticate(again)


def test_auth_rejects_key_from_an_attacker_using_a_trusted_kid(setup: Setup, attacker_key: SigningKey, no_network) -> None:
    with pytest.raises(AuthenticationError, match="signature"):
        setup.authenticate(sign(attacker_key, claims(tenant="tenant-a")))


def test_auth_rejects_jku_not_allowlisted_without_fetching(
    make_setup: Callable[..., Setup], es384_key: SigningKey, attacker_key: SigningKey, no_network
) -> None:
    evil_jku = "https://evil.example/jwks.json"
    no_network.get(evil_jku, json=jwks_of(SigningKey("evil", "ES384", attacker_key.private)))
    token_claims = claims()
    evil_token = sign(SigningKey("evil", "ES384", attacker_key.private), token_claims, jku=evil_jku)

    # Client with configured keys: the jku is ignored, the attacker's kid is not among them.
    with_keys = make_setup(es384_key, allowed_jku=(SANDBOX_JKU,))
    with pytest.raises(AuthenticationError, match="unknown kid"):
        with_keys.authenticate(evil_token)

    # Client trusting only an allowlisted jku: a different jku is refused outright.
    jku_only = ClientAuthenticator(
        [TrustedClient(issuer=ISSUER, allowed_jku=(JWKS_URL,))], MemoryReplayCache(FakeClock()), clock=FakeClock()
    )
    with pytest.raises(AuthenticationError, match="not allowlisted"):
        jku_only.authenticate(bearer(evil_token), AUDIENCE)

    # A jku that is a prefix/variant of the allowlisted one is not the same URL.
    variant = sign(SigningKey("evil", "ES384", attacker_key.private), claims(), jku=JWKS_URL + "?x=1")
    with pytest.raises(AuthenticationError, match="not allowlisted"):
        jku_only.authenticate(bearer(variant), AUDIENCE)

    assert len(no_network.calls) == 0


def test_auth_rejects_es256_when_only_es384_allowed(make_setup: Callable[..., Setup], es256_key: SigningKey, es384_key: SigningKey) -> None:
    setup = make_setup(es384_key, es256_key, algorithms=("ES384",))
    with pytest.raises(AuthenticationError, match="alg 'ES256' not allowed"):
        setup.authenticate(sign(es256_key))


def test_auth_rejects_es256_by_default(make_setup: Callable[..., Setup], es256_key: SigningKey) -> None:
    setup = make_setup(es256_key)
    with pytest.raises(AuthenticationError, match="not allowed"):
        setup.authenticate(sign(es256_key))


def test_auth_rejects_key_that_does_not_fit_alg(make_setup: Callable[..., Setup], es384_key: SigningKey) -> None:
    """An ES384 key published as kid X can't be used by a token claiming ES256 for kid X."""
    p256_signer = SigningKey(es384_key.kid, "ES256", ec.generate_private_key(ec.SECP256R1()))
    setup = make_setup(es384_key, algorithms=("ES256", "ES384"))
    with pytest.raises(AuthenticationError, match="does not fit"):
        setup.authenticate(sign(p256_signer))


def test_auth_skips_symmetric_keys_in_jwks(make_setup: Callable[..., Setup], es384_key: SigningKey, clock: FakeClock) -> None:
    oct_jwk = {"kty": "oct", "kid": "shared", "k": b64url(b"s" * 48), "alg": "HS384"}
    client = TrustedClient(issuer=ISSUER, jwks={"keys": [oct_jwk, es384_key.jwk]})
    authenticator = ClientAuthenticator([client], MemoryReplayCache(clock), clock=clock)
    header = {"alg": "HS384", "typ": "JWT", "kid": "shared"}
    body = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims()).encode())}"
    token = f"{body}.{b64url(hmac.new(b's' * 48, body.encode(), hashlib.sha384).digest())}"
    with pytest.raises(AuthenticationError, match="refused"):
        authenticator.authenticate(bearer(token), AUDIENCE)


def test_auth_error_reason_never_contains_the_token(setup: Setup, es384_key: SigningKey) -> None:
    token = sign(es384_key, claims(tenant="tenant-a", aud="https://wrong.example"))
    with pytest.raises(AuthenticationError) as caught:
        setup.authenticate(token)
    for part in token.split("."):
        assert part not in caught.value.reason
        assert part not in str(caught.value)


# ---------------------------------------------------------------------------------------- positives


def test_auth_accepts_es384(setup: Setup, es384_key: SigningKey, no_network) -> None:
    jti = str(uuid.uuid4())
    client = setup.authenticate(sign(es384_key, claims(tenant="tenant-a", jti=jti)))
    assert client == VerifiedClient(issuer=ISSUER, jti=jti, tenant="tenant-a", sub=None)
    assert not no_network.calls


def test_auth_accepts_rs384(setup: Setup, rs384_key: SigningKey) -> None:
    client = setup.authenticate(sign(rs384_key, claims(tenant="tenant-a")))
    assert client.issuer == ISSUER


def test_auth_accepts_es256_where_configured(make_setup: Callable[..., Setup], es256_key: SigningKey) -> None:
    setup = make_setup(es256_key, algorithms=("ES256",))
    assert setup.authenticate(sign(es256_key)).issuer == ISSUER


def test_auth_accepts_aud_array(setup: Setup, es384_key: SigningKey) -> None:
    token = sign(es384_key, claims(tenant="tenant-a", aud=["https://other.example", AUDIENCE]))
    assert setup.authenticate(token).issuer == ISSUER


def test_auth_accepts_lowercase_bearer_scheme(setup: Setup, es384_key: SigningKey) -> None:
    token = sign(es384_key, claims(tenant="tenant-a"))
    assert setup.authenticator.authenticate(f"bearer {token}", AUDIENCE).issuer == ISSUER


def test_auth_accepts_epic_style_token(make_setup: Callable[..., Setup], rs384_key: SigningKey) -> None:
    """Epic: RS384, a `sub` (the client id), `nbf`, no `tenant`, a jku."""
    setup = make_setup(rs384_key, algorithms=("RS384",))
    epic_claims = claims(sub="a1b2c3-client-id", nbf=int(NOW) - 10)
    client = setup.authenticate(sign(rs384_key, epic_claims, jku="https://fhir.example.org/jwks"))
    assert client.sub == "a1b2c3-client-id"
    assert client.tenant is None


def test_auth_accepts_within_leeway(setup: Setup, es384_key: SigningKey) -> None:
    just_expired = claims(tenant="tenant-a", iat=int(NOW) - 300, exp=int(NOW) - 30)
    assert setup.authenticate(sign(es384_key, just_expired)).issuer == ISSUER
    slightly_ahead = claims(tenant="tenant-a", iat=int(NOW) + 30, nbf=int(NOW) + 30)
    assert setup.authenticate(sign(es384_key, slightly_ahead)).issuer == ISSUER


def test_auth_leeway_is_configurable(es384_key: SigningKey, clock: FakeClock) -> None:
    client = TrustedClient(issuer=ISSUER, jwks=jwks_of(es384_key))
    strict = ClientAuthenticator([client], MemoryReplayCache(clock), clock=clock, leeway=0)
    with pytest.raises(AuthenticationError, match="expired"):
        strict.authenticate(bearer(sign(es384_key, claims(iat=int(NOW) - 300, exp=int(NOW) - 1))), AUDIENCE)


def test_auth_fetches_allowlisted_jku(make_setup: Callable[..., Setup], es384_key: SigningKey, rs384_key: SigningKey) -> None:
    jku = "https://keys.ehr.example.org/jwks.json"
    setup = make_setup(rs384_key, allowed_jku=(jku,))  # the inline set lacks the ES384 key
    with responses.RequestsMock() as mock:
        mock.get(jku, json=jwks_of(es384_key))
        assert setup.authenticate(sign(es384_key, jku=jku)).issuer == ISSUER
        assert setup.authenticate(sign(es384_key, jku=jku)).issuer == ISSUER  # cached
        assert len(mock.calls) == 1


def test_auth_key_rotation_refetches_once_per_interval(
    make_setup: Callable[..., Setup], es384_key: SigningKey, es384_rotated_key: SigningKey, clock: FakeClock
) -> None:
    setup = make_setup(jwks_url=JWKS_URL)
    third = SigningKey("es384-3", "ES384", ec.generate_private_key(ec.SECP384R1()))
    # The third registration would hand out the third key if a fetch happened: it must stay unused.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(JWKS_URL, json=jwks_of(es384_key))
        mock.get(JWKS_URL, json=jwks_of(es384_key, es384_rotated_key))
        mock.get(JWKS_URL, json=jwks_of(es384_key, es384_rotated_key, third))

        assert setup.authenticate(sign(es384_key)).issuer == ISSUER
        assert len(mock.calls) == 1

        clock.now += 120  # past the refetch interval: the client rotated to a new key
        assert setup.authenticate(sign(es384_rotated_key, claims(iat=int(clock.now), exp=int(clock.now) + 300))).issuer
        assert len(mock.calls) == 2

        clock.now += 10  # within the interval: another unknown kid must not trigger a fetch
        with pytest.raises(AuthenticationError, match="unknown kid"):
            setup.authenticate(sign(third, claims(iat=int(clock.now), exp=int(clock.now) + 300)))
        assert len(mock.calls) == 2
        for call in mock.calls:
            assert call.request.url == JWKS_URL


def test_jwks_cache_refreshes_after_ttl(es384_key: SigningKey, es384_rotated_key: SigningKey, clock: FakeClock) -> None:
    cache = JWKSCache(requests.Session(), ttl=3600, refetch_interval=60, clock=clock)
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, json=jwks_of(es384_key))
        mock.get(JWKS_URL, json=jwks_of(es384_rotated_key))
        assert cache.get_key(f"url:{JWKS_URL}", es384_key.kid)
        clock.now += 1800
        assert cache.get_key(f"url:{JWKS_URL}", es384_key.kid)
        assert len(mock.calls) == 1
        clock.now += 1801  # TTL passed: the set is reloaded and the retired key disappears
        with pytest.raises(AuthenticationError, match="unknown kid"):
            cache.get_key(f"url:{JWKS_URL}", es384_key.kid)
        assert len(mock.calls) == 2


def test_jwks_fetch_does_not_follow_redirects(make_setup: Callable[..., Setup], es384_key: SigningKey) -> None:
    setup = make_setup(jwks_url=JWKS_URL)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(JWKS_URL, status=302, headers={"Location": "https://evil.example/jwks.json"})
        mock.get("https://evil.example/jwks.json", json=jwks_of(es384_key))
        with pytest.raises(AuthenticationError, match="unknown kid"):
            setup.authenticate(sign(es384_key))
        assert [call.request.url for call in mock.calls] == [JWKS_URL]


def test_jwks_fetch_failure_is_rate_limited_and_keeps_old_keys(
    make_setup: Callable[..., Setup], es384_key: SigningKey, es384_rotated_key: SigningKey, clock: FakeClock
) -> None:
    setup = make_setup(jwks_url=JWKS_URL)
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, body=requests.ConnectionError("down"))
        with pytest.raises(AuthenticationError):
            setup.authenticate(sign(es384_key))
        with pytest.raises(AuthenticationError):
            setup.authenticate(sign(es384_key))
        assert len(mock.calls) == 1  # an outage does not turn every request into a fetch

    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, json=jwks_of(es384_key))
        mock.get(JWKS_URL, status=500)
        clock.now += 61
        fresh = claims(iat=int(clock.now), exp=int(clock.now) + 300)
        assert setup.authenticate(sign(es384_key, fresh)).issuer == ISSUER
        clock.now += 3601  # TTL passed, reload fails: the previous keys still verify
        fresh = claims(iat=int(clock.now), exp=int(clock.now) + 300)
        assert setup.authenticate(sign(es384_key, fresh)).issuer == ISSUER
        assert len(mock.calls) == 2


def test_jwks_fetch_sends_a_timeout(make_setup: Callable[..., Setup], es384_key: SigningKey) -> None:
    seen: dict[str, Any] = {}

    class RecordingSession(requests.Session):
        def get(self, url, **kwargs):  # type: ignore[override]
            seen.update(kwargs)
            return super().get(url, **kwargs)

    client = TrustedClient(issuer=ISSUER, jwks_url=JWKS_URL)
    clock = FakeClock()
    authenticator = ClientAuthenticator([client], MemoryReplayCache(clock), clock=clock, http=RecordingSession())
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, json=jwks_of(es384_key))
        authenticator.authenticate(bearer(sign(es384_key)), AUDIENCE)
    assert seen["timeout"] > 0
    assert seen["allow_redirects"] is False


# ------------------------------------------------------------------------------------ the Sandbox


def _sandbox_authorization() -> str:
    return json.loads(SANDBOX_REQUEST.read_text())["headers"]["Authorization"]


def test_auth_accepts_real_sandbox_token_from_jwks_file(no_network) -> None:
    clock = FakeClock(SANDBOX_NOW)
    client = TrustedClient(issuer=SANDBOX_ISSUER, jwks_file=SANDBOX_JWKS, algorithms=("ES384",))
    authenticator = ClientAuthenticator([client], MemoryReplayCache(clock), clock=clock)
    verified = authenticator.authenticate(_sandbox_authorization(), SANDBOX_AUDIENCE)
    assert verified == VerifiedClient(
        issuer=SANDBOX_ISSUER, jti="75a0928b-cb17-403d-b458-5bbc1c45889a", tenant=None, sub=None
    )
    assert not no_network.calls
    with pytest.raises(AuthenticationError, match="replayed"):
        authenticator.authenticate(_sandbox_authorization(), SANDBOX_AUDIENCE)


def test_auth_accepts_real_sandbox_token_from_yaml_and_allowlisted_jku(tmp_path: Path) -> None:
    (tmp_path / "sandbox-jwks.json").write_text(SANDBOX_JWKS.read_text())
    config = tmp_path / "trusted-clients.yaml"
    config.write_text(
        "clients:\n"
        f"  - issuer: {SANDBOX_ISSUER}\n"
        "    jwks_file: sandbox-jwks.json\n"
        f"    allowed_jku: [{SANDBOX_JKU}]\n"
        "    algorithms: [ES384]\n"
        "    tenant: null\n"
    )
    clock = FakeClock(SANDBOX_NOW)
    authenticator = ClientAuthenticator.from_file(config, clock=clock)
    with responses.RequestsMock() as mock:
        mock.get(SANDBOX_JKU, body=SANDBOX_JWKS.read_text(), content_type="application/json")
        verified = authenticator.authenticate(_sandbox_authorization(), SANDBOX_AUDIENCE)
        assert len(mock.calls) == 1
    assert verified.issuer == SANDBOX_ISSUER


@pytest.mark.parametrize(
    ("now", "audience", "reason"),
    [
        (SANDBOX_NOW + 1_000, SANDBOX_AUDIENCE, "expired"),
        (SANDBOX_NOW - 1_000, SANDBOX_AUDIENCE, "future"),
        (SANDBOX_NOW, "http://127.0.0.1:3001/cds-services/other", "aud"),
        (1_700_000_000, SANDBOX_AUDIENCE, "future"),
    ],
    ids=["after exp", "before iat", "other endpoint", "the real clock of 2023"],
)
def test_auth_rejects_sandbox_token_outside_validity(now: float, audience: str, reason: str) -> None:
    clock = FakeClock(now)
    client = TrustedClient(issuer=SANDBOX_ISSUER, jwks_file=SANDBOX_JWKS)
    authenticator = ClientAuthenticator([client], MemoryReplayCache(clock), clock=clock)
    with pytest.raises(AuthenticationError, match=reason):
        authenticator.authenticate(_sandbox_authorization(), audience)


def test_auth_rejects_sandbox_token_for_another_tenant() -> None:
    clock = FakeClock(SANDBOX_NOW)
    client = TrustedClient(issuer=SANDBOX_ISSUER, jwks_file=SANDBOX_JWKS, tenant="hospital-1")
    authenticator = ClientAuthenticator([client], MemoryReplayCache(clock), clock=clock)
    with pytest.raises(AuthenticationError, match="tenant"):
        authenticator.authenticate(_sandbox_authorization(), SANDBOX_AUDIENCE)


# ------------------------------------------------------------------------------------- audience URL


@pytest.mark.parametrize(
    ("bases", "path", "expected"),
    [
        (("https://cds.example.org",), "/cds-services/x", ("https://cds.example.org/cds-services/x",)),
        (("https://cds.example.org/cramp/",), "/cds-services/x", ("https://cds.example.org/cramp/cds-services/x",)),
        (("https://a.example", "http://127.0.0.1:8080"), "/cds-services/x/feedback",
         ("https://a.example/cds-services/x/feedback", "http://127.0.0.1:8080/cds-services/x/feedback")),
        ((), "/cds-services/x", ()),
    ],
)
def test_endpoint_urls(bases: tuple[str, ...], path: str, expected: tuple[str, ...]) -> None:
    assert endpoint_urls(bases, path) == expected


def test_auth_accepts_any_of_several_audiences_and_none_other(setup: Setup, es384_key: SigningKey) -> None:
    internal = "https://cds.internal.example/cds-services/leg-cramp"
    for aud in (AUDIENCE, internal, [internal, "https://x.example"]):
        token = sign(es384_key, claims(tenant="tenant-a", aud=aud))
        assert setup.authenticator.authenticate(bearer(token), (AUDIENCE, internal)).issuer == ISSUER
    with pytest.raises(AuthenticationError, match="aud") as caught:
        setup.authenticator.authenticate(bearer(sign(es384_key, claims(tenant="tenant-a"))), ())
    assert caught.value.category == "audience"


# The header of each category, from real 401 responses of the app as production runs it (one request per
# category). The format is RFC 6750's; the description is the category and nothing else.
CATEGORY_REQUESTS = {
    "missing": lambda issuer, url: {},
    "malformed": lambda issuer, url: {"Authorization": "Bearer abc.def"},
    "issuer": lambda issuer, url: {"Authorization": f"Bearer {issuer.token(url, iss='https://evil.example')}"},
    "signature": lambda issuer, url: {"Authorization": f"Bearer {issuer.token(url, header={'kid': 'nope'})}"},
    "audience": lambda issuer, url: {"Authorization": f"Bearer {issuer.token('/cds-services/other')}"},
    "expired": lambda issuer, url: {"Authorization": f"Bearer {issuer.token(url, iat=1, exp=2)}"},
    "replayed": None,  # below: the second use of one token
}


def test_www_authenticate_header(tmp_path: Path) -> None:
    from support.hook_requests import SERVICE_URL, minimal_request
    from support.security import TestIssuer, secure_app

    assert set(CATEGORY_REQUESTS) == set(CATEGORIES)
    issuer = TestIssuer.create()
    client = secure_app(tmp_path, issuer).test_client()
    seen = {}
    for category, make_headers in CATEGORY_REQUESTS.items():
        if make_headers is None:
            headers = issuer.headers(SERVICE_URL)
            assert client.post(SERVICE_URL, json=minimal_request(), headers=headers).status_code == 200
        else:
            headers = make_headers(issuer, SERVICE_URL)
        response = client.post(SERVICE_URL, json=minimal_request(), headers=headers)
        assert response.status_code == 401 and response.get_data() == b""
        assert response.headers["X-Request-ID"]
        seen[category] = response.headers["WWW-Authenticate"]
    assert seen == {category: f'Bearer error="invalid_token", error_description="{category}"'
                    for category in CATEGORIES}
    assert seen == {category: www_authenticate(category) for category in CATEGORIES}
    with pytest.raises(ValueError):
        www_authenticate("token abc.def.ghi")


# ------------------------------------------------------------------------------------ replay caches


def test_memory_replay_cache_records_and_expires() -> None:
    clock = FakeClock(1000)
    cache = MemoryReplayCache(clock)
    assert isinstance(cache, ReplayCache)
    assert cache.seen_before("j1", "iss", 1100) is False
    assert cache.seen_before("j1", "iss", 1100) is True
    assert cache.seen_before("j1", "other-iss", 1100) is False  # per issuer
    clock.now = 1101
    assert len(cache) == 0
    assert cache.seen_before("j1", "iss", 1200) is False  # expired entries are forgotten


def test_memory_replay_cache_is_atomic_under_threads() -> None:
    cache = MemoryReplayCache(FakeClock(1000))
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.seen_before("same", "iss", 2000))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(False) == 1 and results.count(True) == 15


class FakeRedis:
    """The slice of redis.Redis that RedisReplayCache uses: SET NX EX."""

    def __init__(self) -> None:
        self.store: dict[str, tuple[bytes, int]] = {}

    def set(self, name: str, value: bytes, nx: bool = False, ex: int | None = None) -> bool | None:
        assert nx and ex is not None and ex >= 1
        if name in self.store:
            return None
        self.store[name] = (value, ex)
        return True


def test_redis_replay_cache_uses_set_nx_ex() -> None:
    redis = FakeRedis()
    cache = RedisReplayCache(redis, clock=FakeClock(1000))
    assert isinstance(cache, ReplayCache)
    assert cache.seen_before("j1", "iss", 1300.5) is False
    assert cache.seen_before("j1", "iss", 1300.5) is True
    assert cache.seen_before("j1", "iss-2", 1300.5) is False
    (_, ttl), *_ = redis.store.values()
    assert ttl == 301
    assert all(key.startswith("cramp-cds:jti:") and "j1" not in key for key in redis.store)


# ----------------------------------------------------------------------------------- configuration


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "keys.json").write_text(SANDBOX_JWKS.read_text())
    config = tmp_path / "clients.yaml"
    config.write_text(text)
    return config


def test_load_trusted_clients_reads_the_documented_format(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        "clients:\n"
        "  - issuer: https://sandbox.cds-hooks.org\n"
        "    jwks_file: keys.json\n"
        "    allowed_jku: [https://sandbox.cds-hooks.org/.well-known/jwks.json]\n"
        "    algorithms: [ES384]\n"
        "    tenant: null\n"
        "  - issuer: https://fhir.epic.example/oauth2\n"
        "    jwks_url: https://fhir.epic.example/jwks\n"
        "    algorithms: [RS384]\n"
        "    tenant: 12345\n",
    )
    sandbox, epic = load_trusted_clients(config)
    assert sandbox.jwks_file == (tmp_path / "keys.json").resolve()
    assert sandbox.allowed_jku == (SANDBOX_JKU,)
    assert sandbox.algorithms == ("ES384",)
    assert sandbox.tenant is None
    assert epic.jwks_url == "https://fhir.epic.example/jwks"
    assert epic.tenant == "12345"


def test_trusted_client_defaults_to_es384_and_rs384() -> None:
    assert TrustedClient(issuer=ISSUER, jwks_url=JWKS_URL).algorithms == ("ES384", "RS384")


BAD_FILES = [
    ("not YAML", "clients: [\n", "not valid YAML"),
    ("no clients", "issuers: []\n", "clients"),
    ("empty clients", "clients: []\n", "clients"),
    ("client not a mapping", "clients: [x]\n", "clients[0]"),
    ("no issuer", "clients:\n  - jwks_file: keys.json\n", "clients[0].issuer"),
    ("no key source", "clients:\n  - issuer: https://a\n", "clients[0].issuer"),
    ("HS256", "clients:\n  - issuer: https://a\n    jwks_file: keys.json\n    algorithms: [ES384, HS256]\n",
     "clients[0].algorithms[1]"),
    ("none", "clients:\n  - issuer: https://a\n    jwks_file: keys.json\n    algorithms: [none]\n",
     "clients[0].algorithms[0]"),
    ("algorithms a string", "clients:\n  - issuer: https://a\n    jwks_file: keys.json\n    algorithms: ES384\n",
     "clients[0].algorithms"),
    ("unknown field", "clients:\n  - issuer: https://a\n    jwks_file: keys.json\n    allowed_jkus: []\n",
     "clients[0].allowed_jkus"),
    ("missing jwks file", "clients:\n  - issuer: https://a\n    jwks_file: nowhere.json\n", "clients[0].jwks_file"),
    ("two sources", "clients:\n  - issuer: https://a\n    jwks_file: keys.json\n    jwks_url: https://a/jwks\n",
     "clients[0].jwks"),
    ("http jwks_url", "clients:\n  - issuer: https://a\n    jwks_url: http://a.example/jwks\n", "clients[0].jwks_url"),
    ("http jku", "clients:\n  - issuer: https://a\n    allowed_jku: [http://a.example/jwks]\n",
     "clients[0].allowed_jku[0]"),
    ("duplicate issuer",
     "clients:\n  - issuer: https://a\n    jwks_file: keys.json\n  - issuer: https://a\n    jwks_file: keys.json\n",
     "clients[1].issuer"),
]


@pytest.mark.parametrize(("text", "field"), [(t, f) for _, t, f in BAD_FILES], ids=[n for n, _, _ in BAD_FILES])
def test_load_trusted_clients_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    config = _write(tmp_path, text)
    with pytest.raises(TrustedClientsError) as caught:
        load_trusted_clients(config)
    assert str(config) in str(caught.value)
    assert field in str(caught.value)


def test_load_trusted_clients_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TrustedClientsError, match="cannot read"):
        load_trusted_clients(tmp_path / "absent.yaml")
