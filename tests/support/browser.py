"""Headless Chromium for the admin console's browser tests (marker ``chromium``), and a live console.

Playwright for Python drives Debian's ``chromium`` launched by its path (Playwright's own browser download is
not reachable here). Without Chromium or Playwright the tests are skipped, unless CRAMP_REQUIRE_CHROMIUM=1
(CI), where that is a failure.

    from support.browser import browser_page, chromium_browser, live_console  # fixtures (import them)
    console = start_live_console(tmp_path, username="dana", role="deployer")    # a real server on 127.0.0.1
    sign_in_with_keyboard(page, console)                                       # the real sign-in page
    screenshot(page, "home", tmp_path)                                         # CRAMP_ADMIN_SCREENSHOTS=dir keeps them

``browser_page`` is a fresh page in its own browser context (no cookies shared between tests); every
console-security violation the page reports (CSP, a failed asset) is collected in ``page.console_problems``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from support.admin_console import PASSWORD, console_app, create_admin
from support.live_service import serve_app

CHROMIUM = os.environ.get("CRAMP_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("CRAMP_REQUIRE_CHROMIUM") == "1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 15_000  # per Playwright action: a hang guard, not a speed target
MAX_TABS = 40  # keyboard walks stop here: a focus that never arrives fails instead of looping


def chromium_unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} [CRAMP_REQUIRE_CHROMIUM=1]")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """One headless Chromium per test module."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        chromium_unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium_unavailable("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium_browser) -> Iterator[Any]:
    """A fresh page in a context of its own; ``page.console_problems`` lists CSP and loading errors."""
    context = chromium_browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    page.console_problems = problems
    try:
        yield page
    finally:
        context.close()


@dataclass
class LiveConsole:
    """A console served on 127.0.0.1 with one account (``username``/``password``) ready to sign in."""

    url: str
    app: Any
    username: str
    password: str
    stop: Callable[[], None]
    extra_users: dict[str, str] = field(default_factory=dict)

    def at(self, path: str) -> str:
        return self.url + path


def start_live_console(tmp_path: Path, *, username: str = "admin", role: str = "deployer",
                       password: str = PASSWORD, users: dict[str, str] | None = None, app: Any = None,
                       **settings: Any) -> LiveConsole:
    """Serve the console (development mode without auto sign-in unless ``settings`` say otherwise; or pass
    ``production=True``) on a free loopback port, with ``username`` (``role``) and ``users`` (name -> role,
    the same password). ``app``: serve this app instead of building one (its accounts are still created)."""
    app = app or console_app(tmp_path, **settings)
    create_admin(app, username, role, password)
    for name, other_role in (users or {}).items():
        create_admin(app, name, other_role, password)
    url, stop = serve_app(app)
    return LiveConsole(url, app, username, password, stop, dict(users or {}))


@pytest.fixture
def live_console(tmp_path: Path) -> Iterator[LiveConsole]:
    console = start_live_console(tmp_path)
    try:
        yield console
    finally:
        console.stop()


def screenshot(page: Any, name: str, fallback_dir: Path) -> Path:
    """A full-page PNG named ``name``: in CRAMP_ADMIN_SCREENSHOTS when set (to keep them for people; outside
    the checkout), else in ``fallback_dir`` (a test's tmp_path)."""
    folder = Path(os.environ.get("CRAMP_ADMIN_SCREENSHOTS") or fallback_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def focused(page: Any) -> dict[str, str]:
    """The element that has the keyboard focus: tag, id, name, type and text."""
    return page.evaluate("""() => { const e = document.activeElement;
        return {tag: e.tagName.toLowerCase(), id: e.id || '', name: e.getAttribute('name') || '',
                type: e.getAttribute('type') || '', text: (e.innerText || e.value || '').trim()}; }""")


def tab_to(page: Any, matches: Callable[[dict[str, str]], bool], *, backwards: bool = False) -> dict[str, str]:
    """Press Tab until the focused element ``matches`` (at most MAX_TABS presses)."""
    for _ in range(MAX_TABS):
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
        element = focused(page)
        if matches(element):
            return element
    raise AssertionError(f"the keyboard never reached the element (last focus: {focused(page)})")


def sign_in_with_keyboard(page: Any, console: LiveConsole, username: str | None = None,
                          password: str | None = None) -> None:
    """Open the sign-in page and sign in with Tab, typing and Enter only (no mouse)."""
    page.goto(console.at("/admin/login"))
    tab_to(page, lambda e: e["id"] == "username")
    page.keyboard.type(username or console.username)
    tab_to(page, lambda e: e["id"] == "password")
    page.keyboard.type(password or console.password)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def inputs_without_a_label(page: Any) -> list[str]:
    """Every visible form control that has neither a <label for=...>, an enclosing label nor an aria-label."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('input, select, textarea'))
        .filter(e => e.type !== 'hidden')
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.getAttribute('aria-labelledby'))
        .map(e => e.outerHTML)""")
