"""Integration against a REAL FHIR server on 127.0.0.1 (sekmet-fhir, tests/support/fhir_server.py), loaded with the
hand-worked fixtures and the 31 shared Synthea patients through ``load-fixtures``'s code.

Each patient gets the same cards whether the prefetch comes from the client (built from the server the way
``cramp-cds invoke --prefetch`` builds it) or the service fetches everything itself (FhirFetcher, no
prefetch); the fixtures also match their hand-worked expected.yaml, and the Synthea patients also match the
prefetch built straight from their bundle. Then paging (``next`` links followed), check-server, and the CLI
against a live service.

Skipped with a clear message when sekmet-fhir can't be installed, unless CRAMP_REQUIRE_FHIR_SERVER=1.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from click.testing import CliRunner
from werkzeug.serving import make_server

from support.card_kinds import card_id, explanation, suggestion_kinds
from support.fhir_server import FhirServerUnavailable, SekmetServer, ensure_fhir_venv
from cds_service.admin.population import read_bundle_file
from cds_service.cli.hook_request import build_hook_request, build_prefetch, fetch_query
from cds_service.cli.load_fixtures import LoadReport, fixture_sources, load_sources, synthea_sources
from cds_service.cli.main import main
from cds_service.clock import fixed_clock
from cds_service.fhir.client import FhirFetcher
from cds_service.fhir.reader import FhirReader
from cds_service.hooks.request import HookRequest
from cds_service.settings import Settings
from cds_service.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fhir_fixtures"
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
SYNTHEA_NOW = "2021-03-11T12:00:00Z"
FIXTURE_NOW = "2026-06-15T12:00:00Z"
SERVICE = "leg-cramp-patient-view"
REQUIRE = os.environ.get("CRAMP_REQUIRE_FHIR_SERVER") == "1"

pytestmark = pytest.mark.fhir_server

VIEW_FIXTURES = sorted(p for p in FIXTURES.iterdir() if (p / "request.json").exists() and not p.name.startswith("order-"))
SYNTHEA_FILES = sorted(SYNTHEA.glob("*.json")) if SYNTHEA.is_dir() else []


@dataclass
class LiveFhir:
    base_url: str
    report: LoadReport
    synthea_loaded: bool


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFhir]:
    try:
        venv = ensure_fhir_venv()
        server = SekmetServer(venv, tmp_path_factory.mktemp("sekmet")).start()
    except FhirServerUnavailable as exc:
        message = f"no FHIR server for the integration tests (sekmet-fhir): {exc}"
        if REQUIRE:
            pytest.fail(message + " [CRAMP_REQUIRE_FHIR_SERVER=1]")
        pytest.skip(message + " (run tools/setup-fhir-server; CRAMP_REQUIRE_FHIR_SERVER=1 makes this a failure)")
    try:
        sources = fixture_sources(FIXTURES) + (synthea_sources(SYNTHEA) if SYNTHEA_FILES else [])
        report = load_sources(server.base_url, sources)
        assert report.failures == [], report.lines()
        yield LiveFhir(server.base_url, report, bool(SYNTHEA_FILES))
    finally:
        server.stop()


def _settings(base_url: str) -> Settings:
    # A longer deadline than the 3 s default: a loaded CI machine must not turn into "not checked".
    return Settings(development_mode=True, database_url="sqlite://", fhir_server_allowlist=(base_url,),
                    fhir_allow_http_loopback=True, fhir_deadline_seconds=20.0)


@pytest.fixture(scope="module")
def apps(fhir_server: LiveFhir) -> dict[str, Any]:
    """One in-process service per clock: Synthea's last date, and the fixtures' ``now``."""
    return {now: create_app(_settings(fhir_server.base_url), clock=fixed_clock(now)).test_client()
            for now in (SYNTHEA_NOW, FIXTURE_NOW)}


def _templates(client) -> dict[str, str]:
    services = client.get("/cds-services").get_json()["services"]
    return next(s["prefetch"] for s in services if s["id"] == SERVICE)


def summary(response: dict[str, Any]) -> list[tuple]:
    """What must be equal: stable card ids, indicators, the explanation's items (with their records) and
    score, and the detail text (which says what could not be checked)."""
    out = []
    for card in response["cards"]:
        got = explanation(card)
        items = sorted((i["item"], i["points"], tuple(i["records"])) for i in got["items"])
        out.append((card_id(card), card["indicator"], got.get("score"), items, tuple(got.get("pathways", [])),
                    tuple(suggestion_kinds(card)), card["detail"]))
    return out


def _call(client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/cds-services/{SERVICE}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def both_ways(client, base_url: str, patient_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(answer with prefetch built from the server as an EHR would, answer with no prefetch: service fetches)."""
    body = build_hook_request(hook="patient-view", patient_id=patient_id, user="Practitioner/example",
                              fhir_server=base_url, fhir_token=None)
    with_prefetch = {**body, "prefetch": build_prefetch(_templates(client), body, base_url)}
    return _call(client, with_prefetch), _call(client, body)


