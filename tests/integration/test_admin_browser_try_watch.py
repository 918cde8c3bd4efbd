"""Try it and Watch in headless Chromium on a real loopback server, as an admin uses them: the form filled with
the keyboard, both columns drawn, the charts laid out, no CSP violation, comments only for editors."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cds_service.engine.ledger import ShownCard
from cds_service.hooks.feedback import parse_feedback
from support.admin_console import contributors_draft
from support.browser import (  # noqa: F401  (fixtures)
    browser_page, chromium_browser, focused, inputs_without_a_label, sign_in_with_keyboard, start_live_console,
    tab_to,
)

pytestmark = pytest.mark.chromium

MONDAY_W25 = datetime(2026, 6, 15, 9, 0, tzinfo=timezone.utc)  # support.hook_requests.NOW's week
COMMENT = "seen by vascular surgery last week"



def _history(app) -> None:
    store = app.extensions["leg_cramp_store"]
    for weeks_back in range(1, 10):
        count = 0 if weeks_back == 1 else 20  # W24: none -> the firing alarm
        store.record_shown([ShownCard(str(uuid.uuid4()), (), "leg-cramp-patient-view", "elevated-cramp-risk",
                                      "2026.12.1", "info", str(uuid.uuid4()), store.patient_key("p"),
                                      MONDAY_W25 - timedelta(weeks=weeks_back)) for _ in range(count)])
    card = str(uuid.uuid4())
    store.record_shown([ShownCard(card, (), "leg-cramp-patient-view", "conservative-care", "2026.12.1", "info",
                                  str(uuid.uuid4()), store.patient_key("p"), MONDAY_W25 - timedelta(weeks=1))])
    store.record_feedback("leg-cramp-patient-view", parse_feedback({"feedback": [{
        "card": card, "outcome": "overridden", "outcomeTimestamp": "2026-06-08T10:00:00Z",
        "overrideReason": {"userComment": COMMENT}}]}))


@pytest.fixture
def console(tmp_path: Path):
    console = start_live_console(tmp_path, username="eddie", role="editor", users={"vera": "viewer"})
    console.app.extensions["leg_cramp_rule_versions"].save_draft(contributors_draft(2.5), "eddie")
    _history(console.app)
    try:
        yield console
    finally:
        console.stop()


def test_try_a_fixture_with_the_keyboard_and_see_both_columns(browser_page, console, tmp_path: Path) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console)
    page.goto(console.at("/admin/try"))
    assert inputs_without_a_label(page) == []
    tab_to(page, lambda e: e["id"] == "fixture")
    page.select_option("#fixture", "02-risk-below-threshold")  # a <select> keeps the focus
    assert focused(page)["id"] == "fixture"
    assert page.input_value("#draft") == "2026.12.2"  # the newest draft is proposed
    tab_to(page, lambda e: e["tag"] == "button" and e["text"] == "Try it")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    columns = page.locator("section.column")
    assert columns.count() == 2
    assert columns.nth(0).locator("article.card").count() == 0
    assert columns.nth(1).locator("article.card").get_attribute("data-card-id") == "elevated-cramp-risk"
    assert page.inner_text("p.differs") == "The draft shows different cards."
    box = columns.nth(1).bounding_box()
    assert box is not None and box["width"] > 300  # laid out side by side, not collapsed
    page.screenshot(path=str(tmp_path / "try.png"), full_page=True)
    assert page.console_problems == []


def test_watch_shows_the_alarm_and_charts_and_hides_comments_from_a_viewer(browser_page, console,
                                                                          tmp_path: Path) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console, username="vera")
    page.goto(console.at("/admin/watch"))
    assert page.inner_text("#alarms-heading") == "Alarms (1)"
    assert COMMENT not in page.content()
    page.click("text=elevated-cramp-risk >> nth=0")
    assert page.url == console.at("/admin/watch/elevated-cramp-risk")
    chart = page.locator("svg#chart-shown")
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 60
    assert chart.locator("circle").count() >= 9  # a point per week shown
    page.screenshot(path=str(tmp_path / "watch_card.png"), full_page=True)
    assert page.console_problems == []


def test_an_editor_sees_the_comments(browser_page, console) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console)
    page.goto(console.at("/admin/watch"))
    assert COMMENT in page.inner_text("table.comments")
    assert page.console_problems == []
