"""Dry runs (docs/dry-run.md): a draft rule set against a population, beside the active one, as a job run by
the worker process (``admin/job_worker.py``), never in this request worker.

    GET  /admin/dry-runs                the dry runs, newest first (viewer)
    GET  /admin/dry-runs/new            the form: which version, which population (editor)
    POST /admin/dry-runs/new            queue the job, then its page
    GET  /admin/dry-runs/<id>           progress (static/dry_run.js polls the status), then the result: per card
                                        patients and rate with a chart (viewer); the patients whose cards
                                        change and why (editor: patient ids are PHI)
    GET  /admin/dry-runs/<id>/status    JSON: status, done, total, message
    GET  /admin/dry-runs/<id>.csv       the result as CSV (editor)
    POST /admin/dry-runs/<id>/cancel    (editor)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from flask import Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup

from cds_service.admin import dry_run
from cds_service.admin.dry_run import SOURCE_KINDS, SOURCE_LABELS, DryRunResult, Source
from cds_service.admin.job_worker import DRY_RUN, dry_run_job
from cds_service.admin.simulation_report import svg_bar_chart
from cds_service.storage.admin_store import AdminStoreError
from cds_service.storage.jobs import Job, JobNotFound, JobStore, JobStoreUnavailable
from cds_service.web.admin import access, services
from cds_service.web.admin.access import require_role
from cds_service.web.admin.blueprint import admin_bp

log = logging.getLogger(__name__)

_jobs_lock = threading.Lock()
MAX_TOKEN_CHARS = 8192


def job_store() -> JobStore:
    """The application's job store, on the card store's database (migration 0004)."""
    extensions = current_app.extensions
    if "leg_cramp_job_store" not in extensions:
        with _jobs_lock:
            extensions.setdefault("leg_cramp_job_store", JobStore.for_card_store(services.card_store()))
    return extensions["leg_cramp_job_store"]


@dataclass
class DryRunForm:
    """The form's fields (the bearer token is read, queued with the job and never put back in the page)."""

    draft: str = ""
    source: str = "fixtures"
    path: str = ""
    fhir_url: str = ""
    bulk_url: str = ""
    group_id: str = ""
    as_of: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_request(cls) -> "DryRunForm":
        form = request.form
        return cls(draft=form.get("draft", ""), source=form.get("source", "fixtures"),
                   path=form.get("path", "").strip(), fhir_url=form.get("fhir_url", "").strip(),
                   bulk_url=form.get("bulk_url", "").strip(), group_id=form.get("group_id", "").strip(),
                   as_of=form.get("as_of", "").strip())

    def to_source(self) -> tuple[Source, str]:
        """The source, and the name of the field its problems belong to."""
        if self.source in ("folder", "ndjson"):
            return Source(self.source, self.path), "path"
        if self.source == "fhir":
            return Source("fhir", self.fhir_url), "fhir_url"
        if self.source == "bulk":
            return Source("bulk", self.bulk_url, self.group_id or None), "bulk_url"
        return Source(self.source), "source"


def _versions() -> tuple[Any, list[Any]]:
    versions = services.rule_versions()
    active = versions.active_record()
    others = [v for v in versions.list_versions() if v.version != active.version]
    others.sort(key=lambda v: v.status != "draft")  # drafts first, the list's order kept within each group
    return active, others


def _form_page(form: DryRunForm, status: int = 200) -> Any:
    active, drafts = _versions()
    if not form.draft and drafts:
        form.draft = drafts[0].version
    settings = services.settings()
    return render_template(
        "admin/dry_run_new.html", form=form, active=active, drafts=drafts, source_kinds=SOURCE_KINDS,
        source_labels=SOURCE_LABELS, allowed_dirs=dry_run.allowed_dirs(settings),
        allowlist=settings.fhir_server_allowlist, today=datetime.now(timezone.utc).date().isoformat()), status


# ---------------------------------------------------------------- list and form


@admin_bp.get("/dry-runs")
@require_role("viewer")
def dry_runs() -> Any:
    return render_template("admin/dry_runs.html", jobs=job_store().list(kind=DRY_RUN, limit=100),
                           can_start=access.has_role("editor"))


@admin_bp.get("/dry-runs/new")
@require_role("editor")
def dry_run_new() -> Any:
    return _form_page(DryRunForm(draft=request.args.get("draft", "")))