def test_fixtures_and_synthea_loaded_with_stable_ids(fhir_server: LiveFhir):
    written = fhir_server.report.written
    assert written["Patient"] == len(list(FIXTURES.glob("*/request.json"))) + len(SYNTHEA_FILES)
    assert fhir_server.report.mode == "transaction"
    # fixture ids are prefixed with the patient id (unique only within a file); Synthea ids are kept
    assert fetch_query_session(fhir_server, "Condition/fixture-05-c2")["id"] == "fixture-05-c2"
    if SYNTHEA_FILES:
        record = read_bundle_file(SYNTHEA_FILES[0])
        assert fetch_query_session(fhir_server, f"Patient/{record.patient_id}")["id"] == record.patient_id


def fetch_query_session(fhir_server: LiveFhir, query: str) -> dict[str, Any]:
    return fetch_query(FhirReader(fhir_server.base_url), query)


@pytest.mark.parametrize("folder", VIEW_FIXTURES, ids=[p.name[:2] for p in VIEW_FIXTURES])
def test_fixture_same_cards_with_prefetch_and_with_fetching(fhir_server: LiveFhir, apps, folder: Path):
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    assert expected["now"] == FIXTURE_NOW
    patient_id = json.loads((folder / "request.json").read_text())["context"]["patientId"]
    prefetched, fetched = both_ways(apps[FIXTURE_NOW], fhir_server.base_url, patient_id)
    assert summary(fetched) == summary(prefetched)
    # and both are the hand-worked answer
    assert [card_id(c) for c in fetched["cards"]] == [c["id"] for c in expected["cards"]]
    for card, want in zip(fetched["cards"], expected["cards"]):
        got = explanation(card)
        assert card["indicator"] == want["indicator"]
        if "score" in want:
            assert got["score"] == pytest.approx(want["score"])
        names = got["pathways"] if want["id"] in ("possible-dvt", "untreated-dvt") else [i["item"] for i in got["items"]]
        assert sorted(names) == sorted(want["items"])
        assert "could not be checked" not in card["detail"].lower()


@pytest.mark.synthea
@pytest.mark.parametrize("path", SYNTHEA_FILES, ids=[p.name.split("_")[0] + p.stem[-4:] for p in SYNTHEA_FILES])
def test_synthea_same_cards_with_prefetch_and_with_fetching(fhir_server: LiveFhir, apps, path: Path):
    record = read_bundle_file(path)
    client = apps[SYNTHEA_NOW]
    prefetched, fetched = both_ways(client, fhir_server.base_url, record.patient_id)
    assert summary(fetched) == summary(prefetched)
    # the prefetch an EHR builds from the bundle itself gives the same cards too
    from_bundle = _call(client, record.hook_request())
    assert summary(fetched) == summary(from_bundle)
    # Most Synthea patients get no card, so equal cards alone could hide a fetch that read nothing: the
    # facts the rules saw (every record read, with its provenance) must be the same both ways, and not empty.
    fetched_facts = facts_seen(client, _no_prefetch_request(fhir_server.base_url, record.patient_id))
    assert fetched_facts == facts_seen(client, record.hook_request())
    assert fetched_facts["conditions"] or fetched_facts["medications"] or fetched_facts["observations"], (
        "the service read no Condition, medication or Observation for this patient")


