"""The console's Rules pages through the Flask test client: every role's view, the draft editor (form and
YAML), live validation, version numbers, deploy and roll back, and file mode (read-only)."""

from __future__ import annotations

import re
import time

import pytest
import yaml

from support.app import make_app

ACTIVE = "2026.12.1"


def sign_in(client, role: str, username: str | None = None) -> None:
    """A console session as the sign-in work leaves it (an SSO admin: no local account to look up)."""
    with client.session_transaction("/admin/") as session:  # the console cookie's path
        session["admin"] = {"u": username or f"{role}-1", "r": role, "d": None, "via": "oidc", "pw": None}
        session["admin_seen"] = int(time.time())


def csrf(client, page: str = "/admin/rules") -> str:
    html = client.get(page).get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def form_of(html: str) -> dict[str, str]:
    """The draft form's fields as the browser would send them (inputs, selects, textareas)."""
    fields: dict[str, str] = {}
    for name, value in re.findall(r'<input type="(?:hidden|text)"[^>]*?name="([^"]+)"[^>]*?value="([^"]*)"', html):
        fields[name] = value
    for name, body in re.findall(r'<textarea[^>]*?name="([^"]+)"[^>]*>\n(.*?)</textarea>', html, re.S):
        fields[name] = body
    for name, body in re.findall(r'<select[^>]*?name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        fields[name] = re.search(r'<option value="([^"]*)" selected', body).group(1)
    import html as html_module
    return {name: html_module.unescape(value) for name, value in fields.items()}


@pytest.fixture
def app():
    return make_app(admin_dev_autologin=False)


@pytest.fixture
def client(app):
    return app.test_client()


def versions(app):
    return app.extensions["leg_cramp_rule_versions"]


# --- reading ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["viewer", "editor", "deployer"])
def test_every_role_reads_the_rules_and_versions(client, role):
    sign_in(client, role)
    page = client.get("/admin/rules")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"version {ACTIVE}" in html
    for card in ("possible-dvt", "venous-duplex-workup", "quinine-for-cramps"):
        assert f'id="card-{card}"' in html
    assert "Cramp and spasm" in html  # a code's display
    assert "not shown again for the same patient, by any clinician, for 90 days" in html
    assert ("Start a draft" in html) is (role != "viewer")
    listed = client.get("/admin/rules/versions")
    assert listed.status_code == 200 and ACTIVE in listed.get_data(as_text=True)
    assert client.get(f"/admin/rules/versions/{ACTIVE}").status_code == 200
    assert client.get("/admin/rules/versions/1999.1.1").status_code == 404


def test_signed_out_is_sent_to_sign_in_and_viewers_may_not_edit(client):
    assert client.get("/admin/rules").status_code == 302
    assert "/admin/login" in client.get("/admin/rules").headers["Location"]
    sign_in(client, "viewer")
    assert client.get("/admin/rules/draft").status_code == 403
    token = csrf(client)
    refused = client.post("/admin/rules/validate", json={"content": "x: 1"}, headers={"X-CSRFToken": token})
    assert refused.status_code == 403


# --- the draft editor ------------------------------------------------------------------------------------
def test_a_threshold_lowered_on_the_form_is_saved_as_the_next_draft(app, client):
    sign_in(client, "editor", "ed")
    page = client.get("/admin/rules/draft")
    assert page.status_code == 200
    fields = form_of(page.get_data(as_text=True))
    assert fields["version"] == "2026.12.2"  # proposed
    assert fields["venous_index.threshold"] == "3"
    fields["venous_index.threshold"] = "2"
    saved = client.post("/admin/rules/draft", data=fields)
    assert saved.status_code == 302 and saved.headers["Location"].endswith("/admin/rules/versions/2026.12.2")
    record = versions(app).get_version("2026.12.2")
    assert (record.status, record.created_by) == ("draft", "ed")
    assert yaml.safe_load(record.content)["venous_index"]["threshold"] == 2
    assert "# Default rule set of leg-cramp-cds." in record.content  # comments survive
    shown = client.get(saved.headers["Location"]).get_data(as_text=True)
    assert "venous_index.threshold" in shown and "Draft 2026.12.2 saved" in shown
    assert versions(app).active()[0].version == ACTIVE  # saving deploys nothing


def test_yaml_edited_in_the_textarea_with_browser_line_ends_is_saved(app, client):
    sign_in(client, "editor")
    fields = form_of(client.get("/admin/rules/draft").get_data(as_text=True))
    fields["content"] = fields["content"].replace("  recent_days: 14 ", "  recent_days: 10 ").replace("\n", "\r\n")
    assert client.post("/admin/rules/draft", data=fields).status_code == 302
    content = versions(app).get_version("2026.12.2").content
    assert "\r" not in content and yaml.safe_load(content)["windows"]["recent_days"] == 10


