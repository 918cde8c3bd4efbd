"""Single sign-on to the console with OpenID Connect (docs/admin-console.md), against a real provider on
127.0.0.1 (support/oidc_provider.py): discovery, PKCE, state and nonce checked, the role from the ID
token's claim (highest known; none -> "no console role")."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from support.admin_console import console_app
from support.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider


@pytest.fixture
def provider():
    provider = OidcProvider().start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def app(tmp_path, provider):
    return console_app(tmp_path, admin_oidc_issuer=provider.url, admin_oidc_client_id=CLIENT_ID,
                       admin_oidc_client_secret=CLIENT_SECRET)


def _to_provider(client, next_path: str = "/admin/audit") -> str:
    start = client.get("/admin/oidc/login", query_string={"next": next_path})
    assert start.status_code == 302, start.get_data(as_text=True)
    return start.headers["Location"]


def _provider_answer(authorize_url: str) -> str:
    """The callback URL the provider sends the browser back to (path and query)."""
    answer = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    back = urlsplit(answer.headers["Location"])
    return f"{back.path}?{back.query}"


def test_single_sign_on_with_pkce_gives_the_role_of_the_claim(app, provider) -> None:
    provider.claims["roles"] = ["viewer", "deployer", "something-else"]
    client = app.test_client()
    login_page = client.get("/admin/login").get_data(as_text=True)
    assert "Sign in with single sign-on" in login_page
    authorize = _to_provider(client)
    assert authorize.startswith(provider.url + "/authorize")
    sent = parse_qs(urlsplit(authorize).query)
    assert sent["code_challenge_method"] == ["S256"] and sent["code_challenge"][0]
    assert sent["nonce"][0] and sent["state"][0] and "openid" in sent["scope"][0].split()
    assert sent["redirect_uri"] == ["http://localhost/admin/oidc/callback"]

    done = client.get(_provider_answer(authorize))
    assert done.status_code == 302 and done.headers["Location"] == "/admin/audit"
    assert provider.pkce_checked == [True]
    home = client.get("/admin/").get_data(as_text=True)
    assert "Olivia O." in home and "role-deployer" in home
    assert client.get("/admin/users").status_code == 200
    audit = app.extensions["leg_cramp_admin_store"].audit_log()[0]
    assert (audit.actor, audit.action) == ("olivia", "sign-in") and "single sign-on" in audit.summary


def test_no_known_role_is_a_403_page_and_no_session(app, provider) -> None:
    provider.claims["roles"] = "nurse pharmacist"
    client = app.test_client()
    response = client.get(_provider_answer(_to_provider(client)))
    assert response.status_code == 403
    assert "No console role" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_a_state_that_is_not_this_browsers_is_refused(app, provider) -> None:
    victim, attacker = app.test_client(), app.test_client()
    callback = _provider_answer(_to_provider(attacker))  # the attacker's code, sent to the victim's browser
    _to_provider(victim)
    response = victim.get(callback)
    assert response.status_code == 400 and "Single sign-on failed" in response.get_data(as_text=True)
    assert victim.get("/admin/").status_code == 302


def test_an_id_token_with_another_nonce_is_refused(app, provider) -> None:
    provider.wrong_nonce = True
    client = app.test_client()
    response = client.get(_provider_answer(_to_provider(client)))
    assert response.status_code == 400 and "Single sign-on failed" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_a_provider_that_does_not_answer_is_a_page_not_a_500(tmp_path) -> None:
    app = console_app(tmp_path, admin_oidc_issuer="http://127.0.0.1:9", admin_oidc_client_id=CLIENT_ID,
                      admin_oidc_client_secret=CLIENT_SECRET)
    response = app.test_client().get("/admin/oidc/login")
    assert response.status_code == 503 and "identity provider did not answer" in response.get_data(as_text=True)


def test_without_oidc_settings_the_sso_routes_do_not_exist(tmp_path) -> None:
    app = console_app(tmp_path)
    assert app.test_client().get("/admin/oidc/login").status_code == 404
    assert "single sign-on" not in app.test_client().get("/admin/login").get_data(as_text=True)
