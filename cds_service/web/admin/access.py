"""Who is signed in to the admin console and what their role lets them do (docs/admin-console.md).

Roles are ordered: each includes the ones before it. The session (a signed cookie, path /admin) holds
who signed in and when they were last seen; a local account is re-read from the AdminStore on every
request, so disabling it, changing its role or its password takes effect at once (a password change ends
its other sessions). Idle sessions end after ``settings.admin_session_minutes`` on the server's clock.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, cast

from flask import Response, abort, current_app, flash, g, jsonify, redirect, request, session, url_for

from cds_service.admin.accounts import ROLES, role_at_least
from cds_service.errors import operation_outcome
from cds_service.web.admin import services

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., object])

SESSION_ADMIN = "admin"
SESSION_SEEN = "admin_seen"
CLOCK_EXTENSION = "leg_cramp_admin_clock"  # tests put a clock here (seconds, like time.time)
DEV_ADMIN = "dev-admin"
_UNSET = object()

__all__ = ["ROLES", "Admin", "current_admin", "has_role", "require_role", "sign_in", "sign_out"]


@dataclass(frozen=True)
class Admin:
    username: str
    role: str
    display_name: str | None = None
    via: str = "local"  # local | oidc | development

    @property
    def name(self) -> str:
        return self.display_name or self.username


def current_admin() -> Admin | None:
    """The admin signed in for this request, or None."""
    cached = g.get("leg_cramp_admin", _UNSET)
    if cached is _UNSET:
        cached = _admin_from_session()
        g.leg_cramp_admin = cached
    return cast("Admin | None", cached)


def has_role(role: str) -> bool:
    """Whether the signed-in admin holds ``role`` (or a higher one)."""
    admin = current_admin()
    return admin is not None and role_at_least(admin.role, role)


def require_role(role: str) -> Callable[[F], F]:
    """View decorator: not signed in -> redirect to the sign-in page (JSON requests: 401 OperationOutcome);
    signed in without ``role`` -> 403. Enforced on the server for every view, GET included."""
    if role not in ROLES:
        raise ValueError(f"unknown console role {role!r} (one of {', '.join(ROLES)})")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            admin = current_admin()
            if admin is None:
                if wants_json():
                    return json_error(401, "Sign in to the admin console first.", code="login")
                return redirect(url_for("admin.login", next=_this_path()))
            if not role_at_least(admin.role, role):
                log.info("admin console: role refused", extra={"admin": admin.username, "role": admin.role,
                                                               "needed": role, "path": request.path})
                if wants_json():
                    return json_error(403, f"This needs the {role} role (you are {admin.role}).", code="forbidden")
                g.leg_cramp_admin_needed_role = role
                abort(403)
            return view(*args, **kwargs)

        return cast(F, guarded)

    return decorate


# --- signing in and out ------------------------------------------------------------------------------------
def sign_in(admin: Admin, *, password_hash: str | None = None) -> None:
    """Start a fresh session for ``admin`` (a local account passes its hash: changing it ends the session)."""
    session.clear()
    session[SESSION_ADMIN] = {"u": admin.username, "r": admin.role, "d": admin.display_name, "via": admin.via,
                              "pw": _fingerprint(password_hash) if password_hash else None}
    session[SESSION_SEEN] = int(now())
    g.leg_cramp_admin = admin


def sign_out() -> None:
    session.clear()
    g.leg_cramp_admin = None


def enforce_idle_expiry() -> Response | None:
    """Before each console request: end a session idle for longer than the setting, else note this visit."""
    if SESSION_ADMIN not in session:
        return None
    minutes = services.settings().admin_session_minutes
    seen = session.get(SESSION_SEEN)
    current = now()
    if not isinstance(seen, int) or current - seen > minutes * 60:
        session.clear()
        g.leg_cramp_admin = None
        log.info("admin console: session ended after inactivity", extra={"minutes": minutes})
        if request.endpoint in ("admin.login", "admin.static"):
            return None
        if wants_json():
            return json_error(401, f"Your session ended after {minutes} minutes without activity. Sign in again.",
                              code="login")
        flash(f"Your session ended after {minutes} minutes without activity. Sign in again.", "info")
        # typed as werkzeug's Response; in a request, redirect builds the app's (flask's) response class
        return cast(Response, redirect(url_for("admin.login", next=_this_path() if request.method == "GET" else None)))
    if request.endpoint != "admin.static" and current - seen >= 1:
        session[SESSION_SEEN] = int(current)
    return None


def development_autologin() -> None:
    """Development mode with CRAMP_ADMIN_DEV_AUTOLOGIN: a browser without a session becomes dev-admin."""
    settings = services.settings()
    if not (settings.development_mode and settings.admin_dev_autologin) or SESSION_ADMIN in session:
        return
    if request.endpoint == "admin.static":
        return
    log.warning("DEVELOPMENT MODE: the admin console signed a browser in as %s (deployer) without a password",
                DEV_ADMIN)
    sign_in(Admin(DEV_ADMIN, "deployer", "Development admin", via="development"))


def dev_autologin_active() -> bool:
    settings = services.settings()
    return settings.development_mode and settings.admin_dev_autologin


# --- helpers for views -------------------------------------------------------------------------------------
def wants_json() -> bool:
    """A script's request (fetch with JSON), not a page load: it gets JSON errors, not redirects."""
    if request.is_json or request.headers.get("X-Requested-With") == "XMLHttpRequest":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def json_error(status: int, message: str, *, code: str = "processing") -> Response:
    response = jsonify(operation_outcome(message, code=code))
    response.status_code = status
    response.mimetype = "application/fhir+json"
    return response


def client_address() -> str:
    return request.remote_addr or "unknown"


def now() -> float:
    clock = current_app.extensions.get(CLOCK_EXTENSION, time.time)
    return float(clock())


def safe_next(target: str | None) -> str | None:
    """Only a path inside the console: never another site (``//evil``, ``https://...``, ``/\\evil``)."""
    if not target or not target.startswith("/admin") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(ch) < 32 for ch in target):
        return None
    return target


def _this_path() -> str:
    query = request.query_string.decode("utf-8", "replace")
    return request.path + (f"?{query}" if query else "")


def _fingerprint(password_hash: str) -> str:
    key = current_app.secret_key
    key_bytes = key if isinstance(key, bytes) else str(key).encode()
    return hmac.new(key_bytes, password_hash.encode(), hashlib.sha256).hexdigest()[:24]


def _admin_from_session() -> Admin | None:
    data = session.get(SESSION_ADMIN)
    if not isinstance(data, dict) or not isinstance(data.get("u"), str):
        return None
    via = data.get("via")
    if via != "local":  # oidc (the role came from the ID token) or development
        return Admin(data["u"], data.get("r") or "", data.get("d"), via=str(via))
    user = services.admin_store().get_user(data["u"])
    fingerprint = _fingerprint(user.password_hash) if user and user.password_hash else None
    if user is None or user.disabled or data.get("pw") != fingerprint:
        session.clear()  # disabled, removed or its password changed: this session is over
        return None
    return Admin(user.username, user.role, user.display_name, via="local")
