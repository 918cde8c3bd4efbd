"""Try it (docs/try-it.md): one patient under the active rule set and a chosen draft, side by side, with the
cards as a CDS client shows them and the explanation of each. Patient data is PHI: editors and deployers
only, nothing stored, nothing logged but the kind of source; the bearer token is never sent back."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from flask import Response, render_template, request
from markupsafe import Markup

from cds_service.admin import try_it
from cds_service.admin.explanation import EXPLANATION_CSS
from cds_service.admin.try_it import PatientSource, TryError, TryResult
from cds_service.storage.admin_store import AdminStoreError
from cds_service.ruleset.loader import RuleSet
from cds_service.web.admin import access, services
from cds_service.web.admin.access import require_role
from cds_service.web.admin.blueprint import admin_bp

log = logging.getLogger(__name__)

SOURCES = ("fixture", "upload", "fhir")


@dataclass
class TryForm:
    """What the page's form holds (the token is read, used and never put back into the page)."""

    source: str = "fixture"
    fixture: str = ""
    fhir_url: str = ""
    patient_id: str = ""
    as_of: str = ""
    draft: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_request(cls) -> "TryForm":
        form = request.form
        return cls(source=form.get("source", "fixture"), fixture=form.get("fixture", ""),
                   fhir_url=form.get("fhir_url", "").strip(), patient_id=form.get("patient_id", "").strip(),
                   as_of=form.get("as_of", "").strip(), draft=form.get("draft", ""))


def _drafts() -> tuple[list[Any], Any]:
    """The versions one may try beside the active one (drafts first, newest first), and the active one."""
    versions = services.rule_versions()
    active = versions.active_record()
    others = [v for v in versions.list_versions() if v.version != active.version]
    others.sort(key=lambda v: (v.status != "draft",))  # stable: newest first within each group
    return others, active


def _page(form: TryForm, result: TryResult | None = None, status: int = 200) -> Any:
    drafts, active = _drafts()
    if not form.draft and drafts:
        form.draft = drafts[0].version
    settings = services.settings()
    columns = []
    if result is not None:
        columns = [{"column": c, "cards_html": [Markup(h) for h in c.cards_html],
                    "explanation_html": Markup(c.explanation_html)} for c in result.columns]
    return render_template(
        "admin/try.html", form=form, fixtures=try_it.list_fixtures(), drafts=drafts, active=active,
        allowlist=settings.fhir_server_allowlist, max_upload=try_it.MAX_UPLOAD_BYTES, result=result,
        columns=columns), status


@admin_bp.get("/explanation.css")
@require_role("viewer")  # like every console view (the pages that use it need a sign-in anyway)
def explanation_css() -> Response:
    """The explanation's stylesheet, from its one source (admin/explanation.py, which the standalone
    `rules explain --format html` page inlines): a file here, as the console's CSP wants."""
    return Response(EXPLANATION_CSS, mimetype="text/css")


@admin_bp.get("/try")
@require_role("editor")
def try_page() -> Any:
    form = TryForm(fixture=request.args.get("fixture", ""), draft=request.args.get("draft", ""))
    return _page(form)


@admin_bp.post("/try")
@require_role("editor")
def try_run() -> Any:
    form = TryForm.from_request()
    try:
        as_of = _as_of(form.as_of)
        rule_sets = _rule_sets(form.draft)
        source = _source(form)
        result = try_it.try_patient(source, rule_sets, as_of)
    except TryError as error:
        form.errors[error.field] = error.message
        return _page(form, status=400)
    admin = access.current_admin()
    log.info("admin console: try it", extra={"admin": admin.username if admin else None, "source": source.kind,
                                             "versions": [rs.version for _, rs in rule_sets]})
    return _page(form, result)


def _as_of(value: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise TryError("as_of", f"{value!r} is not a date (YYYY-MM-DD)") from None


def _rule_sets(draft: str) -> list[tuple[str, RuleSet]]:
    versions = services.rule_versions()
    try:
        active_version, active = versions.active()
    except AdminStoreError as error:
        raise TryError("draft", f"the active rule set cannot be read: {error}") from None
    chosen = [("Active", active)]
    if draft:
        record = versions.get_version(draft)
        if record is None:
            raise TryError("draft", f"there is no rule-set version {draft!r}")
        try:
            chosen.append(("Draft" if record.status == "draft" else record.status.capitalize(),
                           versions.ruleset_of(record)))
        except (AdminStoreError, ValueError) as error:
            raise TryError("draft", f"version {draft} cannot be used: {error}") from None
    return chosen


def _source(form: TryForm) -> PatientSource:
    if form.source not in SOURCES:
        raise TryError("source", "choose where the patient comes from: a fixture, a file or a FHIR server")
    if form.source == "fixture":
        if not form.fixture:
            raise TryError("fixture", "choose a fixture")
        return try_it.patient_from_fixture(form.fixture)
    if form.source == "upload":
        upload = request.files.get("upload")
        if upload is None or not upload.filename:
            raise TryError("upload", "choose a file: a FHIR Bundle or a hook-request JSON")
        data = upload.stream.read(try_it.MAX_UPLOAD_BYTES + 1)
        return try_it.patient_from_upload(data, upload.filename)
    return try_it.patient_from_fhir(form.fhir_url, form.patient_id, request.form.get("token"), services.settings())
