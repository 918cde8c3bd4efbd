"""Application factory: wires settings, the engine, routes, CORS, limits and error handling.

Nothing is configured at import time; production calls ``create_app(Settings.from_env())``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Callable, TypedDict, cast

from flask import Flask, Request, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cds_service.auth.rejection import AuthenticationError, www_authenticate
from cds_service.auth.verifier import ClientAuthenticator, endpoint_urls
from cds_service.engine.drugs import DrugTable
from cds_service.engine.observer import StorageObserver
from cds_service.engine.pipeline import Engine
from cds_service.admin.rule_versions import (
    BUNDLED_SOURCE, DatabaseRuleSource, OpenedRules, RuleSetInvalid, RuleVersions, bundled_ruleset_text,
)
from cds_service.engine.reload import EngineSwitch, FileRuleSource, RuleSource, load_ruleset_keeping_last_valid
from cds_service.errors import PayloadTooLarge, ServiceError, operation_outcome
from cds_service.fhir.client import FhirFetcher
from cds_service.header_limits import header_over_limit
from cds_service.ruleset.loader import RuleSet, RuleSetError, load_default_ruleset
from cds_service.settings import Settings, SettingsError
from cds_service.storage.admin_store import AdminStore, AdminStoreUnavailable
from cds_service.storage.replay import FallbackReplayCache, RedisReplayCache, ReplayCache
from cds_service.storage.store import CardStore, StoreUnavailable
from cds_service.web import metrics, request_context
from cds_service.web import admin as admin_console
from cds_service.web import openapi
from cds_service.web.logs import configure_logging
from cds_service.web.as_of import AS_OF_HEADER
from cds_service.web.views import SUPPRESSED_HEADER, bp

log = logging.getLogger(__name__)

DEV_MODE_WARNING = (
    "DEVELOPMENT MODE: CDS client authentication is OFF. Anyone who can reach this port can call the "
    "service. Never use development mode with real patient data."
)
RULES_CHECK_SECONDS = 2.0  # how often (at most) a request checks whether the rules changed (file or deployed version)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
_SECURITY_HEADER_ITEMS = tuple((header.lower(), header, value) for header, value in SECURITY_HEADERS.items())


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Flask:
    settings = settings or Settings()
    # Settings required outside development mode, checked before anything is touched (SettingsError, naming them)
    settings.patient_key_secret_or_default()
    settings.required_public_base_urls()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    cast(DefaultJSONProvider, app.json).sort_keys = False  # keep CDS Hooks field order readable
    app.extensions["leg_cramp_settings"] = settings
    store = _build_store(settings, clock, metrics.metrics_of(app))  # cards shown, feedback, suppression (docs/feedback.md)
    app.extensions["leg_cramp_store"] = store
    admin_store = AdminStore.for_card_store(store, clock=clock)  # console accounts, audit, rule-set versions
    app.extensions["leg_cramp_admin_store"] = admin_store
    _set_up_rules(app, settings, store, admin_store, clock, engine)  # leg_cramp_engine, leg_cramp_rule_versions
    metrics.metrics_of(app).ruleset_serving(app.extensions["leg_cramp_engine"].ruleset.version)  # build info
    CORS(
        app,
        resources={r"^(?!/admin(?:/|$))": {}},  # every path but the admin console's (no CORS there)
        origins=list(settings.cors_origins),
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", AS_OF_HEADER],
        expose_headers=["X-Request-ID", SUPPRESSED_HEADER],
        methods=["GET", "POST", "OPTIONS"],
        max_age=86400,
    )
    app.register_blueprint(bp)
    app.register_blueprint(openapi.bp)  # GET /openapi.json, /openapi.yaml (docs/security.md)
    admin_console.init_app(app, settings)  # /admin: its own sign-in, CSRF and CSP (docs/admin-console.md)
    app.session_interface = ConsoleOnlySessions()
    # First: every request (a refused one too) gets its id and its timer before any other hook runs.
    request_context.init_app(app)
    metrics.init_app(app)
    _register_error_handlers(app)
    _register_header_limits(app)  # before authentication: an oversized header is a 431, not a 401
    _register_request_hooks(app, settings)
    if settings.development_mode:
        log.warning(DEV_MODE_WARNING)
    else:
        _register_authentication(app, settings)
    return app


class ConsoleOnlySessions(SecureCookieSessionInterface):
    """The admin console's signed-cookie session, opened on the console's paths only. Its cookie is scoped to
    them (SESSION_COOKIE_PATH), so a CDS call never carries one, and nothing outside the console reads or
    writes a session; opening it anyway built a signer for every call (~30 us)."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not admin_console.is_console_path(request.path):
            return self.make_null_session(app)
        return super().open_session(app, request)


def _build_authenticator(settings: Settings, store: CardStore) -> ClientAuthenticator:
    replay_cache = _build_replay_cache(settings, store)
    if settings.trusted_clients_path is None:
        log.warning("no trusted CDS clients configured (CRAMP_TRUSTED_CLIENTS_FILE): every CDS call will be refused")
        return ClientAuthenticator([], replay_cache)
    return ClientAuthenticator.from_settings(settings, replay_cache=replay_cache)


