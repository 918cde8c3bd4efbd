"""The console's Rules pages (docs/admin-rules.md): the active rules as a person reads them, the versions and
their diffs, the draft editor (a form for the numbers, lists and wording; the YAML for everything; live
validation), deploy and roll back. Thin views: the logic is ``cds_service.admin`` (ruleset_view,
ruleset_edit, ruleset_form, ruleset_diff, rule_versions).

Roles: viewer reads; editor saves drafts and validates; deployer deploys and rolls back. In file mode
(``CRAMP_RULES_SOURCE=file``) every edit route answers 409 with the reason and the pages hide their controls.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from flask import Response, abort, flash, redirect, render_template, request, url_for

from cds_service.admin.rule_versions import (AdminStoreUnavailable, NothingToRollBack, RuleSetInvalid,
                                             RulesReadOnly, UnknownVersion, VersionConflict)
from cds_service.admin.ruleset_diff import DiffError, RuleSetDiff, diff_rulesets
from cds_service.admin.ruleset_edit import EditError, apply_changes, changed_fields
from cds_service.admin.ruleset_form import DraftForm, build_form, submitted_fields
from cds_service.admin.ruleset_view import build_view
from cds_service.ruleset.loader import load_default_ruleset
from cds_service.web.admin import access, services
from cds_service.web.admin.access import require_role
from cds_service.web.admin.blueprint import admin_bp

log = logging.getLogger(__name__)

MAX_CONTENT_CHARS = 1_000_000  # a rule set is ~30 kB; anything near this is not one


# --- helpers -----------------------------------------------------------------------------------------------
def _actor() -> str:
    admin = access.current_admin()
    assert admin is not None  # require_role ran
    return admin.username


def _read_only_refusal() -> Response | None:
    """409 with the reason in file mode (JSON for a script, the page otherwise)."""
    versions = services.rule_versions()
    if not versions.read_only:
        return None
    reason = versions.read_only_reason or "The rules are read-only here."
    if access.wants_json():
        return access.json_error(409, reason, code="conflict")
    body = render_template("admin/rules_read_only.html", reason=reason)
    return Response(body, status=409, mimetype="text/html")


def _unavailable(error: AdminStoreUnavailable) -> Response:
    log.warning("admin console: rule versions unavailable", extra={"error": str(error)})
    message = "The rule-set database did not answer; nothing was changed. Try again in a moment."
    if access.wants_json():
        return access.json_error(503, message, code="transient")
    return Response(render_template("admin/rules_read_only.html", reason=message, title="Database unavailable"),
                    status=503, mimetype="text/html")


def _diff_against_active(content: str) -> tuple[RuleSetDiff | None, str | None]:
    try:
        active = services.rule_versions().active_record()
        return diff_rulesets(active.content, content), None
    except DiffError as error:
        return None, str(error)


def _can_edit() -> bool:
    return access.has_role("editor") and not services.rule_versions().read_only


def _can_deploy() -> bool:
    return access.has_role("deployer") and not services.rule_versions().read_only


@admin_bp.errorhandler(RuleSetInvalid)
def _active_invalid(error: RuleSetInvalid) -> Response:
    """The deployed version fails this release's validator (a stricter release, or a row written by hand):
    say so, with its problems and the way out (deploy or roll back), instead of an internal error."""
    record = services.rule_versions().active_record()
    serving = services.current_engine().ruleset.version
    log.warning("admin console: the deployed rule-set version does not validate",
                extra={"version": record.version, "problems": len(error.problems)})
    message = f"version {record.version} is deployed but does not pass this release's checks: {error}"
    if access.wants_json():
        return access.json_error(409, message, code="conflict")
    body = render_template("admin/rules_active_invalid.html", record=record, problems=error.problems,
                           serving=serving)
    return Response(body, status=409, mimetype="text/html")


# --- reading -----------------------------------------------------------------------------------------------
@admin_bp.get("/rules")
@require_role("viewer")
def rules() -> Any:
    versions = services.rule_versions()
    try:
        record, ruleset = versions.active()
    except AdminStoreUnavailable as error:
        return _unavailable(error)
    return render_template("admin/rules.html", record=record, view=build_view(ruleset),
                           read_only_reason=versions.read_only_reason, can_edit=_can_edit(),
                           can_deploy=_can_deploy())


@admin_bp.get("/rules/versions")
@require_role("viewer")
def rule_versions_list() -> Any:
    versions = services.rule_versions()
    try:
        active = versions.active_record()
        listed = versions.list_versions() if not versions.read_only else [active]
        rollback_to = versions.rollback_target() if not versions.read_only else None
    except AdminStoreUnavailable as error:
        return _unavailable(error)
    return render_template("admin/rules_versions.html", versions=listed, active=active, rollback_to=rollback_to,
                           read_only_reason=versions.read_only_reason, can_edit=_can_edit(),
                           can_deploy=_can_deploy())


def _version_record(version: str) -> Any:
    versions = services.rule_versions()
    active = versions.active_record()
    if versions.read_only:
        if version != active.version:
            abort(404)
        return active
    record = versions.get_version(version)
    if record is None:
        abort(404)
    return record


@admin_bp.get("/rules/versions/<version>")
@require_role("viewer")
def rule_version(version: str) -> Any:
    versions = services.rule_versions()
    try:
        record = _version_record(version)
        diff, diff_error = _diff_against_active(record.content)
        problems = versions.validate(record.content) if record.status == "draft" else []
    except AdminStoreUnavailable as error:
        return _unavailable(error)
    return render_template("admin/rules_version.html", record=record, diff=diff, diff_error=diff_error,
                           problems=problems, read_only_reason=versions.read_only_reason,
                           can_edit=_can_edit(), can_deploy=_can_deploy(), has_editor=access.has_role("editor"))


# --- the draft editor --------------------------------------------------------------------------------------
def _base_ruleset(base_version: str) -> Any:
    """The rule set that gives the form its structure: the version the draft started from (the active one
    when that version is gone or no longer validates)."""
    versions = services.rule_versions()
    record = versions.get_version(base_version) if base_version else None
    if record is not None:
        try:
            return versions.ruleset_of(record)
        except RuleSetInvalid:
            pass
    try:
        return versions.active()[1]
    except RuleSetInvalid:  # the deployed version no longer validates: the bundled rules give the structure
        return load_default_ruleset()


def _render_draft(content: str, base_version: str, problems: Any = (), errors: dict[str, str] | None = None,
                  message: str | None = None, status: int = 200) -> Response:
    form: DraftForm = build_form(build_view(_base_ruleset(base_version)), content, problems, errors)
    diff, diff_error = _diff_against_active(content) if form.readable else (None, None)
    body = render_template("admin/rules_draft.html", form=form, content=content, base_version=base_version,
                           message=message, diff=diff, diff_error=diff_error, problems=list(problems),
                           errors=errors or {})
    return Response(body, status=status, mimetype="text/html")


@admin_bp.route("/rules/draft", methods=["GET", "POST"])
@require_role("editor")
def rules_draft() -> Any:
    refusal = _read_only_refusal()
    if refusal is not None:
        return refusal
    try:
        if request.method == "GET":
            return _start_draft(request.args.get("from"))
        return _save_draft()
    except AdminStoreUnavailable as error:
        return _unavailable(error)


def _start_draft(from_version: str | None) -> Response:
    """A new draft: the content of ``from`` (a draft to go on with) or of the active version, under the
    next free version number (proposed; the admin may change it)."""
    versions = services.rule_versions()
    active = versions.active_record()
    source = versions.get_version(from_version) if from_version else active
    if source is None:
        abort(404)
    content = source.content
    if source.status != "draft":
        content = apply_changes(content, {"version": versions.next_version(source.version)})
    return _render_draft(content, source.version)


def _text(value: str) -> str:
    """A textarea's value with the line ends YAML files have (browsers send CRLF)."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _save_draft() -> Response:
    base_version = request.form.get("base_version", "")
    content = _text(request.form.get("content", ""))
    base_content = _text(request.form.get("base_content", content))
    if len(content) > MAX_CONTENT_CHARS or len(base_content) > MAX_CONTENT_CHARS:
        abort(413)
    form = build_form(build_view(_base_ruleset(base_version)), base_content)
    try:
        submitted = {name: _text(value) for name, value in
                     submitted_fields(request.form, [f.field for f in form.fields]).items()}
        content = apply_changes(content, changed_fields(base_content, submitted))
    except EditError as error:
        return _render_draft(content, base_version, errors={error.field: error.message},
                             message=f"{error.field}: {error.message}", status=422)
    try:
        saved = services.rule_versions().save_draft(content, _actor())
    except RuleSetInvalid as error:
        count = len(error.problems)
        return _render_draft(content, base_version, error.problems, status=422,
                             message=f"Not saved: the draft has {count} problem{'s' if count != 1 else ''}.")
    except VersionConflict as error:
        return _render_draft(content, base_version, errors={"version": str(error)}, message=f"Not saved: {error}",
                             status=409)
    flash(f"Draft {saved.version} saved. Review its diff against the active rules, then deploy it.", "success")
    # typed as werkzeug's Response; in a request, redirect builds the app's (flask's) response class
    return cast(Response, redirect(url_for("admin.rule_version", version=saved.version)))


