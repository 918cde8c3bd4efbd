"""``cramp-cds invoke --as-of`` and the suppressed-cards line, against a live service over HTTP (a werkzeug
server in this process, as in test_integration_cli.py). The as-of services run on the real clock: the fixtures
are written for 2026-06-15."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from click.testing import CliRunner
from support.feedback import SECRET, overridden
from support.live_service import ISSUER, KID, serve_app

from cds_service.cli.main import main
from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
DVT_REQUEST = ROOT / "fhir_fixtures" / "08-possible-dvt-two-signs-right" / "request.json"
CRAMPS_REQUEST = ROOT / "fhir_fixtures" / "04-cramps-text-only-lasix" / "request.json"
FIXTURE_NOW = yaml.safe_load((DVT_REQUEST.parent / "expected.yaml").read_text())["now"]


@pytest.fixture
def dev_service_real_clock() -> Iterator[str]:
    url, stop = serve_app(create_app(Settings(development_mode=True, database_url="sqlite://")))
    yield url
    stop()


def _invoke(url: str, *args: str):
    return CliRunner().invoke(main, ["invoke", "--service-url", url, *args])


def test_invoke_as_of_gives_fixture_08_its_critical_card(dev_service_real_clock: str) -> None:
    assert FIXTURE_NOW.startswith("2026-06-15")
    result = _invoke(dev_service_real_clock, "--from-file", str(DVT_REQUEST), "--as-of", "2026-06-15")
    assert result.exit_code == 0, result.output
    assert re.search(r"^\[1\] CRITICAL: .*\n    source: .*\(card possible-dvt\)", result.stdout, re.M), result.stdout
    today = _invoke(dev_service_real_clock, "--from-file", str(DVT_REQUEST))  # the real clock: not critical
    assert today.exit_code == 0, today.output
    assert "CRITICAL" not in today.stdout and "(card possible-dvt)" not in today.stdout


def test_invoke_bad_as_of_is_one_line_naming_the_header(dev_service_real_clock: str) -> None:
    result = _invoke(dev_service_real_clock, "--from-file", str(DVT_REQUEST), "--as-of", "15 June")
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: 400 from \S+: The X-Cramp-As-Of header must be an RFC 3339 date .*"
                        r"\(request id \S+\)\n", result.stderr), result.stderr


def test_invoke_as_of_against_an_authenticating_service_is_refused(ec_key, tmp_path: Path) -> None:
    key_path, jwk = ec_key
    clients = tmp_path / "clients.yaml"
    clients.write_text(yaml.safe_dump({"clients": [{"issuer": ISSUER, "jwks": {"keys": [jwk]}}]}))
    apps: list = []
    url, stop = serve_app(lambda environ, start_response: apps[0](environ, start_response))
    try:
        apps.append(create_app(Settings(database_url="sqlite://", trusted_clients_path=clients,
                                        patient_key_secret=SECRET, public_base_urls=url)))
        result = _invoke(url, "--from-file", str(DVT_REQUEST), "--as-of", "2026-06-15",
                         "--jwt-key", str(key_path), "--jwt-kid", KID, "--jwt-iss", ISSUER)
    finally:
        stop()
    assert result.exit_code == 1
    assert "400 from" in result.stderr and "X-Cramp-As-Of header is honoured only in development mode" in result.stderr


def test_invoke_prints_the_cards_suppressed_after_an_override() -> None:
    app = create_app(Settings(development_mode=True, database_url="sqlite://", patient_key_secret=SECRET),
                     clock=fixed_clock(FIXTURE_NOW))
    url, stop = serve_app(app)
    try:
        first = _invoke(url, "--from-file", str(CRAMPS_REQUEST), "--json")
        assert first.exit_code == 0, first.output
        [card] = json.loads(first.stdout)["cards"]
        assert card["source"]["topic"]["code"] == "conservative-care"
        feedback = app.test_client().post("/cds-services/leg-cramp-patient-view/feedback",
                                          json={"feedback": [overridden(card["uuid"])]})
        assert feedback.status_code == 200
        again = _invoke(url, "--from-file", str(CRAMPS_REQUEST))
    finally:
        stop()
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0].startswith("0 cards; suppressed after an override: conservative-care")
