"""The repository's paths, and a development-mode app on the fixed clock of ``support.hook_requests``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app
from support.hook_requests import NOW

REPO = Path(__file__).resolve().parents[2]
SHARED_DIR = REPO.parent / "shared"


def make_app(**settings: Any):
    settings.setdefault("database_url", "sqlite://")  # an in-memory card store per app (docs/feedback.md)
    return create_app(Settings(development_mode=True, **settings), clock=fixed_clock(NOW))
