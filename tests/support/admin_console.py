"""The admin console for tests: an app on a SQLite file with sign-in by accounts (development auto sign-in
off unless asked), accounts created through the real AdminStore, and a test client that signs in through
the real form (CSRF token read from the page, as a browser does)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from cds_service.admin.accounts import Accounts
from cds_service.clock import fixed_clock
from cds_service.engine.ledger import ShownCard
from cds_service.hooks.feedback import parse_feedback
from cds_service.settings import Settings
from cds_service.storage.store import CardStore
from cds_service.web.app import create_app
from support.hook_requests import NOW

PASSWORD = "correct horse battery staple"  # 28 characters: above the 12-character minimum
PRODUCTION_SECRET = "a-test-patient-key-secret-of-32-chars"
BUNDLED_VERSION = "2026.12.1"
MONDAY_W25 = datetime(2026, 6, 15, 9, 0, tzinfo=timezone.utc)  # the week of NOW: W24 is the latest complete one
COMMENT = "Patient Jane D. already takes magnesium"  # stands for PHI in a clinician's comment
_CONTRIBUTORS = "contributors:                   # evaluation C\n  threshold: 3\n"
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def console_settings(tmp_path: Path, *, production: bool = False, **overrides: Any) -> Settings:
    """Development mode without auto sign-in (so accounts are used), or ``production`` (https cookies,
    client authentication on) - each on its own SQLite file in ``tmp_path``."""
    values: dict[str, Any] = {"database_url": f"sqlite:///{tmp_path / 'console.sqlite3'}",
                              "admin_dev_autologin": False}
    if production:
        values.update(development_mode=False, patient_key_secret=PRODUCTION_SECRET,
                      public_base_urls="https://cds.example.org")
    else:
        values.update(development_mode=True)
    values.update(overrides)
    return Settings(**values)


def console_app(tmp_path: Path, *, production: bool = False, **overrides: Any):
    return create_app(console_settings(tmp_path, production=production, **overrides), clock=fixed_clock(NOW))


def accounts_of(app) -> Accounts:
    return Accounts(app.extensions["leg_cramp_admin_store"])


def create_admin(app, username: str, role: str, password: str = PASSWORD, display_name: str | None = None) -> None:
    accounts_of(app).create_user(username, password, role, actor="test", display_name=display_name)


def csrf_token_in(html: str) -> str:
    match = _CSRF_INPUT.search(html) or _CSRF_META.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login_page_token(client, **request: Any) -> str:
    page = client.get("/admin/login", **request)
    assert page.status_code == 200, page.status_code
    return csrf_token_in(page.get_data(as_text=True))


def sign_in(client, username: str, password: str = PASSWORD, *, next_path: str = "/admin/", **request: Any):
    """POST the sign-in form as a browser does (the token from the page); returns the response."""
    token = login_page_token(client, **request)
    return client.post("/admin/login", data={"username": username, "password": password, "csrf_token": token,
                                             "next": next_path}, **request)


def signed_in_client(app, username: str, password: str = PASSWORD):
    client = app.test_client()
    response = sign_in(client, username, password)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    return client


def page_token(client, path: str = "/admin/") -> str:
    """The CSRF token a signed-in page carries (its <meta name="csrf-token">)."""
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    return csrf_token_in(page.get_data(as_text=True))


def contributors_draft(threshold: float = 2.5, version: str = "2026.12.2") -> str:
    """The bundled rule set with evaluation C's threshold (RULES.md: 3 points) changed, under ``version``."""
    text = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")
    assert _CONTRIBUTORS in text, "the bundled rule set no longer has contributors.threshold 3"
    text = text.replace(_CONTRIBUTORS, _CONTRIBUTORS.replace("threshold: 3", f"threshold: {threshold:g}"), 1)
    return text.replace(f'version: "{BUNDLED_VERSION}"', f'version: "{version}"', 1)


def show_cards(store: CardStore, rule: str, at: datetime, count: int, version: str = "2026.12.1") -> list[str]:
    uuids = [str(uuid.uuid4()) for _ in range(count)]
    store.record_shown([ShownCard(u, (), "leg-cramp-patient-view", rule, version, "info", str(uuid.uuid4()),
                                  store.patient_key("p"), at) for u in uuids])
    return uuids


def history_with_a_drop(app) -> None:
    """elevated-cramp-risk: 20 a week in W16-W23, none in W24 (an alarm); one overridden card with a comment."""
    store = app.extensions["leg_cramp_store"]
    for weeks_back in range(2, 10):
        show_cards(store, "elevated-cramp-risk", MONDAY_W25 - timedelta(weeks=weeks_back), 20)
    [card] = show_cards(store, "conservative-care", MONDAY_W25 - timedelta(weeks=1), 1)
    item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-06-08T10:00:00Z",
            "overrideReason": {"reason": {"system": "http://example.org/r", "code": "nr",
                                          "display": "Not clinically relevant"}, "userComment": COMMENT}}
    store.record_feedback("leg-cramp-patient-view", parse_feedback({"feedback": [item]}))
