"""Console pages of the sign-in work: sign in and out (local accounts, optional OpenID Connect), the home
page, the audit log and the list of users (docs/admin-console.md). Thin views: the checks are in
``cds_service.admin.accounts`` and ``access``."""

from __future__ import annotations

import logging
from typing import Any, cast

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from cds_service.admin.accounts import MAX_PASSWORD_LENGTH, ROLES
from cds_service.web.admin import access, oidc, services
from cds_service.web.admin.access import Admin, require_role
from cds_service.web.admin.blueprint import admin_bp
from cds_service.web.metrics import card_rate_alarms

log = logging.getLogger(__name__)

AUDIT_PAGE_SIZE = 50


class LoginForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired("Enter your user name."), Length(max=64)],
                           render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"})
    password = PasswordField("Password", validators=[DataRequired("Enter your password."),
                                                     Length(max=MAX_PASSWORD_LENGTH)],
                             render_kw={"autocomplete": "current-password"})
    next = HiddenField()


# --- signing in and out ------------------------------------------------------------------------------------
@admin_bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    target = access.safe_next(request.values.get("next")) or url_for("admin.home")
    if access.current_admin() is not None:
        return redirect(target)
    form = LoginForm()
    if request.method == "GET":
        form.next.data = target
    problem, status = None, 200
    if form.validate_on_submit():
        result = services.accounts().authenticate(form.username.data or "", form.password.data or "",
                                                  access.client_address())
        if result.ok and result.user is not None:
            user = result.user
            access.sign_in(Admin(user.username, user.role, user.display_name, via="local"),
                           password_hash=user.password_hash)
            services.admin_store().record_audit(user.username, "sign-in", f"{user.username} signed in ({user.role})")
            log.info("admin console: signed in", extra={"admin": user.username, "via": "local"})
            return redirect(target)
        log.warning("admin console: sign-in refused", extra={"throttled": result.throttled})
        problem, status = result.message, (429 if result.throttled else 200)
    elif request.method == "POST":
        status = 400
    form.password.data = ""  # never sent back to the browser
    return render_template("admin/login.html", form=form, problem=problem, next_path=target,
                           oidc=services.settings().oidc_configured()), status


@admin_bp.post("/logout")
def logout() -> Response:
    admin = access.current_admin()
    access.sign_out()
    if admin is not None:
        log.info("admin console: signed out", extra={"admin": admin.username})
    if access.dev_autologin_active():
        flash("Signed out. Development mode signs you in again as dev-admin at the next page; "
              "set CRAMP_ADMIN_DEV_AUTOLOGIN=0 to use accounts.", "warning")
    else:
        flash("You are signed out.", "info")
    # typed as werkzeug's Response; in a request, redirect builds the app's (flask's) response class
    return cast(Response, redirect(url_for("admin.login")))


@admin_bp.get("/oidc/login")
def oidc_login() -> Any:
    if not services.settings().oidc_configured():
        abort(404)
    try:
        return oidc.start(current_app, access.safe_next(request.args.get("next")))
    except oidc.OidcUnavailable:
        problem = "Single sign-on is not available: the identity provider did not answer. Try again later."
        return render_template("admin/login.html", form=LoginForm(), problem=problem,
                               next_path=url_for("admin.home"), oidc=True), 503


@admin_bp.get("/oidc/callback")
def oidc_callback() -> Any:
    if not services.settings().oidc_configured():
        abort(404)
    outcome = oidc.finish(current_app, services.settings().admin_oidc_roles_claim)
    if outcome.problem:
        log.warning("admin console: single sign-on refused", extra={"reason": outcome.problem})
        return render_template("admin/login.html", form=LoginForm(), problem=outcome.problem,
                               next_path=url_for("admin.home"), oidc=True), 400
    admin = outcome.admin
    if admin is None:  # signed in at the identity provider, but with no console role
        return render_template("admin/no_role.html", username=outcome.username,
                               claim=services.settings().admin_oidc_roles_claim, roles=ROLES), 403
    access.sign_in(admin)
    services.admin_store().record_audit(admin.username, "sign-in", f"{admin.username} signed in ({admin.role}, single sign-on)")
    log.info("admin console: signed in", extra={"admin": admin.username, "via": "oidc"})
    return redirect(access.safe_next(outcome.next_path) or url_for("admin.home"))


# --- pages -------------------------------------------------------------------------------------------------
@admin_bp.get("/")
@require_role("viewer")
def home() -> str:
    alarms, alarms_checked = card_rate_alarms(current_app)
    return render_template("admin/home.html", ruleset=_active_ruleset(), settings=services.settings(),
                           alarms=alarms, alarms_checked=alarms_checked, drafts=_drafts())


@admin_bp.get("/audit")
@require_role("viewer")
def audit() -> str:
    page = _page_number(request.args.get("page"))
    entries = services.admin_store().audit_log(limit=AUDIT_PAGE_SIZE + 1, offset=(page - 1) * AUDIT_PAGE_SIZE)
    return render_template("admin/audit.html", entries=entries[:AUDIT_PAGE_SIZE], page=page,
                           has_next=len(entries) > AUDIT_PAGE_SIZE)


@admin_bp.get("/users")
@require_role("deployer")
def users() -> str:
    return render_template("admin/users.html", users=services.admin_store().list_users(), roles=ROLES)


def _page_number(raw: str | None) -> int:
    try:
        return max(1, min(int(raw or "1"), 1_000_000))
    except ValueError:
        return 1


def _drafts() -> list[Any] | None:
    """The drafts waiting to be deployed, newest first; None when they cannot be read (file mode, database)."""
    if "leg_cramp_rule_versions" not in current_app.extensions or services.rule_versions().read_only:
        return None
    try:
        return [v for v in services.admin_store().list_versions() if v.status == "draft"]
    except Exception:  # noqa: BLE001  (the home page still shows the rest)
        log.warning("admin console: the drafts could not be read")
        return None


def _active_ruleset() -> dict[str, Any]:
    """The version serving now and where the rules come from (database versions, or the rules file)."""
    engine_version = services.current_engine().ruleset.version
    info: dict[str, Any] = {"version": engine_version, "deployed_by": None, "deployed_at": None,
                            "read_only_reason": None}
    if "leg_cramp_rule_versions" not in current_app.extensions:
        return info
    versions = services.rule_versions()
    try:
        record, _ruleset = versions.active()
    except Exception:  # noqa: BLE001  (the home page still shows what the engine serves)
        log.exception("admin console: the active rule-set version could not be read")
        return info
    info.update(version=record.version, deployed_by=record.deployed_by, deployed_at=record.deployed_at,
                read_only_reason=versions.read_only_reason if versions.read_only else None)
    return info
