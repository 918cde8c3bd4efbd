"""The console's Try it and Watch pages (docs/try-it.md, docs/watch.md) through the real app: accounts on a
SQLite file in tmp_path, signed in through the form; and the alarm gauge in /metrics.

The app's clock is support.hook_requests.NOW, Monday 2026-06-15 12:00 UTC (ISO week 2026-W25): the latest
complete week, the one the alarm checks, is 2026-W24.
"""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest

from cds_service.storage.store import CardStore
from support.admin_console import (
    COMMENT, MONDAY_W25, console_app, contributors_draft, create_admin, history_with_a_drop, page_token, show_cards,
    signed_in_client,
)

DRAFT_VERSION = "2026.12.2"


@pytest.fixture
def app(tmp_path):
    app = console_app(tmp_path)
    create_admin(app, "vera", "viewer")
    create_admin(app, "eddie", "editor")
    create_admin(app, "dana", "deployer")
    app.extensions["leg_cramp_rule_versions"].save_draft(contributors_draft(2.5, DRAFT_VERSION), "eddie")
    return app


# ---------------------------------------------------------------- Try it

def test_try_it_needs_the_editor_role(app) -> None:
    viewer = signed_in_client(app, "vera")
    assert viewer.get("/admin/try").status_code == 403
    token = page_token(viewer, "/admin/watch")
    assert viewer.post("/admin/try", data={"csrf_token": token, "source": "fixture",
                                           "fixture": "02-risk-below-threshold"}).status_code == 403
    anonymous = app.test_client().get("/admin/try")
    assert anonymous.status_code == 302 and "/admin/login" in anonymous.headers["Location"]


def test_the_try_page_lists_fixtures_and_drafts(app) -> None:
    page = signed_in_client(app, "eddie").get("/admin/try")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<option value="02-risk-below-threshold"' in html
    assert f'<option value="{DRAFT_VERSION}" selected>' in html
    assert 'href="/admin/static/try.css"' in html
    assert "<style" not in html and "style=" not in html  # the console's CSP: no inline style
    for field in ("fixture", "upload", "fhir_url", "patient_id", "token", "draft", "as_of"):
        assert f'<label for="{field}">' in html and f'id="{field}"' in html


def test_a_fixture_under_the_active_rules_and_a_draft_side_by_side(app) -> None:
    client = signed_in_client(app, "eddie")
    token = page_token(client, "/admin/try")
    page = client.post("/admin/try", data={"csrf_token": token, "source": "fixture", "fixture": "02-risk-below-threshold",
                                           "draft": DRAFT_VERSION})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    active, draft = html.split('<section class="column"')[1:3]
    assert "2026.12.1" in active and "No cards were returned." in active and "<article" not in active
    assert DRAFT_VERSION in draft and 'data-card-id="elevated-cramp-risk"' in draft
    assert "The draft shows different cards." in html
    assert 'class="explanation"' in active and 'class="explanation"' in draft
    assert "2026-06-15" in html  # the fixture's own day


def test_an_upload_that_is_not_json_is_shown_at_its_field(app) -> None:
    client = signed_in_client(app, "eddie")
    token = page_token(client, "/admin/try")
    page = client.post("/admin/try", content_type="multipart/form-data", data={
        "csrf_token": token, "source": "upload", "draft": DRAFT_VERSION,
        "upload": (io.BytesIO(b"{not json"), "patient.json")})
    html = page.get_data(as_text=True)
    assert page.status_code == 400
    assert re.search(r'<p class="field-error" id="upload-error">not valid JSON', html)
    assert 'id="upload" name="upload" accept=".json,application/json,application/fhir+json" aria-invalid="true" ' \
           'aria-describedby="upload-error"' in html


def test_a_fhir_server_off_the_allowlist_is_refused_at_its_field_and_the_token_not_echoed(app) -> None:
    client = signed_in_client(app, "eddie")
    token = page_token(client, "/admin/try")
    page = client.post("/admin/try", data={"csrf_token": token, "source": "fhir", "fhir_url": "https://ehr.example.org/fhir",
                                           "patient_id": "p1", "token": "secret-bearer-123"})
    html = page.get_data(as_text=True)
    assert page.status_code == 400
    assert 'id="fhir_url-error"' in html and "allowlist" in html
    assert "secret-bearer-123" not in html


def test_a_form_without_the_csrf_token_is_refused(app) -> None:
    client = signed_in_client(app, "eddie")
    page = client.post("/admin/try", data={"source": "fixture", "fixture": "02-risk-below-threshold"})
    assert page.status_code == 400


# ---------------------------------------------------------------- Watch

