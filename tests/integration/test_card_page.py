"""Cards as a clinician sees them (cds_service/admin/card_page.py): the HTML card list, its escaping, and every
card type rendered in headless Chromium from the hand-worked fixtures.

The browser tests (marker ``chromium``) read the page's visible text as a person would see it: the card's
summary is there, no resource id ("Condition/...", "Patient/...", "MedicationRequest/...") is, and the
indicator has its colour. A screenshot per card type is kept in build/card-screenshots/ (gitignored) for
people to look at. They skip with the reason when Chromium or Playwright is missing, unless
CRAMP_REQUIRE_CHROMIUM=1 (CI), when that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from click.testing import CliRunner
from werkzeug.serving import make_server

from support.card_kinds import RESOURCE_REFERENCE, assert_no_resource_ids, card_id
from cds_service.admin.card_page import render_page
from cds_service.cli.main import main
from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fhir_fixtures"
SCREENSHOTS = REPO / "build" / "card-screenshots"
CHROMIUM = os.environ.get("CRAMP_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("CRAMP_REQUIRE_CHROMIUM") == "1"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
URLS = {"patient-view": "/cds-services/leg-cramp-patient-view", "order-select": "/cds-services/leg-cramp-order-select",
        "order-sign": "/cds-services/leg-cramp-order-sign"}
# card type -> the fixture that shows it (each fixture's expected.yaml lists the card, checked below)
CARD_TYPES = {
    "possible-dvt": "08-possible-dvt-two-signs-right",
    "untreated-dvt": "09-untreated-dvt-aspirin-only",
    "venous-duplex-workup": "05-cramps-varicose-snomed",
    "conservative-care": "41-duplex-procedure-on-record",
    "elevated-cramp-risk": "03-elevated-risk-thiazide-code",
    "quinine-for-cramps": "order-10-quinine-product-997157",
    "cramp-associated-drug-order-thiazide": "order-12-dyazide-two-classes",
    "cramp-associated-drug-order-potassium-sparing": "order-12-dyazide-two-classes",
}
INDICATOR_COLOURS = {"critical": "rgb(200, 30, 30)", "warning": "rgb(232, 147, 12)", "info": "rgb(28, 100, 242)"}


def fixture_response(folder_name: str) -> dict[str, Any]:
    folder = FIXTURES / folder_name
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    body = json.loads((folder / "request.json").read_text())
    app = create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(expected["now"]))
    response = app.test_client().post(URLS[body["hook"]], json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def a_card(**fields: Any) -> dict[str, Any]:
    card = {"summary": "Leg cramps: conservative care", "indicator": "info", "detail": "Stay hydrated.",
            "source": {"label": "Leg-cramp CDS", "url": "https://example.org/rules"}}
    card.update(fields)
    return card


# ---------------------------------------------------------------- the page itself (no browser)

def test_page_escapes_everything_from_the_response() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    page = render_page({"cards": [a_card(
        summary=f"Summary {hostile}",
        detail=f"Line with {hostile} and <script>alert(2)</script>\n\n[click](javascript:alert(3))",
        source={"label": f"Source {hostile}", "url": "javascript:alert(4)"},
        suggestions=[{"label": f"Order {hostile}", "actions": [{"type": "create", "description": hostile,
                                                                 "resource": {"resourceType": "ServiceRequest"}}]}],
        selectionBehavior="at-most-one",
        links=[{"label": f"Link {hostile}", "url": "javascript:alert(5)", "type": "absolute"}],
    )]}, title=f"Title {hostile}")
    assert "<img" not in page and "<script>" not in page and 'href="javascript' not in page.lower()
    assert "[click](javascript:alert(3))" in page  # the unsafe link is shown as text, not made a link
    assert page.count("&lt;img src=x onerror=") >= 6  # summary, detail, source, suggestion, action, link, title


def test_page_loads_nothing_from_elsewhere() -> None:
    page = render_page(fixture_response(CARD_TYPES["possible-dvt"]))
    assert "<script" not in page and "<link" not in page and " src=" not in page
    assert "default-src 'none'" in page  # and the browser is told so
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs and all(h.startswith("https://") for h in hrefs)


def test_page_renders_markdown_tables_lists_and_emphasis() -> None:
    detail = "Intro:\n\n| Finding | Points |\n|---|---|\n| Varicose veins | 3 |\n\n- one\n- two\n\n**bold** _note_"
    page = render_page({"cards": [a_card(detail=detail)]})
    assert "<table>" in page and "<td>Varicose veins</td>" in page
    assert "<li>one</li>" in page and "<strong>bold</strong>" in page and "<em>note</em>" in page


def test_page_without_cards_says_so() -> None:
    assert "No cards were returned." in render_page({"cards": []})


def test_render_cards_command_writes_the_page(tmp_path: Path) -> None:
    response = fixture_response(CARD_TYPES["venous-duplex-workup"])
    saved = tmp_path / "response.json"
    saved.write_text(json.dumps(response))
    out = tmp_path / "cards.html"
    result = CliRunner().invoke(main, ["render-cards", str(saved), "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 card(s) written" in result.output
    assert response["cards"][0]["summary"] in out.read_text()


def test_invoke_html_writes_the_cards_of_a_live_service(tmp_path: Path) -> None:
    """``cramp-cds invoke --html FILE`` against a service over loopback HTTP: the page holds its cards."""
    folder = FIXTURES / CARD_TYPES["possible-dvt"]
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    app = create_app(Settings(development_mode=True, database_url="sqlite://"), clock=fixed_clock(expected["now"]))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "cards.html"
    try:
        result = CliRunner().invoke(main, ["invoke", "--service-url", f"http://127.0.0.1:{server.server_port}",
                                           "--from-file", str(folder / "request.json"), "--html", str(out)])
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Possible DVT: same-day evaluation advised" in page and 'class="card critical"' in page
    assert not RESOURCE_REFERENCE.findall(page)


def test_render_cards_command_refuses_a_file_that_is_not_a_response(tmp_path: Path) -> None:
    saved = tmp_path / "bundle.json"
    saved.write_text(json.dumps({"resourceType": "Bundle"}))
    result = CliRunner().invoke(main, ["render-cards", str(saved), "--html", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and 'no "cards" list' in result.output


@pytest.mark.parametrize("card_type, folder", sorted(CARD_TYPES.items()))
def test_fixture_for_each_card_type_shows_it(card_type: str, folder: str) -> None:
    """The fixture chosen for a card type gives that card, with no resource id anywhere a clinician reads."""
    cards = fixture_response(folder)["cards"]
    assert card_type in [card_id(c) for c in cards]
    for card in cards:
        assert_no_resource_ids(card)


# ---------------------------------------------------------------- in headless Chromium

def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} [CRAMP_REQUIRE_CHROMIUM=1]")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.chromium
@pytest.mark.parametrize("card_type", sorted(CARD_TYPES))
def test_card_type_reads_in_chromium_as_a_clinician_sees_it(browser: Any, card_type: str, tmp_path: Path) -> None:
    response = fixture_response(CARD_TYPES[card_type])
    card = next(c for c in response["cards"] if card_id(c) == card_type)
    page_file = tmp_path / "cards.html"
    page_file.write_text(render_page({"cards": [card]}, title=f"{card_type} ({CARD_TYPES[card_type]})"))
    page = browser.new_page(viewport={"width": 980, "height": 700})
    try:
        page.goto(page_file.as_uri())
        visible = page.inner_text("body")
        colour = page.eval_on_selector("article.card", "e => getComputedStyle(e).borderLeftColor")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{card_type}.png"), full_page=True)
    finally:
        page.close()
    assert card["summary"] in visible
    assert not RESOURCE_REFERENCE.findall(visible), RESOURCE_REFERENCE.findall(visible)
    assert colour == INDICATOR_COLOURS[card["indicator"]]
    assert "Rule set " in visible
    for suggestion in card.get("suggestions", []):
        assert suggestion["label"] in visible  # a button a clinician can press


@pytest.mark.chromium
def test_hostile_card_text_runs_no_script_in_chromium(browser: Any, tmp_path: Path) -> None:
    """The escaping holds in a real browser: markup in the response is shown as text, and runs nothing."""
    hostile = '<img src=x onerror="document.title=\'pwned\'"><b>bold?</b>'
    page_file = tmp_path / "hostile.html"
    page_file.write_text(render_page({"cards": [a_card(summary=hostile, detail=hostile)]}, title="safe"))
    page = browser.new_page()
    try:
        page.goto(page_file.as_uri())
        assert page.title() == "safe"
        assert page.locator("img").count() == 0 and page.locator("b").count() == 0
        assert hostile in page.inner_text("h2.summary")
    finally:
        page.close()


@pytest.mark.chromium
def test_resource_id_check_sees_an_id_in_the_rendered_page(browser: Any, tmp_path: Path) -> None:
    """The visible-text check can fail: a card naming a record the old way is caught."""
    page_file = tmp_path / "old.html"
    page_file.write_text(render_page({"cards": [a_card(detail="| Record |\n|---|\n| Condition/cfb842ea6f7 |")]}))
    page = browser.new_page()
    try:
        page.goto(page_file.as_uri())
        assert RESOURCE_REFERENCE.findall(page.inner_text("body")) == ["Condition/cfb842ea6f7"]
    finally:
        page.close()