def _no_prefetch_request(base_url: str, patient_id: str) -> dict[str, Any]:
    return build_hook_request(hook="patient-view", patient_id=patient_id, user="Practitioner/example",
                              fhir_server=base_url, fhir_token=None)


def facts_seen(client, body: dict[str, Any]) -> dict[str, Any]:
    """What the rules were given for this request: each record read (type, id, code, date), the facts that
    hold with their records, the observation values used, and what could not be checked."""
    engine = client.application.extensions["leg_cramp_engine"]
    facts = engine.invoke(SERVICE, body).facts
    return {
        "age": facts.age_years,
        "conditions": sorted((c.provenance.resource_id, tuple(sorted(c.concepts)), c.active) for c in facts.conditions),
        # current ones only: the bundle holds stopped MedicationRequests too, which the template's
        # status=active leaves on the server and the rules would not count
        "medications": sorted((m.provenance.resource_id, tuple(sorted(m.classes)))
                              for m in facts.medications if m.counted),
        "observations": sorted((kind, v.provenance.resource_id, str(v.value)) for kind, v in facts.observations.items()),
        "facts": sorted((name, tuple(sorted(p.resource_id for p in fact.sources))) for name, fact in facts.facts.items()),
        "not_checked": sorted(facts.not_checked),
    }


def test_synthea_cards_fired_over_the_server(fhir_server: LiveFhir, apps):
    """The pinned firing of tests/unit/test_synthea.py (4 elevated-risk cards), now with the service fetching."""
    if not SYNTHEA_FILES:
        pytest.skip(f"shared Synthea data not found at {SYNTHEA}")
    fired = []
    for path in SYNTHEA_FILES:
        record = read_bundle_file(path)
        body = build_hook_request(hook="patient-view", patient_id=record.patient_id, user="Practitioner/example",
                                  fhir_server=fhir_server.base_url, fhir_token=None)
        fired += [card_id(c) for c in _call(apps[SYNTHEA_NOW], body)["cards"]]
    assert fired == ["elevated-cramp-risk"] * 4


def _most_observations(base_url: str) -> tuple[str, str, int]:
    """(patient id, the service's Observation query for it, total) for the Synthea patient with the most."""
    client = create_app(_settings(base_url), clock=fixed_clock(SYNTHEA_NOW)).test_client()
    template = _templates(client)["observations"]
    best = ("", "", -1)
    for path in SYNTHEA_FILES:
        patient_id = read_bundle_file(path).patient_id
        query = template.replace("{{context.patientId}}", patient_id)
        total = len(fetch_query_session(LiveFhir(base_url, LoadReport(), True), query)["entry"])
        if total > best[2]:
            best = (patient_id, query, total)
    return best


def test_paging_next_links_are_followed(fhir_server: LiveFhir):
    """The server pages at 20 by default: the fetcher follows its next links and gets every match."""
    import requests

    if not SYNTHEA_FILES:
        pytest.skip(f"shared Synthea data not found at {SYNTHEA}")
    patient_id, query, total = _most_observations(fhir_server.base_url)
    first_page = requests.get(f"{fhir_server.base_url}/{query}", headers={"Accept": "application/fhir+json"},
                              timeout=10).json()
    assert first_page["total"] == total > len(first_page["entry"])
    assert any(link["relation"] == "next" for link in first_page["link"])
    conditions = f"Condition?patient={patient_id}&_count=2"
    fetcher = FhirFetcher(_settings(fhir_server.base_url))
    request = HookRequest.model_validate(build_hook_request(
        hook="patient-view", patient_id=patient_id, user="Practitioner/example",
        fhir_server=fhir_server.base_url, fhir_token=None))
    outcomes = fetcher.fetch(request, {"observations": query, "conditions": conditions}, {})
    assert outcomes["observations"].complete and outcomes["observations"].reason is None
    assert len(outcomes["observations"].resources) == total
    ids = [r["id"] for r in outcomes["observations"].resources]
    assert len(set(ids)) == total
    condition_total = requests.get(f"{fhir_server.base_url}/{conditions}", timeout=10).json()["total"]
    assert condition_total > 2
    assert len(outcomes["conditions"].resources) == condition_total


