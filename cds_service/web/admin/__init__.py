"""The admin console under /admin: sign-in, rules, try it, dry runs, watch (docs/admin-console.md).

Views only; the logic is in ``cds_service.admin`` (accounts, dry run, reports, rule versions). ``init_app``
gives the console what the CDS API does not have: a session cookie (path /admin, HttpOnly, SameSite=Lax,
Secure outside development mode, idle expiry checked on the server), CSRF protection (Flask-WTF, on
/admin only: the CDS API and /openapi are called by machines with JWTs, not by browsers with cookies),
and its own content-security policy allowing its own assets and nothing else.
"""

from __future__ import annotations

import logging
from typing import cast

from flask import Flask, Response, current_app, g, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from cds_service.settings import Settings
from cds_service.storage.admin_store import AdminStoreUnavailable
from cds_service.web.admin import access
from cds_service.web.admin.blueprint import admin_bp

log = logging.getLogger(__name__)

PREFIX = "/admin"
ADMIN_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
ADMIN_HEADERS = {
    "Content-Security-Policy": ADMIN_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not the API's no-referrer: Flask-WTF checks that an https POST's Referer is this host.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
SESSION_COOKIE = "cramp_admin_session"
DEV_AUTOLOGIN_WARNING = (
    "DEVELOPMENT MODE: the admin console signs every browser in as 'dev-admin' (deployer) WITHOUT A PASSWORD. "
    "Anyone who can reach this port can change and deploy the rules. Turn it off with CRAMP_ADMIN_DEV_AUTOLOGIN=0."
)
ERROR_TITLES = {400: "Bad request", 401: "Sign-in needed", 403: "Not allowed", 404: "Not found",
                405: "Method not allowed", 413: "Too large", 500: "Something went wrong",
                503: "Database unavailable"}

_csrf = CSRFProtect()


def init_app(app: Flask, settings: Settings) -> None:
    """Register the console on ``app`` (nothing when ``settings.admin_console`` is off)."""
    if not settings.admin_console:
        return
    _configure_session(app, settings)
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # checked for admin_bp only (below), not app-wide
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # a token lives as long as its session (idle expiry ends it)
    _csrf.init_app(app)
    _import_view_modules()
    app.register_blueprint(admin_bp)
    app.register_error_handler(NotFound, _unmatched_path)
    app.register_error_handler(MethodNotAllowed, _unmatched_path)
    app.after_request(_admin_headers)
    if settings.development_mode and settings.admin_dev_autologin:
        log.warning(DEV_AUTOLOGIN_WARNING)


def _configure_session(app: Flask, settings: Settings) -> None:
    app.secret_key = settings.admin_session_key()
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_PATH=PREFIX,  # never sent to the CDS API
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not settings.development_mode,
        SESSION_REFRESH_EACH_REQUEST=False,
    )


def _import_view_modules() -> None:
    """Importing a view module registers its routes on admin_bp (once per process: modules are cached, and
    admin_bp takes no new routes after its first registration on an app)."""
    from cds_service.web.admin import (  # noqa: F401
        auth_views, dry_run_views, rules_views, try_views, watch_views,
    )


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


# --- on admin_bp: order matters (an expired session redirects to sign-in before CSRF is checked) ----------
@admin_bp.before_request
def _session_guard() -> Response | None:
    expired = access.enforce_idle_expiry()
    if expired is not None:
        return expired
    access.development_autologin()
    return None


@admin_bp.before_request
def _protect_against_csrf() -> None:
    if request.method in current_app.config["WTF_CSRF_METHODS"]:
        _csrf.protect()  # CSRFError (400) when the token is missing or wrong


@admin_bp.context_processor
def _page_context() -> dict[str, object]:
    return page_context()


def page_context() -> dict[str, object]:
    """What base.html needs: the admin, the navigation, the development banner."""
    admin = access.current_admin()
    nav = [("Rules", "/rules"), ("Try it", "/try"), ("Dry runs", "/dry-runs"), ("Watch", "/watch"),
           ("Audit", "/audit")]
    if admin is not None and access.has_role("deployer"):
        nav.append(("Users", "/users"))
    root = request.script_root + PREFIX
    items = [{"label": label, "href": root + path, "current": request.path.startswith(PREFIX + path)}
             for label, path in nav]
    return {"admin": admin, "admin_nav": items, "dev_autologin": access.dev_autologin_active(),
            "console_root": root + "/"}


@admin_bp.errorhandler(CSRFError)
def _csrf_error(error: CSRFError) -> Response:
    log.info("admin console: CSRF check failed", extra={"reason": error.description, "path": request.path})
    message = ("The form could not be accepted: it was not sent from this console's page, or the page is too "
               "old. Go back, reload the page and try again.")
    return error_page(400, message)


@admin_bp.errorhandler(AdminStoreUnavailable)
def _store_unavailable(error: AdminStoreUnavailable) -> Response:
    """Any console page or form while the database does not answer (signing in included): 503, not 500."""
    log.error("admin console: database unavailable", extra={"path": request.path, "error": str(error)})
    return error_page(503, "The database did not answer; nothing was changed. Try again in a moment.")


@admin_bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    return error_page(error.code or 500, error.description or error.name)


@admin_bp.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    log.exception("admin console: unexpected error", extra={"path": request.path})
    return error_page(500, "An internal error occurred; it has been logged.")


def error_page(status: int, message: str) -> Response:
    """An HTML error page (a script's request gets an OperationOutcome instead)."""
    if access.wants_json():
        return access.json_error(status, message, code={403: "forbidden", 404: "not-found"}.get(status, "processing"))
    if status == 403:
        needed = g.get("leg_cramp_admin_needed_role")
        admin = access.current_admin()
        message = (f"Your role ({admin.role}) does not allow this page or action: it needs the {needed} role."
                   if needed and admin else message)
    elif status == 404:
        message = "There is no such page in the admin console."
    body = render_template("admin/error.html", status=status, title=ERROR_TITLES.get(status, "Error"),
                           message=message, **page_context())
    return Response(body, status=status, mimetype="text/html")


# --- on the app (paths that match no console route; headers of every /admin response) -------------------
def _unmatched_path(error: HTTPException) -> ResponseReturnValue:
    """/admin/<no such page>: the console's own HTML page. Elsewhere the API's handler (web/app.py, found at
    call time because it is registered after this one) answers as before, with an OperationOutcome."""
    if is_console_path(request.path):
        return error_page(error.code or 404, error.description or "")
    api_handler = current_app.error_handler_spec.get(None, {}).get(None, {}).get(HTTPException)
    # the API's handler is synchronous (web/app.py): its value is a response, never an awaitable
    return cast(ResponseReturnValue, api_handler(error)) if api_handler else error


def _admin_headers(response: Response) -> Response:
    if not is_console_path(request.path):
        return response
    for header, value in ADMIN_HEADERS.items():
        response.headers[header] = value
    response.headers.pop("Access-Control-Allow-Origin", None)  # no CORS on the console (see web/app.py)
    if not request.path.startswith(PREFIX + "/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response
