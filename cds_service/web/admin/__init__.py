"""The admin console under /admin: sign-in, rules, try it, dry runs, watch (docs/admin-console.md).

Views only; the logic is in ``cds_service.admin`` (dry run, reports, rule versions). SKELETON: the
sign-in work fills ``init_app`` (sessions, CSRF, CSP) and imports the view modules.
"""

from __future__ import annotations

from flask import Flask

from cds_service.settings import Settings


def init_app(app: Flask, settings: Settings) -> None:
    """Register the console on ``app`` (nothing when ``settings.admin_console`` is off)."""
    if not settings.admin_console:
        return
