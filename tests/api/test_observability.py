"""Operations endpoints and telemetry: /readyz, /metrics, the request id, JSON logs without PHI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from support.app import make_app
from support.hook_requests import PATIENT_ID, PATIENT_NAME, SERVICE_URL, minimal_request

from cds_service.web.logs import JsonFormatter
from cds_service.web.metrics import _resource_label, metrics_of
from cds_service.web.request_context import request_id_from


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in sample for key, val in labels.items()):
            return float(value)
    return 0.0


def test_readyz_is_ready_with_rules_and_no_store(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


class _Store:
    def __init__(self, fails: bool) -> None:
        self.fails = fails

    def patient_key(self, patient_id: str) -> str:
        return "k"

    def overridden_rules(self, *args) -> set[str]:
        return set()

    def record_shown(self, cards) -> None:
        pass

    def ping(self) -> bool:
        if self.fails:
            raise ConnectionError("could not connect to postgresql://user:secret@db/cramp")
        return True


@pytest.mark.parametrize("fails", [False, True])
def test_readyz_pings_the_card_store(fails):
    # STATUS.md rev: a database that does not answer keeps /readyz at 200 and is reported in its body.
    app = make_app()
    app.extensions["leg_cramp_engine"].ledger = _Store(fails)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    if not fails:
        assert response.get_json() == {"status": "ready"}
        return
    body = response.get_json()
    assert body["status"] == "ready"
    [degraded] = body["degraded"]
    assert degraded.startswith("database: not reachable (ConnectionError)")
    assert "secret" not in response.get_data(as_text=True)


def test_readyz_not_ready_without_rules(app):
    app.extensions["leg_cramp_engine"].ruleset = None
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "rules" in response.get_json()["issue"][0]["diagnostics"]


def test_request_id_is_echoed_when_sane_and_generated_otherwise(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123.x_y:z"}).headers["X-Request-ID"] == "abc-123.x_y:z"
    for bad in ["", "a b", "x" * 129, "id\u00e9", "<script>"]:
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert echoed != bad and len(echoed) == 32
    assert request_id_from(None) != request_id_from(None)


def test_metrics_count_calls_cards_and_prefetch_without_patient_data(client):
    before = client.get("/metrics").get_data(as_text=True)
    response = client.post(SERVICE_URL, json=minimal_request())
    assert response.status_code == 200
    client.post(SERVICE_URL, json={"hook": "patient-view"})  # 400
    client.post("/cds-services/no-such-service-" + PATIENT_ID, json={})  # 404: never a label
    scrape = client.get("/metrics")
    assert scrape.status_code == 200 and scrape.mimetype == "text/plain"
    after = scrape.get_data(as_text=True)
    labels = {"service": "leg-cramp-patient-view", "hook": "patient-view", "status": "200"}
    assert _metric(after, "cramp_requests_total", **labels) == _metric(before, "cramp_requests_total", **labels) + 1
    assert _metric(after, "cramp_requests_total", service="leg-cramp-patient-view", status="400") >= 1
    assert _metric(after, "cramp_requests_total", service="unknown", status="404") >= 1
    assert _metric(after, "cramp_request_duration_seconds_count", service="leg-cramp-patient-view") >= 2
    assert _metric(after, "cramp_prefetch_keys_total", key="patient", outcome="sent") >= 1
    assert _metric(after, "cramp_prefetch_keys_total", key="medicationRequests", outcome="not_checked") >= 1
    assert 'le="0.001"' in after and 'le="0.5"' in after
    assert PATIENT_ID not in after and "d1577c69" not in after  # no patient id, no hookInstance


def test_cards_metric_by_rule_and_indicator():
    from support.chart_builder import NOW, condition, hook_request

    from cds_service.clock import fixed_clock
    from cds_service.settings import Settings
    from cds_service.web.app import create_app

    client = create_app(Settings(development_mode=True), clock=fixed_clock(NOW)).test_client()
    before = client.get("/metrics").get_data(as_text=True)
    # Two red-flag signs in the recent window: the possible-dvt card (critical).
    body = hook_request([condition("M79.661", age=3), condition("R60.0", age=2), condition("L03.115", age=1)],
                        birth_date="1950-01-01")
    response = client.post(SERVICE_URL, json=body)
    assert response.status_code == 200
    shown = {(c["indicator"]) for c in response.get_json()["cards"]}
    after = client.get("/metrics").get_data(as_text=True)
    assert shown
    for indicator in shown:
        grew = _metric(after, "cramp_cards_total", indicator=indicator) - _metric(before, "cramp_cards_total", indicator=indicator)
        assert grew >= 1
    assert "Indicator." not in after  # plain label values


def test_each_app_counts_only_its_own_calls():
    """Metrics belong to one app (its own registry): an engine or another app in the same process never
    moves this app's counts (test_cards_metric_by_rule_and_indicator once failed after test_rules.py)."""
    from support.chart_builder import NOW, condition, hook_request

    from cds_service.clock import fixed_clock
    from cds_service.engine.pipeline import Engine

    body = hook_request([condition("M79.661", age=3), condition("R60.0", age=2), condition("L03.115", age=1)],
                        birth_date="1950-01-01")
    watched, other = make_app().test_client(), make_app().test_client()
    before = watched.get("/metrics").get_data(as_text=True)
    assert other.post(SERVICE_URL, json=body).status_code == 200
    Engine.default(clock=fixed_clock(NOW)).invoke("leg-cramp-patient-view", body)  # the CLI's way: no observer
    after = watched.get("/metrics").get_data(as_text=True)
    assert _metric(before, "cramp_cards_total", indicator="critical") == 0
    assert _metric(after, "cramp_cards_total", indicator="critical") == 0
    assert _metric(other.get("/metrics").get_data(as_text=True), "cramp_cards_total", indicator="critical") == 1


