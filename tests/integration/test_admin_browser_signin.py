"""The console's sign-in in headless Chromium on a real loopback server, as a new admin uses it: keyboard only,
every input labelled, the session cookie out of scripts' reach, sign-out, and no CSP violation."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.browser import (  # noqa: F401  (fixtures)
    browser_page, chromium_browser, focused, inputs_without_a_label, screenshot, sign_in_with_keyboard,
    start_live_console, tab_to,
)

pytestmark = pytest.mark.chromium


@pytest.fixture
def console(tmp_path: Path):
    console = start_live_console(tmp_path, username="dana", role="deployer", users={"vera": "viewer"})
    try:
        yield console
    finally:
        console.stop()


def test_sign_in_and_out_with_the_keyboard_only(browser_page, console, tmp_path: Path) -> None:
    page = browser_page
    page.goto(console.at("/admin/"))
    assert page.url.startswith(console.at("/admin/login"))  # no session: the sign-in page
    screenshot(page, "admin-sign-in", tmp_path)
    assert inputs_without_a_label(page) == []
    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Skip to main content"  # the first stop is the skip link

    sign_in_with_keyboard(page, console)
    assert page.url == console.at("/admin/")
    assert page.inner_text("h1") == "Admin console"
    assert page.inner_text(".who-name") == "dana" and page.inner_text(".who .role-badge") == "deployer"
    screenshot(page, "admin-home", tmp_path)

    cookie = next(c for c in page.context.cookies() if c["name"] == "cramp_admin_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["path"] == "/admin"
    assert "cramp_admin_session" not in page.evaluate("document.cookie")  # scripts cannot read it

    tab_to(page, lambda e: e["tag"] == "button" and e["text"] == "Sign out")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.startswith(console.at("/admin/login"))
    assert "You are signed out." in page.inner_text("body")
    page.goto(console.at("/admin/audit"))
    assert page.url.startswith(console.at("/admin/login"))
    assert page.console_problems == []


def test_a_wrong_password_shows_the_form_again_with_the_message_at_hand(browser_page, console, tmp_path: Path) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console, password="not the right password")
    alert = page.locator("[role=alert]")
    assert alert.inner_text().strip() == "Unknown user name or wrong password."
    described = page.get_attribute("#password", "aria-describedby") or ""
    assert "login-problem" in described.split()
    assert page.input_value("#username") == "dana" and page.input_value("#password") == ""
    screenshot(page, "admin-sign-in-refused", tmp_path)
    assert inputs_without_a_label(page) == []
    assert page.console_problems == []


def test_a_viewer_sees_no_users_link_and_gets_a_403_page(browser_page, console) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console, username="vera")
    nav = page.inner_text("nav.site-nav")
    assert "Audit" in nav and "Users" not in nav
    response = page.goto(console.at("/admin/users"))
    assert response.status == 403
    assert "it needs the deployer role" in page.inner_text("main")


def test_the_stylesheet_and_script_load_under_the_csp(browser_page, console) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console)
    background = page.eval_on_selector(".site-header", "e => getComputedStyle(e).backgroundColor")
    assert background == "rgb(8, 60, 107)"  # admin.css applied (no inline style exists to do it)
    assert page.evaluate("typeof window.crampAdmin.postJSON") == "function"
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    assert token and page.evaluate("window.crampAdmin.csrfToken()") == token
    # a script's POST without the token is refused; with it (postJSON) the server accepts it
    status = page.evaluate("""() => fetch('/admin/logout', {method: 'POST', credentials: 'same-origin',
        headers: {'Accept': 'application/json'}, redirect: 'manual'}).then(r => r.status)""")
    assert status == 400
    assert all("400" in problem for problem in page.console_problems), page.console_problems
    page.goto(console.at("/admin/"))
    assert page.inner_text(".who-name") == "dana"  # the refused POST signed nobody out


def test_session_cookie_is_secure_outside_development_mode(browser_page, tmp_path: Path) -> None:
    console = start_live_console(tmp_path, production=True)
    try:
        response = browser_page.goto(console.at("/admin/login"))
        set_cookie = response.header_value("set-cookie") or ""
        assert set_cookie.startswith("cramp_admin_session=")
        assert "Secure" in set_cookie and "HttpOnly" in set_cookie
    finally:
        console.stop()
