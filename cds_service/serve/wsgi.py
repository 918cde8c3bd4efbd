"""WSGI entry point for a production server: ``gunicorn -c python:cds_service.serve.gunicorn_conf cds_service.serve.wsgi:app``.

Settings come from the ``CRAMP_`` environment variables (docs/configuration.md), read once, when a worker
imports this module. The Docker image runs exactly the command above; ``cramp-cds serve`` builds the same
app without this module.
"""

from __future__ import annotations

import sys

from cds_service.auth.trusted_clients import TrustedClientsError
from cds_service.ruleset.loader import RuleSetError
from cds_service.settings import Settings, SettingsError
from cds_service.web.app import create_app
from cds_service.web.logs import flush_logs

try:
    app = create_app(Settings.from_env())
except (SettingsError, RuleSetError, TrustedClientsError) as error:
    # A readable message before gunicorn's own report; gunicorn then stops ("Worker failed to boot"). The
    # lines logged so far first: the log thread writes to the same stderr (web/logs.BackgroundHandler).
    flush_logs()
    print(f"cramp-cds: configuration error: {error}", file=sys.stderr, flush=True)
    raise
