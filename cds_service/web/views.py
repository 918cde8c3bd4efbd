"""HTTP routes. Views parse, make one call into the engine, and return JSON; nothing else."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any, ContextManager

import orjson
from flask import abort, Blueprint, Response, current_app, g, jsonify, request

from cds_service.engine.gc_pause import cyclic_gc_held
from cds_service.errors import BadRequest, UnsupportedMediaType, operation_outcome
from cds_service.hooks.feedback import parse_feedback
from cds_service.hooks.request import declared_hook
from cds_service.web import metrics
from cds_service.web.as_of import requested_evaluation_time

bp = Blueprint("cds", __name__)

JSON_TYPES = ("application/json", "application/fhir+json")
# The card ids this call held back after an override: the CDS Hooks body has no place for them (ids only,
# nothing about the patient; empty when none). cramp-cds invoke prints them.
SUPPRESSED_HEADER = "X-Cramp-Suppressed-Cards"
LARGE_BODY_BYTES = 1024 * 1024  # about 1,300 Synthea resources: below it no full collection is due


def _engine():
    # The engine this request took at its start (reload.EngineSwitch), else the application's one.
    return g.get("leg_cramp_engine") or current_app.extensions["leg_cramp_engine"]


def read_json_body() -> Any:
    mimetype = (request.mimetype or "").lower()
    if mimetype not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (got {mimetype or 'none'})."
        )
    raw = request.get_data(cache=False)
    try:
        with _parse_hold(len(raw)):
            return orjson.loads(raw)  # a few times faster than json.loads on 100 KiB charts
    except orjson.JSONDecodeError:
        raise _json_error(raw) from None


def _parse_hold(size: int) -> ContextManager[None]:
    """A large body is parsed with the cyclic collector held off (engine/gc_pause.py): the hundreds of
    thousands of dicts it makes would otherwise trigger full collections that walk the app's whole heap
    (16 MiB, 20,000 resources: 420 -> 138 ms; 1.6 MiB: 14 -> 11 ms). A body holds no reference cycles."""
    return cyclic_gc_held() if size >= LARGE_BODY_BYTES else nullcontext()


def _json_error(raw: bytes) -> BadRequest:
    """Why ``raw`` is not a JSON body, told by the error's type: orjson's one error type carries the reason
    only in its text, so the standard parser (already failing, only on this error path) says whether it
    was the nesting (RecursionError) or the syntax."""
    try:
        json.loads(raw)
    except RecursionError:
        return BadRequest("The JSON body is nested too deeply.")
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        pass
    return BadRequest("The body is not valid JSON (JSONDecodeError).")


def _json_response(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    """Serialise with orjson (field order kept, like ``app.json.sort_keys = False``)."""
    return Response(orjson.dumps(body), status=status, mimetype=mimetype)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Ready once the rules are loaded. A database or replay store that does not answer is reported in
    ``degraded`` but keeps the answer 200: the service still answers hook calls (STATUS.md), and a database
    blip must not take every replica out of a load balancer."""
    problems = _readiness_problems()
    if problems:
        body = operation_outcome("Not ready: " + "; ".join(problems) + ".", code="transient")
        return _json_response(body, 503, "application/fhir+json")
    degraded = _degradations()
    return jsonify(status="ready", degraded=degraded) if degraded else jsonify(status="ready")


def _readiness_problems() -> list[str]:
    engine = current_app.extensions.get("leg_cramp_engine")
    if engine is None or engine.ruleset is None or not engine.discovery().get("services"):
        return ["rules: not loaded"]
    return []


def _degradations() -> list[str]:
    """What does not answer: the card store's database, the shared JWT replay store."""
    degraded = []
    engine = current_app.extensions.get("leg_cramp_engine")
    store = getattr(engine, "ledger", None) or current_app.extensions.get("leg_cramp_store")
    ping = getattr(store, "ping", None)
    if callable(ping):
        try:
            reachable = ping() is not False
        except Exception as exc:  # a driver's message may hold the database URL: report only its type
            error_type = getattr(exc, "error_type", None) or type(exc).__name__
            degraded.append(f"database: not reachable ({error_type}); cards are not recorded, "
                            "feedback is refused with 503")
        else:
            if not reachable:
                degraded.append("database: not reachable")
    authenticator = current_app.extensions.get("leg_cramp_authenticator")
    replay_degradation = getattr(getattr(authenticator, "replay_cache", None), "degradation", None)
    replay = replay_degradation() if callable(replay_degradation) else None
    if replay:
        degraded.append(replay)
    return degraded


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    text, content_type = metrics.exposition()
    return Response(text, content_type=content_type)


@bp.get("/cds-services")
def discovery() -> Response:
    return jsonify(_engine().discovery())


@bp.get("/cds-services/<service_id>")
def service_get(service_id: str) -> Response:
    """A known service answers only POST (405); an unknown id is a 404 whatever the method."""
    _engine().registry.get(service_id)
    abort(405, valid_methods=["POST", "OPTIONS"])


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    _engine().registry.get(service_id)  # 404 before reading the body
    body = read_json_body()
    g.cds_hook = declared_hook(body)  # a metrics label: a string or None, whatever JSON the client sent
    settings = current_app.extensions["leg_cramp_settings"]
    now = requested_evaluation_time(request.headers, development_mode=settings.development_mode)
    result = _engine().invoke(service_id, body, now=now)
    response = _json_response(result.response)
    response.headers[SUPPRESSED_HEADER] = ", ".join(result.suppressed)
    return response


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """CDS Hooks feedback: 200 ``{}`` only once every item is committed (docs/feedback.md)."""
    _engine().registry.get(service_id)  # 404 before reading the body
    items = parse_feedback(read_json_body())
    current_app.extensions["leg_cramp_store"].record_feedback(service_id, items)
    return jsonify({})
