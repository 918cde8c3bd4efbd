"""Issue 14's "done when", as a new admin follows the README, in headless Chromium against the real server.

`cramp-cds admin create-user` makes the account, `cramp-cds serve --dev` serves the service and the console and
starts the dry-run worker (development auto sign-in turned off, so the sign-in page is used). The admin signs
in, lowers a threshold on the draft form (a wrong value first: the error at its field), tries it on a fixture,
dry-runs the draft on the Synthea patients, reads which patients change and why, deploys it and watches the
cards it shows; then rolls back. The EHR side is a plain hook call to the same server: a patient the dry run says changes gets the
card only under the deployed draft, and the card names the version.

Screenshots of every page go to CRAMP_ADMIN_SCREENSHOTS when set (for the issue note), else the tmp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from cds_service.admin.population import read_bundle_file
from cds_service.engine.cards import EXPLANATION_EXTENSION
from support.browser import (  # noqa: F401  (fixtures)
    browser_page, chromium_browser, inputs_without_a_label, sign_in_with_keyboard,
)
from support.live_service import free_port, wait_healthy

SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea-r4"
pytestmark = [
    pytest.mark.chromium, pytest.mark.synthea,
    pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared Synthea data not found at {SYNTHEA}"),
]

USERNAME, PASSWORD = "new-admin", "a long enough password for the console"
# The dry run and the hook calls both judge the patients as of today (the form's default; no X-Cramp-As-Of), so
# the cards the service records fall in the weeks Watch shows. Which patients change is read from the dry run,
# then checked against the service: on 2026-12-02, 2 of the 31 (contributors 2.5 points: a thiazide 1.5 + ...).
CARD = "elevated-cramp-risk"  # evaluation C: its threshold (RULES.md: 3 points) is lowered to 2.5
SERVICE = "/cds-services/leg-cramp-patient-view"
START_SECONDS = 60  # hang guards, not speed targets
SWITCH_SECONDS = 30


def _cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cds_service.cli.main", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def at(self, path: str) -> str:
        return self.url + path

    def hook(self, patient_file: Path) -> dict[str, Any]:
        """POST the patient's patient-view request (prefetch from the Synthea bundle) as an EHR would."""
        body = read_bundle_file(patient_file).hook_request()
        request = urllib.request.Request(self.at(SERVICE), data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    env = {**os.environ, "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'service.sqlite3'}",
           "CRAMP_ADMIN_DEV_AUTOLOGIN": "0", "CRAMP_DRY_RUN_DIRS": str(SYNTHEA.parent),
           "CRAMP_PATIENT_KEY_SECRET": "an-e2e-patient-key-secret-0123456789"}
    created = _cli("admin", "create-user", USERNAME, "--role", "deployer", "--password-stdin", env=env,
                   stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli.main", "serve", "--dev", "--port", str(port), "--workers", "1"],
            env=env, cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
    running = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_healthy(running.url, process, seconds=START_SECONDS, log_path=log)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Screens:
    def __init__(self, page: Any, folder: Path) -> None:
        self.page, self.folder, self.taken = page, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)


def _cards_of(response: dict[str, Any]) -> dict[str, str]:
    """Card id -> rule-set version, from each card's explanation extension."""
    found = {}
    for card in response["cards"]:
        explanation = card["extension"][EXPLANATION_EXTENSION]
        found[explanation["rule"]] = explanation["ruleSetVersion"]
    return found


def _wait_for_card(server: Server, patient: Path, shown: bool) -> dict[str, str]:
    """Hook calls until CARD is (or is no longer) among the patient's cards: the one difference between the two
    versions for this patient (each worker polls the deployment every ~2 s, from the request path)."""
    deadline = time.monotonic() + SWITCH_SECONDS
    while True:
        cards = _cards_of(server.hook(patient))
        if (CARD in cards) == shown:
            return cards
        assert time.monotonic() < deadline, f"still serving {cards} {SWITCH_SECONDS} s after the change"
        time.sleep(0.5)


def test_a_new_admin_lowers_a_threshold_dry_runs_deploys_watches_and_rolls_back(
        browser_page, server: Server, tmp_path: Path) -> None:
    page = browser_page
    screens = Screens(page, Path(os.environ.get("CRAMP_ADMIN_SCREENSHOTS") or tmp_path / "screens"))

    # Sign in (the console sends a signed-out browser to the sign-in page)
    page.goto(server.at("/admin/"))
    assert "/admin/login" in page.url
    screens.take("sign-in")
    sign_in_with_keyboard(page, server, USERNAME, PASSWORD)  # type: ignore[arg-type]
    assert "/admin/login" not in page.url
    screens.take("home")

    # Rules: the active version, readable per card
    page.goto(server.at("/admin/rules"))
    assert "version 2026.12.1" in page.inner_text("h1")
    screens.take("rules")

    # Draft: a wrong value is refused at its field; then the threshold is lowered and saved
    with page.expect_navigation():
        page.click("text=Start a draft from this version")
    assert inputs_without_a_label(page) == []
    assert page.input_value("#f-version") == "2026.12.2"
    page.click(f"#form-{CARD} > summary")
    page.fill("#f-contributors--threshold", "-1")
    with page.expect_navigation():
        page.click("button:has-text('Save draft')")
    assert "contributors.threshold" in page.inner_text("#draft-errors")
    screens.take("draft-error")
    page.click(f"#form-{CARD} > summary") if not page.is_visible("#f-contributors--threshold") else None
    page.fill("#f-contributors--threshold", "2.5")
    with page.expect_navigation():
        page.click("button:has-text('Save draft')")
    assert page.url.endswith("/admin/rules/versions/2026.12.2")
    row = page.locator("table.rules-diff tr", has_text="contributors.threshold")
    cards_reading, before, after = row.locator("td").all_inner_texts()
    assert CARD in cards_reading and (before, after) == ("3", "2.5")
    screens.take("draft-diff")

    # Try it: fixture 02 scores 2.5 contributor points (its expected.yaml: no card at threshold 3), so the draft
    # column shows elevated-cramp-risk and the active one none
    page.goto(server.at("/admin/try"))
    assert inputs_without_a_label(page) == []
    page.select_option("#fixture", "02-risk-below-threshold")
    assert page.input_value("#draft") == "2026.12.2"
    with page.expect_navigation():
        page.click("button:has-text('Try it')")
    columns = page.locator("section.column")
    assert columns.nth(0).locator("article.card").count() == 0
    assert columns.nth(1).locator("article.card").get_attribute("data-card-id") == CARD
    screens.take("try-it")

    # Dry run of the draft on the Synthea patients, run by the worker `serve` started
    page.goto(server.at("/admin/dry-runs/new"))
    assert inputs_without_a_label(page) == []
    page.select_option("#draft", "2026.12.2") if page.locator("select#draft").count() else \
        page.fill("#draft", "2026.12.2")
    page.check("#source-folder")
    page.fill("#path", str(SYNTHEA))
    assert page.input_value("#as_of") in ("", time.strftime("%Y-%m-%d", time.gmtime()))  # today by default
    screens.take("dry-run-form")
    with page.expect_navigation():
        page.click("button:has-text('Start the dry run')")
    page.wait_for_selector("#changes-heading", timeout=180_000)  # dry_run.js shows the result when done
    assert page.inner_text("#job-status") == "done"
    changes = page.locator("table.changes tbody tr")
    assert changes.count() >= 1
    first = changes.nth(0).locator("td").all_inner_texts()
    source, before, after, reasons = first[0], first[2], first[3], first[4]
    assert CARD in after and CARD not in before and reasons.strip()
    screens.take("dry-run-result")

    # The patient the dry run says will change: no such card under the active rules...
    patient = SYNTHEA / Path(source).name
    assert patient.is_file(), source
    assert CARD not in _cards_of(server.hook(patient))

    # ...deploy the draft (with its confirmation), and the service shows the card, naming the new version
    page.goto(server.at("/admin/rules/versions/2026.12.2"))
    with page.expect_navigation():
        page.click("button:has-text('Deploy 2026.12.2')")
    screens.take("deploy-confirm")
    with page.expect_navigation():
        page.click("form.confirm-form button")
    assert "Version 2026.12.2 deployed (was 2026.12.1)" in page.inner_text(".flashes")
    cards = _wait_for_card(server, patient, shown=True)
    assert set(cards.values()) == {"2026.12.2"}, cards

    # Watch: the card shown under the new version is counted
    page.goto(server.at("/admin/watch"))
    watch_row = page.locator("table tr", has_text=CARD).first
    assert watch_row.count() == 1
    screens.take("watch")
    page.goto(server.at(f"/admin/watch/{CARD}"))
    assert "2026.12.2" in page.inner_text("main")
    screens.take("watch-card")

    # Audit: who deployed what, from which version
    page.goto(server.at("/admin/audit"))
    audit = page.inner_text("main")
    assert USERNAME in audit and "2026.12.2" in audit
    screens.take("audit")

    # Roll back: the active rules again, everywhere
    page.goto(server.at("/admin/rules/versions"))
    with page.expect_navigation():
        page.click("button:has-text('Roll back to 2026.12.1')")
    with page.expect_navigation():
        page.click("form.confirm-form button")
    assert "Rolled back to version 2026.12.1 (was 2026.12.2)" in page.inner_text(".flashes")
    back = _wait_for_card(server, patient, shown=False)
    assert set(back.values()) <= {"2026.12.1"}, back
    # The one refused save answers 422 (the form again with its errors), which Chromium reports; nothing else
    # (no CSP violation, no failed asset) on any page.
    assert [p for p in page.console_problems if "status of 422" not in p] == []
    assert len([p for p in page.console_problems if "status of 422" in p]) == 1
    assert len(screens.taken) == 12
