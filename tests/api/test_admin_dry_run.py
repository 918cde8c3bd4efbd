"""The console's dry runs (docs/dry-run.md) through the real app: accounts on a SQLite file in tmp_path,
signed in through the form; the job queued by the page and run by a real JobWorker (in this process, with
``run_once``: the request never runs it)."""

from __future__ import annotations

import csv
import io
import re

import pytest

from cds_service.admin.job_worker import DRY_RUN, JobWorker
from cds_service.storage.jobs import JobStore
from support.admin_console import console_app, contributors_draft, create_admin, page_token, signed_in_client

DRAFT = "2026.12.2"



@pytest.fixture
def app(tmp_path):
    app = console_app(tmp_path)
    create_admin(app, "vera", "viewer")
    create_admin(app, "eddie", "editor")
    app.extensions["leg_cramp_rule_versions"].save_draft(contributors_draft(2, DRAFT), "eddie")
    return app


def jobs_of(app) -> JobStore:
    return JobStore.for_card_store(app.extensions["leg_cramp_store"])


def start(client, **fields):
    token = page_token(client, "/admin/dry-runs/new")
    data = {"csrf_token": token, "draft": DRAFT, "source": "fixtures", "as_of": "2026-06-15", **fields}
    return client.post("/admin/dry-runs/new", data=data)


def run_worker(app) -> None:
    settings = app.extensions["leg_cramp_settings"]
    finished = JobWorker(jobs_of(app), settings, processes=1, heartbeat_seconds=0.2).run_once()
    assert finished is not None and finished.status == "done", finished


def test_roles_viewer_reads_editor_starts(app) -> None:
    viewer = signed_in_client(app, "vera")
    assert viewer.get("/admin/dry-runs").status_code == 200
    assert viewer.get("/admin/dry-runs/new").status_code == 403
    assert viewer.post("/admin/dry-runs/new", data={"csrf_token": page_token(viewer)}).status_code == 403
    editor = signed_in_client(app, "eddie")
    page = editor.get("/admin/dry-runs/new").get_data(as_text=True)
    for field in ("draft", "source-fixtures", "source-folder", "path", "fhir_url", "bulk_url", "group_id", "token",
                  "as_of"):
        assert f'for="{field}"' in page and f'id="{field}"' in page  # every input has its label
    assert f'<option value="{DRAFT}"' in page
    anonymous = app.test_client()
    assert anonymous.get("/admin/dry-runs").status_code == 302  # to the sign-in page
    assert anonymous.get("/admin/dry-runs/1/status", headers={"Accept": "application/json"}).status_code == 401


def test_without_the_csrf_token_nothing_is_queued(app) -> None:
    editor = signed_in_client(app, "eddie")
    response = editor.post("/admin/dry-runs/new", data={"draft": DRAFT, "source": "fixtures"})
    assert response.status_code == 400
    assert jobs_of(app).list() == []


def test_a_folder_outside_the_allowed_directories_is_refused_at_its_field(app, tmp_path) -> None:
    editor = signed_in_client(app, "eddie")
    response = start(editor, source="folder", path=str(tmp_path))
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert 'id="path-error"' in page and 'aria-describedby="path-error"' in page
    assert "not under an allowed directory" in page
    response = start(editor, source="fhir", fhir_url="https://ehr.example.org/fhir")
    assert response.status_code == 400 and "allowlist" in response.get_data(as_text=True)
    response = start(editor, as_of="15/06/2026")
    assert response.status_code == 400 and 'id="as_of-error"' in response.get_data(as_text=True)
    response = start(editor, draft="2026.12.1")
    assert response.status_code == 400 and "that is the active version" in response.get_data(as_text=True)
    assert jobs_of(app).list() == []


