"""The Rules pages in headless Chromium on a real loopback server, as an admin uses them: every control
labelled, the YAML validated while typing with the problem line marked and reachable by keyboard, a
threshold lowered on the form and saved, the diff, deploy and roll back with their confirmation; no CSP
violation on any page (rules.js and rules.css are files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.browser import (  # noqa: F401  (fixtures)
    browser_page, chromium_browser, focused, inputs_without_a_label, sign_in_with_keyboard, start_live_console,
    tab_to,
)

pytestmark = pytest.mark.chromium


@pytest.fixture
def console(tmp_path: Path):
    console = start_live_console(tmp_path, username="dana", role="deployer")
    try:
        yield console
    finally:
        console.stop()


def test_live_validation_marks_the_line_and_the_keyboard_reaches_it(browser_page, console) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console)
    page.goto(console.at("/admin/rules/draft"))
    assert inputs_without_a_label(page) == []
    original = page.input_value("#rules-yaml")
    broken = original.replace("    statin: 0.5\n", "    statin: -0.5\n")
    line = broken.splitlines().index("    statin: -0.5") + 1
    page.fill("#rules-yaml", broken)  # an input event, as typing gives
    page.wait_for_selector("#rules-yaml-problems li")
    assert page.inner_text("#rules-yaml-status") == "1 problem found."
    assert page.inner_text("#rules-yaml-problems") == (
        f"line {line}: contributors.points.statin: negative points for statin (-0.5); expected a number >= 0")
    assert page.locator(".line-numbers .problem-line").all_inner_texts() == [str(line)]
    assert page.get_attribute("#rules-yaml", "aria-invalid") == "true"
    page.focus("#rules-yaml")
    tab_to(page, lambda e: e["tag"] == "button" and e["text"] == f"line {line}")
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "rules-yaml"
    caret_line = page.evaluate("() => { const t = document.getElementById('rules-yaml');"
                               " return t.value.slice(0, t.selectionStart).split('\\n').length; }")
    assert caret_line == line
    page.fill("#rules-yaml", original)
    page.wait_for_function("() => document.getElementById('rules-yaml-status').textContent.startsWith('No problems')")
    assert page.locator(".line-numbers .problem-line").count() == 0
    assert page.console_problems == []


def test_lower_a_threshold_deploy_it_and_roll_back(browser_page, console, tmp_path: Path) -> None:
    page = browser_page
    versions = console.app.extensions["leg_cramp_rule_versions"]
    sign_in_with_keyboard(page, console)
    page.goto(console.at("/admin/rules"))
    assert "version 2026.12.1" in page.inner_text("h1")
    with page.expect_navigation():
        page.click("text=Start a draft from this version")
    assert page.input_value("#f-version") == "2026.12.2"
    page.click("#form-venous-duplex-workup > summary")
    page.fill("#f-venous_index--threshold", "2")
    with page.expect_navigation():
        page.click("button:has-text('Save draft')")
    assert page.url.endswith("/admin/rules/versions/2026.12.2")
    row = page.locator("table.rules-diff tr", has_text="venous_index.threshold")
    assert row.locator("td").all_inner_texts() == ["venous-duplex-workup", "3", "2"]
    page.screenshot(path=str(tmp_path / "draft-diff.png"), full_page=True)

    with page.expect_navigation():
        page.click("button:has-text('Deploy 2026.12.2')")
    assert page.inner_text("h1") == "Deploy version 2026.12.2?"
    assert versions.active()[0].version == "2026.12.1"  # the confirmation page changes nothing
    with page.expect_navigation():
        page.click("form.confirm-form button")
    assert "Version 2026.12.2 deployed (was 2026.12.1)" in page.inner_text(".flashes")
    assert versions.active()[0].version == "2026.12.2"
    assert "at least 2 points" in page.inner_text("#card-venous-duplex-workup")

    page.goto(console.at("/admin/rules/versions"))
    with page.expect_navigation():
        page.click("button:has-text('Roll back to 2026.12.1')")
    with page.expect_navigation():
        page.click("form.confirm-form button")
    assert "Rolled back to version 2026.12.1 (was 2026.12.2)" in page.inner_text(".flashes")
    assert versions.active()[0].version == "2026.12.1"
    assert page.console_problems == []
