"""The admin console's Flask blueprint: every /admin view module registers its routes on ``admin_bp``."""

from __future__ import annotations

from flask import Blueprint

admin_bp = Blueprint(
    "admin", __name__, url_prefix="/admin",
    template_folder="templates", static_folder="static", static_url_path="/static",
)
