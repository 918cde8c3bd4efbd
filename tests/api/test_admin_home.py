"""The console's home page says what needs attention now: the alarms /metrics exposes and the drafts
waiting to be deployed (docs/admin-console.md)."""

from __future__ import annotations

import re

import pytest

from support.admin_console import (
    console_app, contributors_draft, create_admin, history_with_a_drop, signed_in_client,
)


@pytest.fixture
def app(tmp_path):
    app = console_app(tmp_path)
    create_admin(app, "vera", "viewer")
    return app


def _section(html: str, element_id: str) -> str:
    match = re.search(rf'<dd id="{element_id}">(.*?)</dd>', html, re.S)
    assert match, f"no #{element_id} on the home page"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def _home(app) -> str:
    response = signed_in_client(app, "vera").get("/admin/")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_a_quiet_service_has_no_alarm_and_no_draft(app) -> None:
    html = _home(app)
    assert _section(html, "home-alarms").startswith("none")
    assert _section(html, "home-drafts") == "none waiting"


def test_the_alarm_of_a_card_that_stopped_firing_and_a_waiting_draft_are_named(app) -> None:
    history_with_a_drop(app)  # elevated-cramp-risk: 20 a week for 8 weeks, then none (the /metrics alarm)
    app.extensions["leg_cramp_rule_versions"].save_draft(contributors_draft(), "eddie")
    html = _home(app)
    assert _section(html, "home-alarms") == "1: elevated-cramp-risk (firing)"
    assert _section(html, "home-drafts") == "2026.12.2 by eddie"
