"""Runtime settings, read once from the environment (``Settings.from_env``) or passed by tests.

Nothing reads configuration at import time: ``create_app(settings)`` receives a ``Settings``.
Every variable is prefixed ``CRAMP_``; ``docs/configuration.md`` lists them all.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
MIN_SECRET_LENGTH = 16
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


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None


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
    # Trusted CDS clients (JWT issuers): path to a YAML/JSON file; see docs/security.md.
    trusted_clients_path: Path | None = None
    # The service's externally visible base URL (for the JWT `aud` check behind a proxy).
    public_base_url: str | None = None
    # Require the client JWT on discovery too (the spec says clients send it; some, like the Sandbox, don't).
    auth_discovery: bool = False
    # Redis for the JWT replay cache (jti), shared by replicas; without it the database holds it.
    redis_url: str | None = None
    # FHIR servers the service may call (URL prefixes); see docs/configuration.md.
    fhir_server_allowlist: tuple[str, ...] = ()
    fhir_allow_http_loopback: bool = False
    fhir_deadline_seconds: float = 3.0
    log_level: str = "INFO"
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        rules = env.get("CRAMP_RULES_FILE")
        clients = env.get("CRAMP_TRUSTED_CLIENTS_FILE")
        deadline_raw = env.get("CRAMP_FHIR_DEADLINE_SECONDS", "3")
        try:
            deadline = float(deadline_raw)
        except ValueError:
            raise SettingsError(
                f"CRAMP_FHIR_DEADLINE_SECONDS: expected a number, got {deadline_raw!r}"
            ) from None
        secret = env.get("CRAMP_PATIENT_KEY_SECRET") or None
        if secret is not None and len(secret) < MIN_SECRET_LENGTH:
            raise SettingsError(f"CRAMP_PATIENT_KEY_SECRET: must be at least {MIN_SECRET_LENGTH} characters")
        return cls(
            development_mode=_flag(env, "CRAMP_DEV_MODE"),
            patient_key_secret=secret,
            rules_path=Path(rules) if rules else None,
            database_url=env.get("CRAMP_DATABASE_URL", cls.database_url),
            cors_origins=_list(env, "CRAMP_CORS_ORIGINS") or ("*",),
            max_body_bytes=_int(env, "CRAMP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            trusted_clients_path=Path(clients) if clients else None,
            public_base_url=env.get("CRAMP_PUBLIC_BASE_URL") or None,
            auth_discovery=_flag(env, "CRAMP_AUTH_DISCOVERY"),
            redis_url=env.get("CRAMP_REDIS_URL") or None,
            fhir_server_allowlist=_list(env, "CRAMP_FHIR_ALLOWLIST"),
            fhir_allow_http_loopback=_flag(env, "CRAMP_FHIR_ALLOW_HTTP_LOOPBACK"),
            fhir_deadline_seconds=deadline,
            log_level=env.get("CRAMP_LOG_LEVEL", "INFO").upper(),
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

    def with_changes(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]
