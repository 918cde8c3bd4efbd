"""WSGI entry point for a production server: ``gunicorn -c python:cds_service.gunicorn_conf cds_service.wsgi:app``.

Settings come from the ``CRAMP_`` environment variables (docs/configuration.md), read once, when a worker
imports this module. The Docker image runs exactly the command above; ``cramp-cds serve`` builds the same
app without this module.
"""

from __future__ import annotations

import sys

from cds_service.app import create_app
from cds_service.auth import TrustedClientsError
from cds_service.ruleset import RuleSetError
from cds_service.settings import Settings, SettingsError

try:
    app = create_app(Settings.from_env())
except (SettingsError, RuleSetError, TrustedClientsError) as error:
    # A readable message before gunicorn's own report; gunicorn then stops ("Worker failed to boot").
    print(f"cramp-cds: configuration error: {error}", file=sys.stderr, flush=True)
    raise