def test_check_server_reports_the_needed_searches(fhir_server: LiveFhir):
    result = CliRunner().invoke(main, ["check-server", fhir_server.base_url])
    assert result.exit_code == 0, result.output
    assert "FHIR version: 4.0.1" in result.stdout
    for label in ("Patient read", "Condition search by patient", "MedicationRequest search by patient and status",
                  "MedicationStatement search by patient", "Observation search by patient and code"):
        assert f"[ok ] {label}" in result.stdout


@pytest.fixture(scope="module")
def live_service(fhir_server: LiveFhir) -> Iterator[str]:
    """The service over real HTTP (werkzeug, a free 127.0.0.1 port, in a thread), on the fixtures' clock."""
    app = create_app(_settings(fhir_server.base_url), clock=fixed_clock(FIXTURE_NOW))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.parametrize("patient", ["fixture-05", "fixture-08", "fixture-01"])
def test_cli_invoke_prefetch_and_no_prefetch_print_the_same_cards(fhir_server: LiveFhir, live_service: str,
                                                                  patient: str):
    runner = CliRunner()
    common = ["invoke", "--service-url", live_service, "--patient", patient, "--fhir-server", fhir_server.base_url]
    with_prefetch = runner.invoke(main, [*common, "--prefetch"])
    without = runner.invoke(main, [*common, "--no-prefetch"])
    assert with_prefetch.exit_code == 0, with_prefetch.output
    assert without.exit_code == 0, without.output
    assert with_prefetch.stdout == without.stdout
    raw = runner.invoke(main, [*common, "--no-prefetch", "--json"])
    assert raw.exit_code == 0
    cards = json.loads(raw.stdout)["cards"]
    assert with_prefetch.stdout.startswith(f"{len(cards)} card")
    for card in cards:
        assert card["summary"] in with_prefetch.stdout


def test_cli_invoke_unknown_patient_is_412_and_exit_1(fhir_server: LiveFhir, live_service: str):
    result = CliRunner().invoke(main, ["invoke", "--service-url", live_service, "--patient", "no-such-patient",
                                       "--fhir-server", fhir_server.base_url, "--no-prefetch"])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith(f"Error: 412 from {live_service}/cds-services/{SERVICE}: Unable to obtain"), line
    assert "patient" in line and "(request id " in line and "\n" not in line


def test_cli_invoke_order_sign_with_draft_orders(fhir_server: LiveFhir, live_service: str, tmp_path: Path):
    folder = FIXTURES / "order-02-furosemide-cramps"
    request = json.loads((folder / "request.json").read_text())
    orders = tmp_path / "orders.json"
    orders.write_text(json.dumps(request["context"]["draftOrders"]))
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    runner = CliRunner()
    for mode in ("--prefetch", "--no-prefetch"):
        result = runner.invoke(main, ["invoke", "--service-url", live_service, "--hook", "order-sign",
                                      "--patient", request["context"]["patientId"], "--fhir-server",
                                      fhir_server.base_url, "--draft-orders", str(orders), mode, "--json"])
        assert result.exit_code == 0, result.output
        assert [card_id(c) for c in json.loads(result.stdout)["cards"]] == [c["id"] for c in expected["cards"]]