def test_an_invalid_draft_shows_each_problem_at_its_line_and_field(client):
    sign_in(client, "editor")
    fields = form_of(client.get("/admin/rules/draft").get_data(as_text=True))
    content = fields["content"].replace("    statin: 0.5\n", "    statin: -0.5\n")
    line = content.splitlines().index("    statin: -0.5") + 1
    answer = client.post("/admin/rules/draft", data={**fields, "content": content})
    assert answer.status_code == 422
    html = answer.get_data(as_text=True)
    assert f'data-line="{line}"' in html
    assert f"line {line}: contributors.points.statin: negative points for statin" in html  # at the form field
    assert 'aria-invalid="true"' in html and "-0.5" in html  # the admin's text is shown again


def test_a_wrong_type_on_the_form_is_refused_at_its_field(client):
    sign_in(client, "editor")
    fields = form_of(client.get("/admin/rules/draft").get_data(as_text=True))
    answer = client.post("/admin/rules/draft", data={**fields, "windows.recent_days": "two weeks"})
    assert answer.status_code == 422
    html = answer.get_data(as_text=True)
    assert "windows.recent_days: expected a whole number, got &#39;two weeks&#39;" in html
    assert 'id="f-windows--recent_days-error"' in html


def test_a_version_number_used_for_other_content_is_refused(app, client):
    sign_in(client, "editor")
    fields = form_of(client.get("/admin/rules/draft").get_data(as_text=True))
    answer = client.post("/admin/rules/draft", data={**fields, "version": ACTIVE, "venous_index.threshold": "2"})
    assert answer.status_code == 409
    html = answer.get_data(as_text=True)
    assert f"version {ACTIVE} is already used" in html and "The next free number is 2026.12.2" in html
    assert [v.version for v in versions(app).list_versions()] == [ACTIVE]


def test_live_validation_answers_problems_with_line_and_field(client):
    sign_in(client, "editor")
    token = csrf(client)
    content = versions_text = client.application.extensions["leg_cramp_rule_versions"].active()[0].content
    content = versions_text.replace("  signs_needed_alone: 2", "  signs_needed_alone: many")
    line = content.splitlines().index("  signs_needed_alone: many") + 1
    answer = client.post("/admin/rules/validate", json={"content": content}, headers={"X-CSRFToken": token})
    assert answer.status_code == 200
    assert answer.get_json()["problems"] == [{"line": line, "field": "red_flag.signs_needed_alone",
                                              "message": "Input should be a valid integer, unable to parse string as an integer"}]
    broken = client.post("/admin/rules/validate", json={"content": "a: [1,\n"}, headers={"X-CSRFToken": token})
    (problem,) = broken.get_json()["problems"]
    assert problem["line"] == 2 and "not valid YAML" in problem["message"]
    ok = client.post("/admin/rules/validate", json={"content": versions_text}, headers={"X-CSRFToken": token})
    assert ok.get_json() == {"problems": []}
    bad = client.post("/admin/rules/validate", json={"text": "x"}, headers={"X-CSRFToken": token})
    assert bad.status_code == 400 and bad.get_json()["resourceType"] == "OperationOutcome"
    assert client.post("/admin/rules/validate", json={"content": "x: 1"}).status_code == 400  # no CSRF token


# --- deploy and roll back --------------------------------------------------------------------------------
def save_draft(app, threshold: int = 2, version: str = "2026.12.2") -> None:
    rules = versions(app)
    text = rules.active()[0].content.replace(f'version: "{ACTIVE}"', f'version: "{version}"')
    text = text.replace("venous_index:                   # evaluation B\n  threshold: 3",
                        f"venous_index:                   # evaluation B\n  threshold: {threshold}")
    rules.save_draft(text, "ed")