def test_watch_shows_aggregates_to_a_viewer_without_the_comments(app) -> None:
    history_with_a_drop(app)
    viewer = signed_in_client(app, "vera")
    page = viewer.get("/admin/watch")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Alarms (1)" in html and "elevated-cramp-risk" in html and "stopped firing" in html
    assert "Not clinically relevant (1)" in html  # top override reasons are aggregates: viewers see them
    # the spark line's text equivalent lists every week: 26 weeks, W16-W23 with 20, W24 and W25 with none
    title = re.search(r'<title id="spark-elevated-cramp-risk-title">([^<]+)</title>', html).group(1)
    assert title.endswith("2025-W52 to 2026-W25: " + ", ".join(["0"] * 16 + ["20"] * 8 + ["0", "0"]))
    assert COMMENT not in html and "shown to editors and deployers only" in html
    detail = viewer.get("/admin/watch/conservative-care").get_data(as_text=True)
    assert COMMENT not in detail


def test_watch_shows_the_comments_with_their_dates_to_an_editor(app) -> None:
    history_with_a_drop(app)
    editor = signed_in_client(app, "eddie")
    html = editor.get("/admin/watch").get_data(as_text=True)
    assert COMMENT in html and "2026-06-08 10:00" in html
    detail = editor.get("/admin/watch/conservative-care").get_data(as_text=True)
    assert COMMENT in detail


def test_a_card_page_has_accessible_charts_and_the_data_table(app) -> None:
    history_with_a_drop(app)
    page = signed_in_client(app, "vera").get("/admin/watch/elevated-cramp-risk")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<svg class="chart" role="img" aria-labelledby="chart-shown-title chart-shown-desc"' in html
    assert '<title id="chart-shown-title">elevated-cramp-risk: cards shown per week</title>' in html
    assert re.search(r'<th scope="row" class="week">2026-W24</th>\s*<td class="n">0</td>', html)
    assert re.search(r'<th scope="row" class="week">2026-W23</th>\s*<td class="n">20</td>', html)
    assert 'role="alert"' in html and "ALARM" in html
    assert "style=" not in html and "<script>" not in html
    assert signed_in_client(app, "vera").get("/admin/watch/no-such-card").status_code == 404


def test_a_card_page_splits_each_week_by_rule_set_version(app) -> None:
    history_with_a_drop(app)
    show_cards(app.extensions["leg_cramp_store"], "conservative-care", MONDAY_W25 - timedelta(weeks=1), 3, DRAFT_VERSION)
    html = signed_in_client(app, "vera").get("/admin/watch/conservative-care").get_data(as_text=True)
    # W24: 1 card under 2026.12.1 (overridden), 3 under 2026.12.2
    row = re.search(r'<th scope="row" class="week">2026-W24</th>(.*?)</tr>', html, re.S).group(1)
    assert '<td class="n">4</td>' in row
    assert "2026.12.1: 1 shown, 1 overridden" in row and f"{DRAFT_VERSION}: 3 shown, 0 overridden" in row


def test_watch_needs_a_sign_in(app) -> None:
    response = app.test_client().get("/admin/watch")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


# ---------------------------------------------------------------- /metrics

def _gauge(text: str, card: str, measure: str) -> str | None:
    match = re.search(rf'^cramp_card_rate_alarm\{{card="{card}",measure="{measure}"\}} (\S+)$', text, re.M)
    return match.group(1) if match else None


def test_the_alarm_gauge_is_in_metrics(app) -> None:
    history_with_a_drop(app)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert _gauge(text, "elevated-cramp-risk", "firing") == "1.0"
    assert _gauge(text, "elevated-cramp-risk", "override") == "0.0"
    assert _gauge(text, "untreated-dvt", "firing") == "0.0"
    assert "cramp_card_rate_alarm_checked 1.0" in text
    assert COMMENT not in text and "magnesium" not in text


def test_metrics_answer_when_the_database_does_not(app) -> None:
    app.extensions["leg_cramp_store"] = CardStore("postgresql+psycopg://postgres@127.0.0.1:9/none", None,
                                                  migrate=False)
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "cramp_card_rate_alarm_checked 0.0" in text
    assert _gauge(text, "elevated-cramp-risk", "firing") is None
    assert "cramp_requests_total" in text or "cramp_http_requests_total" in text or "# TYPE" in text


def test_the_explanation_stylesheet_is_served_from_its_one_source_and_linked_by_try_it(app) -> None:
    from cds_service.admin.explanation import EXPLANATION_CSS

    client = signed_in_client(app, "eddie")
    css = client.get("/admin/explanation.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert css.get_data(as_text=True) == EXPLANATION_CSS
    assert 'href="/admin/explanation.css"' in client.get("/admin/try").get_data(as_text=True)
