"""A deployed rule-set version that this release's validator refuses (a stricter release, or a row written
by hand): the console says so with the problems and the way out, never an internal error, and the way out
(the versions, a draft, roll back) works."""

from __future__ import annotations

import re
import time

import pytest

from support.app import make_app

ACTIVE = "2026.12.1"
BROKEN = "2099.1.1"


def sign_in(client, role: str) -> None:
    with client.session_transaction("/admin/") as session:  # the console cookie's path
        session["admin"] = {"u": f"{role}-1", "r": role, "d": None, "via": "oidc", "pw": None}
        session["admin_seen"] = int(time.time())


@pytest.fixture
def app():
    app = make_app(admin_dev_autologin=False)
    store = app.extensions["leg_cramp_admin_store"]
    active = store.active_version()
    assert active.version == ACTIVE
    # Stored and deployed through the store, below the validation a save or a deploy from the console does:
    # as a version that passed an older release's checks would sit in the database.
    broken = active.content.replace(f"version: {ACTIVE}", f"version: {BROKEN}", 1)
    broken = broken.replace("contributors:                   # evaluation C\n  threshold: 3",
                            "contributors:                   # evaluation C\n  threshold: -1", 1)
    assert "threshold: -1" in broken
    store.save_draft(BROKEN, broken, "test")
    store.deploy(BROKEN, "test")
    return app


@pytest.fixture
def client(app):
    client = app.test_client()
    sign_in(client, "deployer")
    return client


def test_the_rules_page_names_the_version_and_its_problems(client):
    page = client.get("/admin/rules")
    assert page.status_code == 409
    html = page.get_data(as_text=True)
    assert f"Version {BROKEN} is the one deployed" in html
    assert "contributors.threshold" in html
    assert f"keeps serving version\n{ACTIVE}" in html or f"keeps serving version {ACTIVE}" in html
    assert 'href="/admin/rules/versions"' in html


def test_a_script_gets_an_operation_outcome(client):
    answer = client.get("/admin/rules", headers={"Accept": "application/json"})
    assert answer.status_code == 409
    body = answer.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert BROKEN in body["issue"][0]["diagnostics"] and "threshold" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("path", ["/admin/", "/admin/rules/versions", f"/admin/rules/versions/{BROKEN}",
                                  "/admin/rules/draft", "/admin/try", "/admin/dry-runs"])
def test_the_way_out_still_opens(client, path):
    assert client.get(path).status_code == 200


def test_rolling_back_brings_the_rules_page_back(client):
    page = client.get("/admin/rules/versions").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
    confirm = client.post("/admin/rules/rollback", data={"csrf_token": token})
    assert confirm.status_code == 200 and ACTIVE in confirm.get_data(as_text=True)
    assert client.post("/admin/rules/rollback", data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    rules = client.get("/admin/rules")
    assert rules.status_code == 200 and ACTIVE in rules.get_data(as_text=True)