def _build_replay_cache(settings: Settings, store: CardStore) -> ReplayCache:
    """JWT ids already used, shared by every replica: Redis when configured, else the database; this
    process's memory while that store does not answer (replay.FallbackReplayCache)."""
    if settings.redis_url:
        return FallbackReplayCache(RedisReplayCache.from_url(settings.redis_url), "redis", observer=store.observer)
    return FallbackReplayCache(store, "database", observer=store.observer)


def _needs_authentication(settings: Settings) -> bool:
    if request.method == "OPTIONS" or not request.path.startswith("/cds-services"):
        return False  # CORS preflights carry no credentials; health checks are open
    if request.path.rstrip("/") == "/cds-services":
        return settings.auth_discovery
    return True


def _register_authentication(app: Flask, settings: Settings) -> None:
    # The JWT audience comes from configuration only: the Host and X-Forwarded-* headers are the caller's.
    public_base_urls = settings.required_public_base_urls()  # SettingsError: refuse to start without them
    authenticator = _build_authenticator(settings, app.extensions["leg_cramp_store"])
    app.extensions["leg_cramp_authenticator"] = authenticator

    @app.before_request
    def authenticate_client() -> Response | None:
        if not _needs_authentication(settings):
            return None
        audiences = endpoint_urls(public_base_urls, request.path)
        try:
            client = authenticator.authenticate(request.headers.get("Authorization"), audiences)
        except AuthenticationError as exc:
            log.warning("CDS client rejected",
                        extra={"reason": exc.reason, "category": exc.category, "path": request.path})
            metrics.metrics_of(app).auth_rejected(exc.category)
            return Response(status=401, headers={"WWW-Authenticate": www_authenticate(exc.category)})
        request.environ["leg_cramp.client"] = client.issuer
        return None


class _ClockArgument(TypedDict, total=False):
    """``clock=`` for CardStore and Engine, passed only when given (else their own default)."""

    clock: Callable[[], datetime]


def _clock_argument(clock: Callable[[], datetime] | None) -> _ClockArgument:
    return {"clock": clock} if clock else {}


def _build_store(settings: Settings, clock: Callable[[], datetime] | None, observer: StorageObserver) -> CardStore:
    secret, is_random = settings.patient_key_secret_or_default()  # SettingsError outside development mode
    if is_random:
        log.warning("CRAMP_PATIENT_KEY_SECRET is not set: development mode uses a random key for this process; "
                    "suppression is lost at restart and not shared with other processes")
    return CardStore(settings.database_url, secret, observer=observer, **_clock_argument(clock))


def _build_engine(settings: Settings, clock: Callable[[], datetime] | None, store: CardStore,
                  observer: metrics.PrometheusMetrics, ruleset: RuleSet) -> Engine:
    # observer: the engine's, and the FHIR reads' too (Observer does not cover FetchObserver)
    return Engine(ruleset, DrugTable.load_default(), fetcher=FhirFetcher(settings, observer=observer), ledger=store,
                  max_resources=settings.max_resources, observer=observer, **_clock_argument(clock))


def _set_up_rules(app: Flask, settings: Settings, store: CardStore, admin_store: AdminStore,
                  clock: Callable[[], datetime] | None, engine: Engine | None) -> None:
    """The rule set served, where it comes from, and its reload (docs/rule-versions.md). An ``engine``
    given to create_app (tests) is served as it is, without reload."""
    observer = metrics.metrics_of(app)
    if settings.rules_source == "file":
        # An invalid rules file refuses the start (RuleSetError), unless this process already holds a valid
        # version of it (a gunicorn worker forked after a HUP): see engine/reload.py.
        path = settings.rules_path
        ruleset = load_ruleset_keeping_last_valid(path) if path else load_default_ruleset()
        app.extensions["leg_cramp_engine"] = engine or _build_engine(settings, clock, store, observer, ruleset)
        app.extensions["leg_cramp_rule_versions"] = RuleVersions.file_mode(
            admin_store, path, lambda: app.extensions["leg_cramp_engine"].ruleset,
            read=(lambda: path.read_text(encoding="utf-8")) if path else bundled_ruleset_text)
        if engine is None and path:
            _register_rules_reload(app, FileRuleSource(path))
        log.info("rules: file %s, version %s%s", path or BUNDLED_SOURCE,
                 app.extensions["leg_cramp_engine"].ruleset.version,
                 " (reloaded when it changes)" if engine is None and path else "")
        return
    versions = RuleVersions(admin_store, base_dir=settings.rules_path.parent if settings.rules_path else None)
    app.extensions["leg_cramp_rule_versions"] = versions
    opened = _open_database_rules(settings, versions)
    app.extensions["leg_cramp_engine"] = engine or _build_engine(settings, clock, store, observer, opened.ruleset)
    if engine is None:
        switch = _register_rules_reload(app, DatabaseRuleSource(versions), state=opened.state)
        versions.on_change(switch.check_now)  # a deploy from this process: its next request switches
    log.info("rules: %s%s", opened.summary(), "" if engine is None else "; serving the engine given to create_app")
    unserved = opened.unserved_file_version()
    if settings.rules_path and unserved:
        log.warning("rules: %s (version %s) is not the version served (%s): deploy it from the admin console or "
                    "with `cramp-cds rules deploy %s`, or set CRAMP_RULES_SOURCE=file to serve the file",
                    settings.rules_path, unserved, opened.ruleset.version, unserved)


