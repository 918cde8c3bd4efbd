"""The admin console's sign-in and security (docs/admin-console.md): local accounts on a real AdminStore
(SQLite in tmp_path), sessions with server-side idle expiry, CSRF on /admin only, roles enforced on the
server, the console's own CSP, no CORS and no place in the OpenAPI description."""

from __future__ import annotations

import logging
import re
import sqlite3
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask

from cds_service.web.admin import ADMIN_CSP, access
from cds_service.web.admin.access import CLOCK_EXTENSION, require_role
from cds_service.web.admin.oidc import highest_role
from support.admin_console import (
    PASSWORD, accounts_of, console_app, create_admin, csrf_token_in, login_page_token, page_token, sign_in,
    signed_in_client,
)
from support.app import make_app
from support.hook_requests import SERVICE_URL, minimal_request

PUBLIC_ENDPOINTS = {"admin.login", "admin.logout", "admin.static", "admin.oidc_login", "admin.oidc_callback"}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


@pytest.fixture
def app(tmp_path):
    app = console_app(tmp_path)
    create_admin(app, "vera", "viewer", display_name="Vera Viewer")
    create_admin(app, "eddie", "editor")
    create_admin(app, "dana", "deployer")
    return app


def _without_tokens(html: str) -> str:
    return re.sub(r'(name="csrf_token" value|name="csrf-token" content)="[^"]+"', "TOKEN", html)


def _audit_actions(app) -> list[str]:
    return [entry.action for entry in app.extensions["leg_cramp_admin_store"].audit_log()]


# --- signing in and out ---------------------------------------------------------------------------------------
def test_a_page_without_a_session_sends_the_browser_to_sign_in(app) -> None:
    response = app.test_client().get("/admin/audit?page=2")
    assert response.status_code == 302
    target = urlsplit(response.headers["Location"])
    assert target.path == "/admin/login"
    assert parse_qs(target.query)["next"] == ["/admin/audit?page=2"]


def test_sign_in_shows_the_console_and_sign_out_ends_it(app) -> None:
    client = app.test_client()
    response = sign_in(client, "vera", next_path="/admin/audit")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/audit"
    home = client.get("/admin/").get_data(as_text=True)
    assert "Vera Viewer" in home and 'class="role-badge role-viewer"' in home
    assert app.extensions["leg_cramp_engine"].ruleset.version in home
    assert "sign-in" in _audit_actions(app)
    assert accounts_of(app).get_user("vera").last_login_at is not None

    out = client.post("/admin/logout", data={"csrf_token": page_token(client)})
    assert out.status_code == 302 and urlsplit(out.headers["Location"]).path == "/admin/login"
    assert "You are signed out." in client.get("/admin/login").get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_user_names_are_case_insensitive(app) -> None:
    assert sign_in(app.test_client(), "  VERA ").status_code == 302


def test_wrong_password_and_unknown_user_get_the_same_form_and_message(app) -> None:
    wrong = sign_in(app.test_client(), "vera", "not the password at all")
    unknown = sign_in(app.test_client(), "nobody-here", "not the password at all")
    assert wrong.status_code == unknown.status_code == 200
    for response in (wrong, unknown):
        html = response.get_data(as_text=True)
        assert "Unknown user name or wrong password." in html
        assert 'name="password"' in html and "not the password at all" not in html  # the password is not echoed
    # nothing in the page tells an existing user name from an unknown one (beyond the name typed)
    assert (_without_tokens(wrong.get_data(as_text=True)).replace("vera", "NAME")
            == _without_tokens(unknown.get_data(as_text=True)).replace("nobody-here", "NAME"))
    assert "sign-in" not in _audit_actions(app)


def test_a_disabled_account_cannot_sign_in_and_its_session_ends(app) -> None:
    client = signed_in_client(app, "eddie")
    accounts_of(app).set_disabled("eddie", True, actor="test")
    assert client.get("/admin/").status_code == 302  # the open session ended at the next request
    refused = sign_in(app.test_client(), "eddie")
    assert "Unknown user name or wrong password." in refused.get_data(as_text=True)


