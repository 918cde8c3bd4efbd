"""The service's OpenAPI 3.1 description (``cds_service/data/openapi.yaml``), served at ``GET /openapi.json``
and ``GET /openapi.yaml`` without authentication (it holds no secret and no configuration)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)

OPENAPI_RESOURCE = "data/openapi.yaml"


@lru_cache(maxsize=1)
def openapi_yaml() -> str:
    """The document as shipped in the package (YAML text)."""
    return resources.files("cds_service").joinpath(OPENAPI_RESOURCE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _openapi_json() -> bytes:
    return json.dumps(yaml.safe_load(openapi_yaml()), ensure_ascii=False).encode("utf-8")


def openapi_document() -> dict[str, Any]:
    """The document as a fresh dict (callers may change it)."""
    return json.loads(_openapi_json())


@bp.get("/openapi.json")
def openapi_json_view() -> Response:
    return Response(_openapi_json(), mimetype="application/json")


@bp.get("/openapi.yaml")
def openapi_yaml_view() -> Response:
    return Response(openapi_yaml(), mimetype="application/yaml")
