"""Runtime settings, read once from the environment (``Settings.from_env``) or passed by tests.

Nothing reads configuration at import time: ``create_app(settings)`` receives a ``Settings``.
Every variable is prefixed ``CRAMP_``; ``docs/configuration.md`` lists them all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlsplit

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BODY_BYTES_RANGE = (1024, 1024 * 1024 * 1024)  # 1 KiB (no request is smaller) .. 1 GiB
DEFAULT_MAX_RESOURCES = 20_000
MAX_RESOURCES_RANGE = (1, 1_000_000)
DEFAULT_FHIR_DEADLINE_SECONDS = 3.0
# Above zero, and well within the 30 s that gunicorn (a sync worker's timeout; graceful_timeout at shutdown)
# and a proxy in front (deploy/nginx.conf: 35 s) give one request.
FHIR_DEADLINE_SECONDS_RANGE = (0.1, 25.0)
MIN_SECRET_LENGTH = 16
RULES_SOURCES = ("database", "file")
DEFAULT_ADMIN_SESSION_MINUTES = 30
ADMIN_SESSION_MINUTES_RANGE = (1, 24 * 60)
# Development mode without CRAMP_PATIENT_KEY_SECRET: one random secret per process (forked workers share it).
_DEVELOPMENT_PATIENT_KEY_SECRET = secrets.token_hex(32)


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}: expected true/false, got {raw!r}")


_N = TypeVar("_N", int, float)


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    """The whole number in ``env[name]`` (``default`` when unset or empty), within [minimum, maximum].

    Anything else raises ``SettingsError`` with one line naming the variable and its range.
    """
    return _env_number(env, name, default, int, minimum, maximum, f"a whole number from {minimum} to {maximum}")


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    """The number in ``env[name]`` (``default`` when unset or empty), within [minimum, maximum]; NaN and
    infinities are refused. Anything else raises ``SettingsError`` naming the variable and its range."""
    return _env_number(env, name, default, float, minimum, maximum, f"a number from {minimum:g} to {maximum:g}")


def _env_number(env: Mapping[str, str], name: str, default: _N, parse: Callable[[str], _N],
                minimum: _N, maximum: _N, expected: str) -> _N:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    # NaN fails every comparison, and an infinity is outside any finite range: both are refused here.
    if value is None or not minimum <= value <= maximum:
        raise SettingsError(f"{name}: expected {expected}, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when unset); anything else is refused naming the variable."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def _existing_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise SettingsError(f"{name}: no such file: {raw}")
    return path


def parse_base_urls(raw: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``CRAMP_PUBLIC_BASE_URL``: one or more external base URLs (comma-separated), without a trailing
    slash. Each is http(s)://host[:port][/path], with no credentials, query or fragment."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    urls = []
    for item in (entry.strip() for entry in items):
        if not item:
            continue
        try:
            parts = urlsplit(item)
            parts.port  # noqa: B018  (raises ValueError for a bad port)
        except ValueError:
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username
                or parts.password or parts.query or parts.fragment or "?" in item or "#" in item):
            raise SettingsError(
                f"CRAMP_PUBLIC_BASE_URL: {item!r} is not an http(s) base URL such as https://cds.example.org"
            )
        if parts.path.rstrip("/").endswith("/cds-services"):
            raise SettingsError(f"CRAMP_PUBLIC_BASE_URL: {item!r} ends with /cds-services; give the base URL "
                                "without it (the service adds /cds-services/<id>)")
        urls.append(item.rstrip("/"))
    return tuple(urls)


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the service can be configured with."""

    # Development mode: no client authentication, loud warnings. Never the default.
    development_mode: bool = False
    # Rule-set file; None means the rule set shipped in the package.
    rules_path: Path | None = None
    # Database URL for cards shown and feedback (SQLite file by default).
    database_url: str = "sqlite:///leg-cramp-cds.sqlite3"
    # Key of the patient hash stored with each card shown (HMAC-SHA256); every replica must share it.
    # Required outside development mode (``patient_key_secret_or_default``).
    patient_key_secret: str | None = field(default=None, repr=False)
    # Origins allowed by CORS ("*" by default: the CDS Hooks Sandbox is a browser app).
    cors_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Most resources one request's prefetch may hold (all Bundles together); more is a 413 naming the cap.
    max_resources: int = DEFAULT_MAX_RESOURCES
    # Trusted CDS clients (JWT issuers): path to a YAML/JSON file; see docs/security.md.
    trusted_clients_path: Path | None = None
    # The service's external base URLs (CRAMP_PUBLIC_BASE_URL, comma-separated): a JWT's `aud` must be one
    # of them + the path called. Required outside development mode; never taken from the request.
    # A string is split on commas (``Settings(public_base_urls="https://a, https://b")``).
    public_base_urls: tuple[str, ...] = ()
    # Require the client JWT on discovery too (the spec says clients send it; some, like the Sandbox, don't).
    auth_discovery: bool = False
    # Redis for the JWT replay cache (jti), shared by replicas; without it the database holds it.
    redis_url: str | None = None
    # FHIR servers the service may call (URL prefixes); see docs/configuration.md.
    fhir_server_allowlist: tuple[str, ...] = ()
    fhir_allow_http_loopback: bool = False
    fhir_deadline_seconds: float = DEFAULT_FHIR_DEADLINE_SECONDS
    log_level: str = "INFO"
    # Where the active rule set lives (docs/admin-console.md): "database" (versions kept in the database,
    # edited and deployed from the admin console; the rules file, or the bundled one, seeds the first) or
    # "file" (the rules file is authoritative, e.g. a Kubernetes ConfigMap; the console is read-only for rules).
    rules_source: str = "database"
    # The admin console under /admin (its own sign-in, separate from CDS-client JWTs).
    admin_console: bool = True
    # An admin session ends after this many minutes without a request.
    admin_session_minutes: int = DEFAULT_ADMIN_SESSION_MINUTES
    # Development mode signs the browser in as a deployer without a password (loudly); off with =0.
    admin_dev_autologin: bool = True
    # Optional OpenID Connect sign-in (a hospital's single sign-on) beside the local accounts.
    admin_oidc_issuer: str | None = None
    admin_oidc_client_id: str | None = None
    admin_oidc_client_secret: str | None = field(default=None, repr=False)
    # The ID-token claim that lists the admin's roles (values: viewer, editor, deployer).
    admin_oidc_roles_claim: str = "roles"
    # Server folders a console dry run may read bundles or NDJSON from, besides the bundled fixtures
    # (CRAMP_DRY_RUN_DIRS, colon- or comma-separated). None: read CRAMP_DRY_RUN_DIRS when asked (tests).
    dry_run_dirs: tuple[str, ...] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_base_urls", parse_base_urls(self.public_base_urls))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        rules = env.get("CRAMP_RULES_FILE")
        secret = env.get("CRAMP_PATIENT_KEY_SECRET") or None
        if secret is not None and len(secret) < MIN_SECRET_LENGTH:
            raise SettingsError(f"CRAMP_PATIENT_KEY_SECRET: must be at least {MIN_SECRET_LENGTH} characters")
        return cls(
            development_mode=_flag(env, "CRAMP_DEV_MODE"),
            patient_key_secret=secret,
            rules_path=Path(rules) if rules else None,
            database_url=env.get("CRAMP_DATABASE_URL", cls.database_url),
            cors_origins=_list(env, "CRAMP_CORS_ORIGINS") or ("*",),
            max_body_bytes=env_int(env, "CRAMP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES,
                                   minimum=MAX_BODY_BYTES_RANGE[0], maximum=MAX_BODY_BYTES_RANGE[1]),
            max_resources=env_int(env, "CRAMP_MAX_RESOURCES", DEFAULT_MAX_RESOURCES,
                                  minimum=MAX_RESOURCES_RANGE[0], maximum=MAX_RESOURCES_RANGE[1]),
            trusted_clients_path=_existing_file(env, "CRAMP_TRUSTED_CLIENTS_FILE"),
            public_base_urls=parse_base_urls(env.get("CRAMP_PUBLIC_BASE_URL", "")),
            auth_discovery=_flag(env, "CRAMP_AUTH_DISCOVERY"),
            redis_url=env.get("CRAMP_REDIS_URL") or None,
            fhir_server_allowlist=_list(env, "CRAMP_FHIR_ALLOWLIST"),
            fhir_allow_http_loopback=_flag(env, "CRAMP_FHIR_ALLOW_HTTP_LOOPBACK"),
            fhir_deadline_seconds=env_float(env, "CRAMP_FHIR_DEADLINE_SECONDS", DEFAULT_FHIR_DEADLINE_SECONDS,
                                            minimum=FHIR_DEADLINE_SECONDS_RANGE[0],
                                            maximum=FHIR_DEADLINE_SECONDS_RANGE[1]),
            log_level=env.get("CRAMP_LOG_LEVEL", "INFO").upper(),
            rules_source=_choice(env, "CRAMP_RULES_SOURCE", RULES_SOURCES),
            admin_console=_flag(env, "CRAMP_ADMIN_CONSOLE", True),
            admin_session_minutes=env_int(env, "CRAMP_ADMIN_SESSION_MINUTES", DEFAULT_ADMIN_SESSION_MINUTES,
                                          minimum=ADMIN_SESSION_MINUTES_RANGE[0],
                                          maximum=ADMIN_SESSION_MINUTES_RANGE[1]),
            admin_dev_autologin=_flag(env, "CRAMP_ADMIN_DEV_AUTOLOGIN", True),
            admin_oidc_issuer=(env.get("CRAMP_ADMIN_OIDC_ISSUER") or "").strip() or None,
            admin_oidc_client_id=(env.get("CRAMP_ADMIN_OIDC_CLIENT_ID") or "").strip() or None,
            admin_oidc_client_secret=env.get("CRAMP_ADMIN_OIDC_CLIENT_SECRET") or None,
            admin_oidc_roles_claim=(env.get("CRAMP_ADMIN_OIDC_ROLES_CLAIM") or "roles").strip(),
            dry_run_dirs=tuple(item.strip() for part in env.get("CRAMP_DRY_RUN_DIRS", "").split(",")
                               for item in part.split(":") if item.strip()),
        )

    def patient_key_secret_or_default(self) -> tuple[str, bool]:
        """(secret, is_random): the configured secret; in development mode without one, a random secret for
        this process (suppression then does not survive a restart). SettingsError outside development mode."""
        if self.patient_key_secret:
            return self.patient_key_secret, False
        if self.development_mode:
            return _DEVELOPMENT_PATIENT_KEY_SECRET, True
        raise SettingsError(
            "CRAMP_PATIENT_KEY_SECRET: required outside development mode (a long random string that every "
            "replica shares, e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )

    def admin_session_key(self) -> bytes:
        """The key that signs admin-console session cookies: derived from the patient-key secret (every
        replica shares it, so a session survives a hop to another replica), never equal to it."""
        secret, _ = self.patient_key_secret_or_default()
        return hmac.new(secret.encode(), b"leg-cramp-cds admin session v1", hashlib.sha256).digest()

    def oidc_configured(self) -> bool:
        return bool(self.admin_oidc_issuer and self.admin_oidc_client_id)

    def required_public_base_urls(self) -> tuple[str, ...]:
        """The external base URLs the JWT audience is checked against; SettingsError when none is configured
        outside development mode (the audience must never come from the request's Host or X-Forwarded-*)."""
        if not self.public_base_urls and not self.development_mode:
            raise SettingsError(
                "CRAMP_PUBLIC_BASE_URL: required outside development mode (the external base URL EHRs call, "
                "e.g. https://cds.example.org; several comma-separated)"
            )
        return self.public_base_urls

    def with_changes(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]