def test_a_password_change_ends_open_sessions_and_a_role_change_applies_at_once(app) -> None:
    client = signed_in_client(app, "dana")
    other = signed_in_client(app, "eddie")
    assert client.get("/admin/users").status_code == 200
    accounts_of(app).set_role("dana", "viewer", actor="test")
    assert client.get("/admin/users").status_code == 403
    accounts_of(app).set_password("eddie", "a brand new password", actor="test")
    assert other.get("/admin/").status_code == 302


def test_empty_fields_are_named_at_their_field(app) -> None:
    client = app.test_client()
    token = login_page_token(client)
    response = client.post("/admin/login", data={"username": "", "password": "", "csrf_token": token})
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert 'id="username-error"' in html and "Enter your user name." in html
    assert 'aria-describedby="username-error"' in html and "Enter your password." in html


def test_signing_in_while_the_database_is_locked_is_a_503_page_not_a_500(app, tmp_path) -> None:
    """The throttle counts the attempt in the database first: a file another writer holds fails it within the
    busy timeout, answered 503 with a page that says so; once free, the same sign-in works."""
    client = app.test_client()
    token = login_page_token(client)
    locker = sqlite3.connect(tmp_path / "console.sqlite3", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        refused = client.post("/admin/login", data={"username": "vera", "password": PASSWORD, "csrf_token": token,
                                                    "next": "/admin/"})
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert refused.status_code == 503
    assert "The database did not answer" in refused.get_data(as_text=True)
    assert sign_in(client, "vera").status_code == 302


def test_repeated_failures_are_throttled_with_a_clear_message(app) -> None:
    client = app.test_client()
    for _ in range(5):
        assert sign_in(client, "vera", "wrong password one").status_code == 200
    throttled = sign_in(client, "vera")  # even the right password: the pair is throttled
    assert throttled.status_code == 429
    assert "Too many failed sign-ins for this user name from your address" in throttled.get_data(as_text=True)
    assert sign_in(app.test_client(), "dana").status_code == 302  # another user name is not affected


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/admin", "/cds-services", "/admin\\@evil"])
def test_sign_in_never_redirects_outside_the_console(app, target: str) -> None:
    response = sign_in(app.test_client(), "vera", next_path=target)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"


# --- CSRF --------------------------------------------------------------------------------------------------------
def test_sign_in_without_or_with_a_wrong_csrf_token_is_refused_and_signs_nobody_in(app) -> None:
    client = app.test_client()
    login_page_token(client)
    for data in ({}, {"csrf_token": "not-the-token"}):
        response = client.post("/admin/login", data={"username": "vera", "password": PASSWORD, **data})
        assert response.status_code == 400
        assert "text/html" in response.content_type and "not sent from this console" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    assert accounts_of(app).get_user("vera").last_login_at is None
    assert "sign-in" not in _audit_actions(app)


def test_a_token_of_another_session_is_refused(app) -> None:
    victim = signed_in_client(app, "dana")
    attacker = app.test_client()
    attacker_token = login_page_token(attacker)
    response = victim.post("/admin/logout", data={"csrf_token": attacker_token})
    assert response.status_code == 400
    assert victim.get("/admin/users").status_code == 200  # still signed in: nothing changed


def test_a_script_sends_the_token_in_the_x_csrftoken_header(app, tmp_path) -> None:
    client = signed_in_client(app, "dana")
    token = page_token(client)
    assert client.post("/admin/logout", headers={"X-CSRFToken": token}).status_code == 302
    assert client.get("/admin/").status_code == 302


def test_https_posts_need_a_same_origin_referer_and_pages_send_one(tmp_path) -> None:
    app = console_app(tmp_path, production=True)
    create_admin(app, "dana", "deployer")
    client = app.test_client()
    https = {"base_url": "https://cds.example.org"}
    assert app.test_client().get("/admin/login", **https).headers["Referrer-Policy"] == "same-origin"
    token = login_page_token(client, **https)
    form = {"username": "dana", "password": PASSWORD, "csrf_token": token}
    assert client.post("/admin/login", data=form, **https).status_code == 400  # no Referer
    response = client.post("/admin/login", data=form, headers={"Referer": "https://cds.example.org/admin/login"},
                           **https)
    assert response.status_code == 302


def test_the_cds_api_takes_posts_without_any_csrf_token(app) -> None:
    response = app.test_client().post(SERVICE_URL, json=minimal_request())
    assert response.status_code == 200 and "cards" in response.get_json()


# --- sessions --------------------------------------------------------------------------------------------------
def test_a_session_idle_longer_than_the_setting_ends_on_the_server(tmp_path) -> None:
    app = console_app(tmp_path, admin_session_minutes=30)
    create_admin(app, "vera", "viewer")
    clock = Clock()
    app.extensions[CLOCK_EXTENSION] = clock
    client = signed_in_client(app, "vera")
    clock.advance(29)
    assert client.get("/admin/").status_code == 200
    clock.advance(29)  # 58 minutes after sign-in, 29 after the last request: still active
    assert client.get("/admin/").status_code == 200
    clock.advance(31)
    expired = client.get("/admin/audit")
    assert expired.status_code == 302 and urlsplit(expired.headers["Location"]).path == "/admin/login"
    assert "Your session ended after 30 minutes without activity" in client.get("/admin/login").get_data(as_text=True)
    assert client.get("/admin/").status_code == 302  # the session is gone, not only refused once


def test_an_expired_session_posting_a_form_is_sent_to_sign_in_and_changes_nothing(tmp_path) -> None:
    app = console_app(tmp_path, admin_session_minutes=5)
    create_admin(app, "vera", "viewer")
    clock = Clock()
    app.extensions[CLOCK_EXTENSION] = clock
    client = signed_in_client(app, "vera")
    token = page_token(client)
    clock.advance(6)
    response = client.post("/admin/logout", data={"csrf_token": token})
    assert response.status_code == 302 and urlsplit(response.headers["Location"]).path == "/admin/login"


def test_a_session_without_its_timestamp_is_not_accepted(app) -> None:
    client = signed_in_client(app, "vera")
    with client.session_transaction("/admin/") as session:
        session.pop(access.SESSION_SEEN)
    assert client.get("/admin/").status_code == 302


def test_a_script_request_without_a_session_gets_a_401_operation_outcome(app) -> None:
    response = app.test_client().get("/admin/audit", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_session_cookie_flags_in_development_mode(app) -> None:
    response = sign_in(app.test_client(), "vera")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("cramp_admin_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http on a developer's machine


def test_session_cookie_is_secure_outside_development_mode(tmp_path) -> None:
    app = console_app(tmp_path, production=True)
    response = app.test_client().get("/admin/login", base_url="https://cds.example.org")
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie


# --- roles ------------------------------------------------------------------------------------------------------
def test_the_users_page_is_for_deployers_only(app) -> None:
    for username in ("vera", "eddie"):
        response = signed_in_client(app, username).get("/admin/users")
        assert response.status_code == 403
        assert "text/html" in response.content_type and "it needs the deployer role" in response.get_data(as_text=True)
    page = signed_in_client(app, "dana").get("/admin/users").get_data(as_text=True)
    assert all(name in page for name in ("vera", "eddie", "dana"))
    assert "$argon2" not in page  # hashes never leave the server


def test_require_role_guards_a_deploy_only_post_on_the_server() -> None:
    app = make_app(admin_dev_autologin=False)
    calls: list[str] = []

    @require_role("deployer")
    def deploy_probe() -> str:
        calls.append(access.current_admin().username)
        return "deployed"

    app.add_url_rule("/admin/test-only/deploy", view_func=deploy_probe, methods=["POST"])
    store = app.extensions["leg_cramp_admin_store"]
    from support.admin_console import create_admin as create
    create(app, "vera", "viewer")
    create(app, "dana", "deployer")
    assert app.test_client().post("/admin/test-only/deploy").status_code == 302  # not signed in
    viewer = signed_in_client(app, "vera")
    assert viewer.post("/admin/test-only/deploy").status_code == 403
    assert viewer.post("/admin/test-only/deploy", headers={"Accept": "application/json"}).status_code == 403
    assert calls == []
    assert signed_in_client(app, "dana").post("/admin/test-only/deploy").get_data(as_text=True) == "deployed"
    assert calls == ["dana"] and store is app.extensions["leg_cramp_admin_store"]


def test_require_role_refuses_an_unknown_role_when_the_view_is_declared() -> None:
    with pytest.raises(ValueError, match="unknown console role"):
        require_role("superuser")


def _console_rules(app: Flask):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("admin.") and rule.endpoint not in PUBLIC_ENDPOINTS:
            yield rule


def _example_path(rule) -> str:
    path = rule.rule
    for argument in rule.arguments:
        path = re.sub(rf"<(?:[^:<>]+:)?{argument}>", "1", path)
    return path


def test_every_console_view_needs_a_session(app) -> None:
    rules = list(_console_rules(app))
    assert {"admin.home", "admin.audit", "admin.users"} <= {rule.endpoint for rule in rules}
    client = app.test_client()
    token = login_page_token(client)  # a valid CSRF token, but nobody signed in
    for rule in rules:
        path = _example_path(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method, headers={"X-CSRFToken": token})
            assert response.status_code == 302, (method, path, response.status_code)
            assert urlsplit(response.headers["Location"]).path == "/admin/login", (method, path)
            if method != "GET":  # and without the token, refused before anything else
                assert client.open(path, method=method).status_code == 400, (method, path)


def test_a_viewer_posting_any_console_action_gets_403_and_nothing_changes(app) -> None:
    posts = [(rule, _example_path(rule)) for rule in _console_rules(app) if "POST" in rule.methods]
    assert posts, "the console has actions"
    store = app.extensions["leg_cramp_admin_store"]
    before = (store.deployment_state(), len(store.audit_log()))
    viewer = signed_in_client(app, "vera")
    token = page_token(viewer)
    for rule, path in posts:
        response = viewer.post(path, data={"csrf_token": token})
        assert response.status_code == 403, (path, response.status_code)
        assert "text/html" in response.content_type
    assert (store.deployment_state(), len(store.audit_log())) == (before[0], before[1] + 1)  # + vera's sign-in


def test_an_editor_cannot_deploy_or_roll_back(app) -> None:
    deploy_only = [_example_path(rule) for rule in _console_rules(app)
                   if "POST" in rule.methods and ("deploy" in rule.rule or "rollback" in rule.rule)]
    if not deploy_only:
        pytest.skip("the rules pages (deploy, rollback) are not in this build")
    store = app.extensions["leg_cramp_admin_store"]
    state = store.deployment_state()
    editor = signed_in_client(app, "eddie")
    token = page_token(editor)
    for path in deploy_only:
        assert editor.post(path, data={"csrf_token": token}).status_code == 403, path
        assert editor.post(path, headers={"X-CSRFToken": token, "Accept": "application/json"}).status_code == 403
    assert store.deployment_state() == state


def test_highest_known_role_of_an_id_token_claim() -> None:
    assert highest_role(["viewer", "deployer", "editor"]) == "deployer"
    assert highest_role("cds-admins editor, viewer") == "editor"
    assert highest_role(["Viewer"]) == "viewer"
    assert highest_role(["nurse", "admin"]) is None
    assert highest_role(None) is None and highest_role(42) is None


# --- development mode -----------------------------------------------------------------------------------------
def test_development_mode_signs_in_as_dev_admin_loudly(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        app = make_app()
        page = app.test_client().get("/admin/users")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'class="dev-banner" role="alert"' in html and "dev-admin" in html and "role-deployer" in html
    assert any("WITHOUT A PASSWORD" in record.getMessage() for record in caplog.records)
    assert any("signed a browser in as dev-admin" in record.getMessage() for record in caplog.records)


def test_no_auto_sign_in_outside_development_mode(tmp_path) -> None:
    app = console_app(tmp_path, production=True, admin_dev_autologin=True)
    response = app.test_client().get("/admin/", base_url="https://cds.example.org")
    assert response.status_code == 302


def test_the_console_can_be_switched_off(tmp_path) -> None:
    app = console_app(tmp_path, admin_console=False)
    assert app.test_client().get("/admin/login").status_code == 404


# --- headers, CORS, OpenAPI, error pages ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/admin/login", "/admin/static/admin.css", "/admin/no-such-page"])
def test_console_responses_carry_the_console_csp_and_security_headers(app, path: str) -> None:
    with app.test_client().get(path) as response:
        headers = response.headers
    assert headers["Content-Security-Policy"] == ADMIN_CSP
    assert "script-src 'self'" in ADMIN_CSP and "frame-ancestors 'none'" in ADMIN_CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"


def test_the_api_keeps_its_own_csp(app) -> None:
    response = app.test_client().get("/cds-services")
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_console_pages_have_no_inline_script_or_style(app) -> None:
    client = signed_in_client(app, "dana")
    for path in ("/admin/", "/admin/audit", "/admin/users", "/admin/login", "/admin/no-such-page"):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and "<style" not in html and " on" + "click=" not in html, path
        assert "http://" not in html and "https://" not in html, path  # no CDN


@pytest.mark.parametrize("method,path", [("GET", "/admin/"), ("GET", "/admin/login"), ("OPTIONS", "/admin/login"),
                                         ("POST", "/admin/login")])
def test_no_cross_origin_access_to_the_console(app, method: str, path: str) -> None:
    headers = {"Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST"}
    response = app.test_client().open(path, method=method, headers=headers)
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_the_cds_api_still_answers_cross_origin(app) -> None:
    response = app.test_client().get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://ehr.example.org")


def test_the_console_is_not_in_the_openapi_description(app) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    assert document["paths"], "the description lists the API"
    assert not [path for path in document["paths"] if path.startswith("/admin")]
    assert "/admin" not in app.test_client().get("/openapi.yaml").get_data(as_text=True)


def test_an_unknown_console_page_is_an_html_404_and_the_api_keeps_json(app) -> None:
    page = app.test_client().get("/admin/no-such-page")
    assert page.status_code == 404 and "text/html" in page.content_type
    assert "There is no such page in the admin console." in page.get_data(as_text=True)
    api = app.test_client().get("/no-such-endpoint")
    assert api.status_code == 404 and api.get_json()["resourceType"] == "OperationOutcome"
    wrong_method = app.test_client().put("/admin/login")
    assert wrong_method.status_code == 405 and "text/html" in wrong_method.content_type


def test_audit_log_is_paged(app) -> None:
    store = app.extensions["leg_cramp_admin_store"]
    for number in range(60):
        store.record_audit("test", "probe", f"entry number {number:02d}")
    client = signed_in_client(app, "vera")
    first = client.get("/admin/audit").get_data(as_text=True)
    second = client.get("/admin/audit?page=2").get_data(as_text=True)
    # newest first: the sign-in, then entries 59 .. 11 fill the 50 rows of page 1
    assert "entry number 59" in first and "entry number 11" in first and "entry number 10" not in first
    assert 'href="/admin/audit?page=2"' in first and "entry number 10" in second and "entry number 59" not in second
    assert client.get("/admin/audit?page=oops").status_code == 200


# --- secrets --------------------------------------------------------------------------------------------------
def test_passwords_never_reach_the_logs(app, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        sign_in(app.test_client(), "vera", "typed-the-wrong-secret-1")
        sign_in(app.test_client(), "vera", PASSWORD)
        sign_in(app.test_client(), "nobody", "another-wrong-secret-2")
    text = caplog.text + "".join(repr(record.__dict__) for record in caplog.records)
    assert "signed in" in text and "sign-in refused" in text  # the sign-ins were logged
    for secret in (PASSWORD, "typed-the-wrong-secret-1", "another-wrong-secret-2", "$argon2"):
        assert secret not in text


def test_the_page_token_is_in_the_meta_tag_for_scripts(app) -> None:
    client = signed_in_client(app, "vera")
    html = client.get("/admin/").get_data(as_text=True)
    assert re.search(r'<meta name="csrf-token" content="[^"]+">', html)
    assert csrf_token_in(html)
    with client.get("/admin/static/admin.js") as script:
        assert script.get_data(as_text=True).count("X-CSRFToken") == 1