def test_fetch_metrics_take_the_resource_type_only(client):
    observe_fetch = metrics_of(client.application).fhir_read_finished  # the app's FHIR client reports here
    observe_fetch("Observation?patient=p-zq-1&code=1", 0.02)
    observe_fetch("Condition?patient=p-zq-1", 3.0, error="timeout")
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, "cramp_fhir_fetch_errors_total", resource="Condition", reason="timeout") >= 1
    assert _metric(text, "cramp_fhir_fetch_duration_seconds_count", resource="Observation", outcome="ok") >= 1
    assert "p-zq-1" not in text
    assert _resource_label("Patient/123") == "Patient"
    assert _resource_label("../../etc") == "other"


def test_hook_answered_log_line_is_json_with_request_id_and_no_phi(client, caplog):
    caplog.set_level(logging.INFO, logger="cds_service.engine.pipeline")
    response = client.post(SERVICE_URL, json=minimal_request(), headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    records = [r for r in caplog.records if r.getMessage() == "hook answered"]
    assert records
    # Format inside the request context: the formatter reads the id of the request being served.
    from cds_service.web import request_context

    token = request_context._current.set("req-42")
    try:
        line = JsonFormatter().format(records[-1])
    finally:
        request_context._current.reset(token)
    entry = json.loads(line)
    assert entry["request_id"] == "req-42"
    assert entry["hook_instance"] == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert entry["service"] == "leg-cramp-patient-view"
    for secret in (PATIENT_ID, *PATIENT_NAME):
        assert secret not in line


def test_request_id_reaches_log_lines_written_during_the_request(client, capfd):
    logging.getLogger("cds_service.test").propagate = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cds_service.engine.pipeline")
    logger.addHandler(handler)
    try:
        client.post(SERVICE_URL, json=minimal_request(), headers={"X-Request-ID": "trace-7"})
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(l) for l in capfd.readouterr().err.splitlines() if l.startswith("{")]
    answered = [l for l in lines if l.get("message") == "hook answered"]
    assert answered and answered[-1]["request_id"] == "trace-7"


def test_building_the_app_does_not_import_prometheus_client():
    """The workers must be first to import it, after gunicorn has set PROMETHEUS_MULTIPROC_DIR."""
    code = (
        "import sys; from cds_service.web.app import create_app; from cds_service.settings import Settings;"
        "create_app(Settings(development_mode=True)); print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