def test_a_dry_run_is_queued_run_by_the_worker_and_shown(app) -> None:
    editor = signed_in_client(app, "eddie")
    response = start(editor)
    assert response.status_code == 303
    location = response.headers["Location"]
    job_id = int(re.search(r"/admin/dry-runs/(\d+)$", location).group(1))
    queued = jobs_of(app).get(job_id)
    assert queued.status == "queued" and queued.created_by == "eddie"  # the request did not run it
    page = editor.get(location).get_data(as_text=True)
    assert 'id="job-progress"' in page and "dry_run.js" in page and "data-status-url" in page
    status = editor.get(f"/admin/dry-runs/{job_id}/status").get_json()
    assert status["status"] == "queued" and status["finished"] is False

    run_worker(app)

    status = editor.get(f"/admin/dry-runs/{job_id}/status").get_json()
    assert status["status"] == "done" and status["finished"] and status["done"] == status["total"] > 0
    result = jobs_of(app).get(job_id).result
    page = editor.get(location).get_data(as_text=True)
    assert "<svg" in page and 'role="img"' in page
    assert f"Patients whose cards change ({result['changes_total']})" in page
    assert result["changes_total"] > 0  # threshold 3 -> 2: some fixture patient now crosses it
    first = result["changes"][0]
    assert first["patientId"] in page and "elevated-cramp-risk" in " ".join(first["after"] + first["before"])
    rows = list(csv.reader(io.StringIO(editor.get(f"/admin/dry-runs/{job_id}.csv").get_data(as_text=True))))
    assert rows[0][:3] == ["section", "card", "active_patients"]
    assert sum(1 for row in rows if row[0] == "change") == result["changes_total"]
    elevated = next(row for row in rows if row[1] == "elevated-cramp-risk")
    assert int(elevated[4]) - int(elevated[2]) == sum(
        ("elevated-cramp-risk" in c["after"]) - ("elevated-cramp-risk" in c["before"]) for c in result["changes"])

    viewer = signed_in_client(app, "vera")
    shown = viewer.get(location).get_data(as_text=True)
    assert "<svg" in shown and first["patientId"] not in shown  # aggregates only: patient ids are PHI
    assert viewer.get(f"/admin/dry-runs/{job_id}.csv").status_code == 403
    listing = viewer.get("/admin/dry-runs").get_data(as_text=True)
    assert f"#{job_id}" in listing and "done" in listing


def test_the_bulk_token_is_queued_as_a_secret_never_listed_or_shown(app) -> None:
    settings = app.extensions["leg_cramp_settings"].with_changes(
        fhir_server_allowlist=("http://127.0.0.1:9/fhir",), fhir_allow_http_loopback=True)
    app.extensions["leg_cramp_settings"] = settings
    editor = signed_in_client(app, "eddie")
    response = start(editor, source="bulk", bulk_url="http://127.0.0.1:9/fhir", group_id="g1",
                     token="tok-SECRET-123")
    assert response.status_code == 303, response.get_data(as_text=True)[:3000]
    [job] = jobs_of(app).list()
    assert job.params["token"] is True and "tok-SECRET-123" not in str(job.params)
    assert jobs_of(app).get(job.id).inputs["secrets"] == {"token": "tok-SECRET-123"}
    for path in ("/admin/dry-runs", f"/admin/dry-runs/{job.id}", f"/admin/dry-runs/{job.id}/status"):
        assert "tok-SECRET-123" not in editor.get(path).get_data(as_text=True)


def test_cancel_a_queued_dry_run(app) -> None:
    editor = signed_in_client(app, "eddie")
    location = start(editor).headers["Location"]
    job_id = int(location.rsplit("/", 1)[1])
    response = editor.post(f"/admin/dry-runs/{job_id}/cancel", data={"csrf_token": page_token(editor, location)})
    assert response.status_code == 303
    assert jobs_of(app).get(job_id).status == "cancelled"
    assert JobWorker(jobs_of(app), app.extensions["leg_cramp_settings"]).run_once() is None  # nothing to run
    viewer = signed_in_client(app, "vera")
    assert viewer.post(f"/admin/dry-runs/{job_id}/cancel",
                       data={"csrf_token": page_token(viewer)}).status_code == 403


def test_unknown_dry_runs_are_404_and_the_pages_pass_the_csp(app) -> None:
    editor = signed_in_client(app, "eddie")
    assert editor.get("/admin/dry-runs/999").status_code == 404
    missing = editor.get("/admin/dry-runs/999/status")
    assert missing.status_code == 404 and missing.get_json()["resourceType"] == "OperationOutcome"
    location = start(editor).headers["Location"]
    run_worker(app)
    for path in ("/admin/dry-runs", "/admin/dry-runs/new", location):
        html = editor.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # no inline script
        assert " style=" not in html and "<style" not in html, path  # no inline style


def test_a_job_of_another_kind_is_not_a_dry_run(app) -> None:
    other = jobs_of(app).create("something_else", {}, "eddie")
    editor = signed_in_client(app, "eddie")
    assert editor.get(f"/admin/dry-runs/{other.id}").status_code == 404
    assert DRY_RUN == "dry_run"


def test_a_database_that_does_not_answer_is_a_503_message(app, monkeypatch) -> None:
    from cds_service.storage.jobs import JobStoreUnavailable

    editor = signed_in_client(app, "eddie")

    def down(*args, **kwargs):
        raise JobStoreUnavailable("the database did not answer (OperationalError)")

    monkeypatch.setattr(JobStore, "list", down)
    monkeypatch.setattr(JobStore, "get", down)
    page = editor.get("/admin/dry-runs")
    assert page.status_code == 503 and "Try again in a moment" in page.get_data(as_text=True)
    status = editor.get("/admin/dry-runs/1/status")
    assert status.status_code == 503 and status.get_json()["issue"][0]["code"] == "transient"