@admin_bp.post("/dry-runs/new")
@require_role("editor")
def dry_run_start() -> Any:
    form = DryRunForm.from_request()
    token = request.form.get("token", "").strip() or None
    settings = services.settings()
    as_of = _as_of(form)
    source, source_field = form.to_source()
    problem = dry_run.check_source(source, settings)
    if problem:
        form.errors[source_field if form.source in SOURCE_KINDS else "source"] = problem
    if form.source == "bulk" and form.group_id and any(c in form.group_id for c in "/?#"):
        form.errors["group_id"] = "a Group id, without slashes"
    if token is not None and (len(token) > MAX_TOKEN_CHARS or any(c.isspace() for c in token)):
        form.errors["token"] = "not a usable bearer token"
    versions = services.rule_versions()
    try:
        active = versions.active_record()
    except AdminStoreError as error:
        form.errors["draft"] = f"the active rule set cannot be read: {error}"
        return _form_page(form, 400)
    draft = versions.get_version(form.draft) if form.draft else None
    if draft is None:
        form.errors["draft"] = "choose the version to dry-run" if not form.draft else \
            f"there is no rule-set version {form.draft!r}"
    elif draft.version == active.version:
        form.errors["draft"] = "that is the active version: choose a draft to compare with it"
    if form.errors or as_of is None or draft is None:
        return _form_page(form, 400)
    admin = access.current_admin()
    actor = admin.username if admin else "?"
    params, inputs = dry_run_job(active.version, active.content, draft.version, draft.content, source, as_of,
                                 token=token if form.source == "bulk" else None)
    job = job_store().create(DRY_RUN, params, actor, inputs)
    try:
        services.admin_store().record_audit(
            actor, "dry_run", f"dry run #{job.id} of {draft.version} against {active.version}: {source.describe()}",
            from_version=active.version, to_version=draft.version, detail={"job": job.id, "source": source.kind})
    except AdminStoreError:  # the job is queued; the audit line is what could not be written
        log.warning("admin console: dry run not audited", extra={"job_id": job.id})
    log.info("admin console: dry run queued", extra={"admin": actor, "job_id": job.id, "source": source.kind})
    flash(f"Dry run #{job.id} queued: the worker runs it; this page follows its progress.", "success")
    return redirect(url_for("admin.dry_run_page", job_id=job.id), code=303)


def _as_of(form: DryRunForm) -> date | None:
    if not form.as_of:
        return datetime.now(timezone.utc).date()
    try:
        return date.fromisoformat(form.as_of)
    except ValueError:
        form.errors["as_of"] = f"{form.as_of!r} is not a date (YYYY-MM-DD)"
        return None


# ---------------------------------------------------------------- one dry run


def _job_or_404(job_id: int) -> Job:
    job = job_store().get(job_id)
    if job is None or job.kind != DRY_RUN:
        abort(404)
    return job


@admin_bp.get("/dry-runs/<int:job_id>")
@require_role("viewer")
def dry_run_page(job_id: int) -> Any:
    job = _job_or_404(job_id)
    result = DryRunResult.from_json(job.result) if job.status == "done" and job.result else None
    chart = None
    if result is not None:
        rows = [(row["card"], row["counts"], row["rates"]) for row in result.cards]
        names = [rs["label"] for rs in result.rule_sets]
        chart = Markup(svg_bar_chart(rows, names, [rs["version"] for rs in result.rule_sets],
                                     legend=("active", "draft")))
    return render_template("admin/dry_run.html", job=job, result=result, chart=chart,
                           source=Source.from_json(job.params.get("source") or {}),
                           can_see_patients=access.has_role("editor"), can_cancel=access.has_role("editor"))


@admin_bp.get("/dry-runs/<int:job_id>/status")
@require_role("viewer")
def dry_run_status(job_id: int) -> Any:
    job = job_store().get(job_id)
    if job is None or job.kind != DRY_RUN:
        return _outcome(404, "not-found", f"there is no dry run #{job_id}")
    return jsonify({"id": job.id, "status": job.status, "finished": job.finished, "done": job.progress_done,
                    "total": job.progress_total, "fraction": job.fraction, "message": job.message,
                    "error": job.error, "cancelRequested": job.cancel_requested})


@admin_bp.get("/dry-runs/<int:job_id>.csv")
@require_role("editor")
def dry_run_csv(job_id: int) -> Any:
    job = _job_or_404(job_id)
    if job.status != "done" or not job.result:
        abort(404)
    body = dry_run.render_csv(DryRunResult.from_json(job.result))
    return Response(body, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="dry-run-{job.id}.csv"', "Cache-Control": "no-store"})


@admin_bp.post("/dry-runs/<int:job_id>/cancel")
@require_role("editor")
def dry_run_cancel(job_id: int) -> Any:
    _job_or_404(job_id)
    try:
        job = job_store().cancel(job_id)
    except JobNotFound:
        abort(404)
    admin = access.current_admin()
    log.info("admin console: dry run cancel", extra={"admin": admin.username if admin else None, "job_id": job_id})
    flash("Cancelled." if job.status == "cancelled" else
          "Cancel asked: the worker stops at its next step." if not job.finished else
          f"Dry run #{job_id} had already ended ({job.status}).", "success")
    return redirect(url_for("admin.dry_run_page", job_id=job_id), code=303)


@admin_bp.errorhandler(JobStoreUnavailable)
def _jobs_unavailable(error: JobStoreUnavailable) -> Any:
    """The database did not answer: a message (503), never a 500."""
    message = f"The dry runs cannot be read or queued right now: {error}. Try again in a moment."
    if request.path.endswith("/status"):
        response = _outcome(503, "transient", message)
    else:
        response = render_template("admin/error.html", status=503, title="Database unavailable",
                                   message=message), 503
    return response


def _outcome(status: int, code: str, text: str) -> Any:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return jsonify(body), status
