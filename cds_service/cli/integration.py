"""The commands for integration engineers (docs/integration.md), one module each:

    cramp-cds invoke          cli/invoke.py        a hook call built the way an EHR would; the cards printed
    cramp-cds render-cards    cli/invoke.py        a saved response as the HTML page a CDS client shows
    cramp-cds check-server    cli/check_server.py  does a FHIR server declare the searches the service needs
    cramp-cds load-fixtures   cli/load_fixtures.py fixtures and Synthea Bundles into a FHIR server

Around them: the request they send (cli/hook_request.py), the cards as text (cli/card_format.py), their
one-line failures (cli/failure.py), and the HTTP clients they use (fhir/reader.py, fhir/hooks_client.py).
"""

from __future__ import annotations

from cds_service.cli.check_server import check_server
from cds_service.cli.invoke import invoke, render_cards
from cds_service.cli.load_fixtures import load_fixtures

COMMANDS = (invoke, render_cards, check_server, load_fixtures)
