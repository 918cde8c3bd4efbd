"""A small OpenID Connect provider on 127.0.0.1 for the console's single sign-on tests: discovery, an
authorization endpoint that signs in whoever the test says (no login page), a token endpoint that checks
the client secret and the PKCE verifier, and its JWKS. ID tokens are RS256 JWTs with the test's claims."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from support.live_service import serve_app

CLIENT_ID = "cramp-console"
CLIENT_SECRET = "console-secret-for-tests"
KID = "oidc-test-key"


@dataclass
class OidcProvider:
    claims: dict[str, Any] = field(default_factory=lambda: {"sub": "u-1", "preferred_username": "olivia",
                                                            "name": "Olivia O.", "roles": ["editor"]})
    wrong_nonce: bool = False
    url: str = ""
    pkce_checked: list[bool] = field(default_factory=list)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    _codes: dict[str, dict[str, str]] = field(default_factory=dict)
    _stop: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    # --- lifecycle
    def start(self) -> "OidcProvider":
        self.url, self._stop = serve_app(self._wsgi)
        return self

    def stop(self) -> None:
        if self._stop:
            self._stop()

    # --- endpoints
    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        handler = {"/.well-known/openid-configuration": self._discovery, "/authorize": self._authorize,
                   "/token": self._token, "/jwks": self._jwks}.get(request.path)
        response = handler(request) if handler else Response("not found", status=404)
        return response(environ, start_response)

    def _discovery(self, request: Request) -> Response:
        return _json({"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                      "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                      "response_types_supported": ["code"], "subject_types_supported": ["public"],
                      "id_token_signing_alg_values_supported": ["RS256"],
                      "code_challenge_methods_supported": ["S256"],
                      "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]})

    def _authorize(self, request: Request) -> Response:
        args = request.args.to_dict()
        self.authorize_requests.append(args)
        code = secrets.token_urlsafe(16)
        self._codes[code] = args
        return Response(status=302, headers={"Location": args["redirect_uri"] + "?" +
                                             urlencode({"code": code, "state": args.get("state", "")})})

    def _token(self, request: Request) -> Response:
        form = request.form
        client_id, client_secret = _client_credentials(request)
        if (client_id, client_secret) != (CLIENT_ID, CLIENT_SECRET):
            return _json({"error": "invalid_client"}, 401)
        granted = self._codes.pop(form.get("code", ""), None)
        if granted is None or granted.get("redirect_uri") != form.get("redirect_uri"):
            return _json({"error": "invalid_grant"}, 400)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        ok = granted.get("code_challenge_method") == "S256" and challenge == granted.get("code_challenge")
        self.pkce_checked.append(ok)
        if not ok:
            return _json({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        now = int(time.time())
        claims = {"iss": self.url, "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                  "nonce": "not-the-nonce" if self.wrong_nonce else granted.get("nonce"), **self.claims}
        id_token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": KID})
        return _json({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                      "id_token": id_token})

    def _jwks(self, request: Request) -> Response:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return _json({"keys": [{**public, "kid": KID, "alg": "RS256", "use": "sig"}]})


def _client_credentials(request: Request) -> tuple[str | None, str | None]:
    if request.authorization and request.authorization.username:
        return request.authorization.username, request.authorization.password
    return request.form.get("client_id"), request.form.get("client_secret")


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
