"""HTTP routes. Views parse, make one call into the engine, and return JSON; nothing else."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from .errors import BadRequest, UnsupportedMediaType

bp = Blueprint("cds", __name__)

JSON_TYPES = ("application/json", "application/fhir+json")


def _engine():
    return current_app.extensions["leg_cramp_engine"]


def read_json_body() -> Any:
    mimetype = (request.mimetype or "").lower()
    if mimetype not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (got {mimetype or 'none'})."
        )
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("The JSON body is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON ({type(exc).__name__}).") from None


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/cds-services")
def discovery() -> Response:
    return jsonify(_engine().discovery())


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    _engine().registry.get(service_id)  # 404 before reading the body
    result = _engine().invoke(service_id, read_json_body())
    return jsonify(result.response)
