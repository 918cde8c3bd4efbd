"""Optional OpenID Connect sign-in to the console (a hospital's single sign-on), with Authlib's Flask client.

The provider is found from ``CRAMP_ADMIN_OIDC_ISSUER`` + ``/.well-known/openid-configuration``. The
authorization-code flow uses PKCE (S256); Authlib keeps state, nonce and the code verifier in the session
and checks them, and validates the ID token (signature from the provider's JWKS, issuer, audience,
expiry, nonce). The console role is the highest known role in the ID token's roles claim
(``CRAMP_ADMIN_OIDC_ROLES_CLAIM``; a list, or a string separated by spaces or commas).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, Response, session, url_for

from cds_service.admin.accounts import ROLES
from cds_service.web.admin.access import Admin

log = logging.getLogger(__name__)

CLIENT_NAME = "hospital"
EXTENSION = "leg_cramp_admin_oauth"
NEXT_KEY = "admin_oidc_next"
SCOPE = "openid profile email"


@dataclass(frozen=True)
class Outcome:
    admin: Admin | None = None  # None with no problem: signed in at the provider but without a console role
    username: str | None = None
    problem: str | None = None
    next_path: str | None = None


def _client(app: Flask) -> Any:
    oauth = app.extensions.get(EXTENSION)
    if oauth is None:
        settings = app.extensions["leg_cramp_settings"]
        oauth = OAuth(app)
        oauth.register(
            CLIENT_NAME,
            client_id=settings.admin_oidc_client_id,
            client_secret=settings.admin_oidc_client_secret,
            server_metadata_url=settings.admin_oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs={"scope": SCOPE, "code_challenge_method": "S256"},
        )
        app.extensions[EXTENSION] = oauth
    return oauth.create_client(CLIENT_NAME)


def _redirect_uri(app: Flask) -> str:
    """The callback address: from CRAMP_PUBLIC_BASE_URL when set (never trust the Host header), else this request's."""
    bases = app.extensions["leg_cramp_settings"].public_base_urls
    path = url_for("admin.oidc_callback")
    return bases[0] + path if bases else url_for("admin.oidc_callback", _external=True)


def start(app: Flask, next_path: str | None) -> Response:
    session[NEXT_KEY] = next_path
    try:
        return _client(app).authorize_redirect(_redirect_uri(app))
    except Exception as error:  # noqa: BLE001  (the provider's metadata could not be read: a page, not a 500)
        log.warning("admin console: the OpenID provider's metadata could not be read",
                    extra={"error_type": type(error).__name__})
        raise OidcUnavailable() from None


class OidcUnavailable(Exception):
    """The identity provider did not answer."""


def finish(app: Flask, roles_claim: str) -> Outcome:
    next_path = session.pop(NEXT_KEY, None)
    try:
        token = _client(app).authorize_access_token()
    except OAuthError as error:
        return Outcome(problem=f"Single sign-on failed ({error.error or 'refused'}). Try again.")
    except Exception as error:  # noqa: BLE001  (bad ID token signature, provider down, ...)
        log.warning("admin console: single sign-on failed", extra={"error_type": type(error).__name__})
        return Outcome(problem="Single sign-on failed: the identity provider's answer could not be checked. "
                               "Try again.")
    claims = token.get("userinfo")
    if not claims:
        return Outcome(problem="Single sign-on failed: the identity provider sent no ID token.")
    username = str(claims.get("preferred_username") or claims.get("email") or claims.get("sub"))
    role = highest_role(claims.get(roles_claim))
    if role is None:
        log.warning("admin console: single sign-on without a console role", extra={"claim": roles_claim})
        return Outcome(username=username, next_path=next_path)
    display = claims.get("name")
    return Outcome(admin=Admin(username, role, str(display) if display else None, via="oidc"),
                   username=username, next_path=next_path)


def highest_role(value: object) -> str | None:
    """The highest console role among a claim's values (unknown values are ignored)."""
    if isinstance(value, str):
        values = [v for v in re.split(r"[\s,]+", value) if v]
    elif isinstance(value, (list, tuple)):
        values = [str(v) for v in value]
    else:
        return None
    known = [ROLES.index(v.strip().lower()) for v in values if v.strip().lower() in ROLES]
    return ROLES[max(known)] if known else None
