"""A dry run in headless Chromium on a real loopback server, as an admin runs one: the form filled (every
field labelled), the job queued, its page reloaded while it waits for the worker, the progress followed by
static/dry_run.js until the page shows the result by itself; no CSP violation. The worker is a real
JobWorker in this process (the page never runs the job)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cds_service.admin.job_worker import JobWorker
from cds_service.storage.jobs import JobStore
from support.admin_console import contributors_draft
from support.browser import (  # noqa: F401  (fixtures)
    browser_page, chromium_browser, inputs_without_a_label, sign_in_with_keyboard, start_live_console,
)

SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea-r4"
pytestmark = [
    pytest.mark.chromium, pytest.mark.synthea,
    pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared Synthea data not found at {SYNTHEA}"),
]



@pytest.fixture
def console(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CRAMP_DRY_RUN_DIRS", str(SYNTHEA.parent))
    console = start_live_console(tmp_path, username="eddie", role="editor")
    console.app.extensions["leg_cramp_rule_versions"].save_draft(contributors_draft(2.5), "eddie")
    try:
        yield console
    finally:
        console.stop()


def test_dry_run_the_synthea_folder_and_watch_it_finish(browser_page, console, tmp_path: Path) -> None:
    page = browser_page
    sign_in_with_keyboard(page, console)
    page.goto(console.at("/admin/dry-runs/new"))
    assert inputs_without_a_label(page) == []
    assert page.input_value("#draft") == "2026.12.2"
    page.check("#source-folder")
    page.fill("#path", str(SYNTHEA))
    page.fill("#as_of", "2021-03-11")
    page.screenshot(path=str(tmp_path / "dry_run_new.png"), full_page=True)
    with page.expect_navigation():
        page.click("button:has-text('Start the dry run')")
    assert "/admin/dry-runs/" in page.url
    assert page.inner_text("#job-status") == "queued"
    page.reload()  # the page survives a reload: the job is in the database, not in the page
    assert page.inner_text("#job-status") == "queued" and page.locator("#job-progress").count() == 1

    store = JobStore.for_card_store(console.app.extensions["leg_cramp_store"])
    worker = JobWorker(store, console.app.extensions["leg_cramp_settings"], processes=1)
    thread = threading.Thread(target=worker.run_once, daemon=True)
    thread.start()
    page.wait_for_selector("#changes-heading", timeout=120_000)  # dry_run.js reloads the page when done
    thread.join(timeout=60)
    assert page.inner_text("#job-status") == "done"
    assert page.inner_text("#changes-heading") == "Patients whose cards change (3)"
    assert page.locator("table.changes tbody tr").count() == 3
    row = page.locator("table.cards tbody tr", has_text="elevated-cramp-risk")
    assert "4/31" in row.inner_text() and "7/31" in row.inner_text() and "+3" in row.inner_text()
    chart = page.locator(".chart svg")
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300
    page.screenshot(path=str(tmp_path / "dry_run_done.png"), full_page=True)
    with page.expect_download() as download:
        page.click("text=Download as CSV")
    assert download.value.suggested_filename.endswith(".csv")
    assert page.console_problems == []