def test_deploy_needs_the_deployer_role_and_a_confirmation(app, client):
    save_draft(app)
    sign_in(client, "editor")
    token = csrf(client)
    assert client.post("/admin/rules/versions/2026.12.2/deploy", data={"csrf_token": token, "confirm": "yes"}).status_code == 403
    assert versions(app).active()[0].version == ACTIVE

    sign_in(client, "deployer", "dora")
    token = csrf(client)
    confirm = client.post("/admin/rules/versions/2026.12.2/deploy", data={"csrf_token": token})
    assert confirm.status_code == 200
    html = confirm.get_data(as_text=True)
    assert "Deploy version 2026.12.2?" in html and "venous_index.threshold" in html
    assert versions(app).active()[0].version == ACTIVE  # not yet
    done = client.post("/admin/rules/versions/2026.12.2/deploy", data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 302
    assert versions(app).active()[0].version == "2026.12.2"
    assert "Version 2026.12.2 deployed (was 2026.12.1)" in client.get("/admin/rules").get_data(as_text=True)
    audit = app.extensions["leg_cramp_admin_store"].audit_log()
    assert any(entry.actor == "dora" and entry.to_version == "2026.12.2" for entry in audit)


def test_rollback_returns_to_the_previous_version(app, client):
    save_draft(app)
    versions(app).deploy("2026.12.2", "dora")
    sign_in(client, "deployer")
    token = csrf(client)
    confirm = client.post("/admin/rules/rollback", data={"csrf_token": token})
    assert confirm.status_code == 200 and "Roll back to version 2026.12.1?" in confirm.get_data(as_text=True)
    assert client.post("/admin/rules/rollback", data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    assert versions(app).active()[0].version == ACTIVE
    nothing = client.post("/admin/rules/rollback", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True)
    assert "There is nothing to roll back to: version 2026.12.1 is the first one deployed." in nothing.get_data(as_text=True)
    assert versions(app).active()[0].version == ACTIVE


def test_a_version_page_shows_its_diff_against_the_active_one(app, client):
    save_draft(app, threshold=2)
    sign_in(client, "viewer")
    html = client.get("/admin/rules/versions/2026.12.2").get_data(as_text=True)
    assert "<code>venous_index.threshold</code>" in html
    assert re.search(r"venous_index\.threshold</code></th>\s*<td>.*venous-duplex-workup.*</td>\s*<td>3</td>\s*<td>2</td>",
                     html, re.S)
    assert "Deploy 2026.12.2" not in html  # a viewer has no deploy button


# --- file mode ---------------------------------------------------------------------------------------------
def test_file_mode_is_read_only(tmp_path):
    app = make_app(admin_dev_autologin=False, rules_source="file")
    client = app.test_client()
    sign_in(client, "deployer")
    html = client.get("/admin/rules").get_data(as_text=True)
    assert "Read-only:" in html and "CRAMP_RULES_SOURCE=file" in html
    assert "Start a draft" not in html
    versions_page = client.get("/admin/rules/versions").get_data(as_text=True)
    assert "Roll back" not in versions_page and ACTIVE in versions_page
    assert "read from the rules file" in versions_page and "1970" not in versions_page
    assert "Deploy" not in client.get(f"/admin/rules/versions/{ACTIVE}").get_data(as_text=True)
    token = csrf(client)
    for path in ("/admin/rules/draft", f"/admin/rules/versions/{ACTIVE}/deploy", "/admin/rules/rollback"):
        answer = client.post(path, data={"csrf_token": token, "confirm": "yes"})
        assert answer.status_code == 409, path
        assert "CRAMP_RULES_SOURCE=file" in answer.get_data(as_text=True)
    assert client.get("/admin/rules/draft").status_code == 409
    as_json = client.post("/admin/rules/rollback", json={}, headers={"X-CSRFToken": token})
    assert as_json.status_code == 409 and as_json.get_json()["resourceType"] == "OperationOutcome"


def test_every_draft_input_has_a_label_and_errors_are_described(client):
    sign_in(client, "editor")
    html = client.get("/admin/rules/draft").get_data(as_text=True)
    controls = re.findall(r'<(?:input type="text"|select|textarea)[^>]*\bid="([^"]+)"', html)
    labels = set(re.findall(r'<label for="([^"]+)"', html))
    assert len(controls) > 250  # every card setting and every value-set list
    assert [c for c in controls if c not in labels] == []
    assert len(set(controls)) == len(controls)  # each field once: a shared setting is not sent twice


def test_a_draft_is_continued_under_its_own_number(app, client):
    save_draft(app, threshold=2)
    sign_in(client, "editor")
    fields = form_of(client.get("/admin/rules/draft?from=2026.12.2").get_data(as_text=True))
    assert (fields["version"], fields["venous_index.threshold"], fields["base_version"]) == ("2026.12.2", "2", "2026.12.2")
    fields["contributors.points.statin"] = "1"
    assert client.post("/admin/rules/draft", data=fields).status_code == 302
    saved = yaml.safe_load(versions(app).get_version("2026.12.2").content)
    assert (saved["venous_index"]["threshold"], saved["contributors"]["points"]["statin"]) == (2, 1)
    assert client.get("/admin/rules/draft?from=1999.1.1").status_code == 404


def test_after_a_deploy_from_the_console_the_service_answers_with_the_new_version(app, client):
    save_draft(app)
    sign_in(client, "deployer")
    token = csrf(client)
    assert client.post("/admin/rules/versions/2026.12.2/deploy", data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    client.get("/cds-services")  # the next request of this process takes the new engine
    assert app.extensions["leg_cramp_engine"].ruleset.version == "2026.12.2"
    assert app.extensions["leg_cramp_engine"].ruleset.spec.venous_index.threshold == 2
    version_page = client.get("/admin/rules").get_data(as_text=True)
    assert "version 2026.12.2" in version_page and "at least 2 points" in version_page