@admin_bp.post("/rules/validate")
@require_role("editor")
def rules_validate() -> Any:
    """Live validation while typing: {content} -> {problems: [{line, field, message}]} (the validator of
    ``cramp-cds rules validate``). Allowed in file mode too: it changes nothing."""
    body = request.get_json(silent=True)
    content = body.get("content") if isinstance(body, dict) else None
    if not isinstance(content, str):
        return access.json_error(400, 'Send JSON {"content": "<the rule set as YAML text>"}.', code="invalid")
    if len(content) > MAX_CONTENT_CHARS:
        return access.json_error(413, "The rule set is too large.", code="too-costly")
    problems = services.rule_versions().validate(content)
    return {"problems": [{"line": p.line, "field": p.field, "message": p.message} for p in problems]}


# --- deploy and roll back ----------------------------------------------------------------------------------
def _confirmed() -> bool:
    return request.form.get("confirm") == "yes"


@admin_bp.post("/rules/versions/<version>/deploy")
@require_role("deployer")
def rules_deploy(version: str) -> Any:
    refusal = _read_only_refusal()
    if refusal is not None:
        return refusal
    versions = services.rule_versions()
    try:
        record = _version_record(version)
        active = versions.active_record()
        if not _confirmed():
            diff, diff_error = _diff_against_active(record.content)
            return render_template("admin/rules_confirm.html", action="deploy", record=record, active=active,
                                   diff=diff, diff_error=diff_error)
        state = versions.deploy(version, _actor())
    except AdminStoreUnavailable as error:
        return _unavailable(error)
    except RulesReadOnly as error:
        return access.json_error(409, str(error), code="conflict")
    except (RuleSetInvalid, UnknownVersion) as error:
        flash(f"Version {version} was not deployed: {error}", "error")
        return redirect(url_for("admin.rule_version", version=version))
    flash(f"Version {state.version} deployed (was {active.version}). Every replica of the service switches to it "
          "within a few seconds, without a restart.", "success")
    return redirect(url_for("admin.rules"))


@admin_bp.post("/rules/rollback")
@require_role("deployer")
def rules_rollback() -> Any:
    refusal = _read_only_refusal()
    if refusal is not None:
        return refusal
    versions = services.rule_versions()
    try:
        active = versions.active_record()
        target = versions.rollback_target()
        if target is None:
            flash(f"There is nothing to roll back to: version {active.version} is the first one deployed.", "error")
            return redirect(url_for("admin.rule_versions_list"))
        if not _confirmed():
            diff, diff_error = _diff_against_active(target.content)
            return render_template("admin/rules_confirm.html", action="rollback", record=target, active=active,
                                   diff=diff, diff_error=diff_error)
        state = versions.rollback(_actor())
    except AdminStoreUnavailable as error:
        return _unavailable(error)
    except (NothingToRollBack, RuleSetInvalid) as error:
        flash(f"Not rolled back: {error}", "error")
        return redirect(url_for("admin.rule_versions_list"))
    flash(f"Rolled back to version {state.version} (was {active.version}). Every replica switches within a few "
          "seconds.", "success")
    return redirect(url_for("admin.rules"))