def _open_database_rules(settings: Settings, versions: RuleVersions) -> OpenedRules:
    """Seed or offer the configured (or bundled) rule set, then read the deployed one (RuleVersions.open).
    RuleSetError / StoreUnavailable when nothing can be served: the start is refused with the reason."""
    path = settings.rules_path
    source = str(path) if path else BUNDLED_SOURCE
    try:
        text = path.read_text(encoding="utf-8") if path else bundled_ruleset_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleSetError(source, [("(file)", f"cannot be read: {exc}")]) from None
    try:
        opened = versions.open(text, source)
    except AdminStoreUnavailable as error:
        raise StoreUnavailable(f"CRAMP_DATABASE_URL: cannot read the rule-set versions ({error})") from None
    except RuleSetInvalid as error:  # an empty database and an invalid file, or an invalid deployed version
        hint = ("" if error.what == source
                else " (deploy a valid one: cramp-cds rules deploy VERSION, or cramp-cds rules rollback)")
        raise RuleSetError(error.what + hint, [(p.field, p.message) for p in error.problems],
                           [p.line for p in error.problems]) from None
    if opened.outcome.action == "offered":
        log.info("rules: %s", opened.outcome.message)
    elif opened.outcome.action in ("conflict", "invalid"):
        log.warning("rules: %s", opened.outcome.message)
    return opened


def _register_rules_reload(app: Flask, source: RuleSource, state: object = None) -> EngineSwitch:
    """Changed rules take effect without downtime: each request takes the current engine once
    (``g.leg_cramp_engine``), and a reload swaps in a new one (reload.EngineSwitch; docs/rule-set.md,
    docs/rule-versions.md)."""
    def build(ruleset: RuleSet) -> Engine:
        old = switch.engine
        engine = Engine(ruleset, old.drugs, clock=old.clock, fetcher=old.fetcher, ledger=old.ledger,
                        max_resources=old.max_resources, observer=old.observer)
        metrics.metrics_of(app).ruleset_serving(ruleset.version)
        return engine

    switch = EngineSwitch(source, app.extensions["leg_cramp_engine"], build, check_every=RULES_CHECK_SECONDS,
                          state=state)
    app.extensions["leg_cramp_engines"] = switch

    @app.before_request
    def take_engine() -> None:
        g.leg_cramp_engine = engine = switch.current()
        app.extensions["leg_cramp_engine"] = engine  # readers outside a request see the latest

    return switch


def _error_response(status: int, body: dict) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/fhir+json"
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        log.info("request refused", extra={"status": exc.status, "reason": exc.message, "path": request.path})
        response = _error_response(exc.status, exc.to_operation_outcome())
        response.headers.update(exc.headers)  # Retry-After on a 503
        return response

    @app.errorhandler(413)
    def too_large(exc: HTTPException) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        error = PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        return _error_response(413, error.to_operation_outcome())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.code or 500, "processing")
        return _error_response(exc.code or 500, operation_outcome(exc.description or exc.name, code=code))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error", extra={"path": request.path})
        return _error_response(500, operation_outcome("Internal error; it has been logged.", code="exception"))


def _register_header_limits(app: Flask) -> None:
    """Headers over the documented limits (header_limits.py): 431 with an OperationOutcome. gunicorn's own
    limits are higher (serve/gunicorn_conf.py), so the application is the one that answers."""
    @app.before_request
    def refuse_oversized_headers() -> Response | None:
        problem = header_over_limit(request.environ)
        if problem is None:
            return None
        log.info("request refused", extra={"status": 431, "reason": problem, "path": request.path})
        return _error_response(431, operation_outcome(problem, code="too-long"))


def _register_request_hooks(app: Flask, settings: Settings) -> None:
    @app.before_request
    def warn_in_development_mode() -> None:
        if settings.development_mode and request.path.startswith("/cds-services"):
            log.warning("development mode: request served without client authentication",
                        extra={"path": request.path})

    @app.after_request
    def security_headers(response: Response) -> Response:
        # Each one unless the view set its own (the console's CSP): one pass over the response's few headers
        # (Headers.setdefault scanned them three times per header, ~3 us each on every call)
        present = {key.lower() for key, _ in response.headers}
        for lowered, header, value in _SECURITY_HEADER_ITEMS:
            if lowered not in present:
                response.headers.add(header, value)
        return response
