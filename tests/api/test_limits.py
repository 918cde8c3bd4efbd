"""Limits on what one request may cost or carry (issue 11 items 5 and 6; STATUS.md rev).

* more FHIR resources than ``CRAMP_MAX_RESOURCES`` (default 20,000) -> 413 naming the cap, before any
  resource is validated;
* skipped records -> one log line per request with counts by resource type and reason, never one per record;
  the count reaches the cards' facts;
* every identifier the service stores or logs is bounded (``hookInstance`` 128 characters, each context
  identifier or reference 256, feedback codes 256 and comments 4,096) -> 400 naming the field;
* a bad ``X-Request-ID`` (too long, characters outside ``A-Za-z0-9._:-``) is replaced by a generated one.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from cds_service.engine import chart
from cds_service.settings import DEFAULT_MAX_RESOURCES, Settings, SettingsError
from cds_service.web.logs import JsonFormatter

from support.app import make_app
from support.hook_requests import PATIENT_ID, SERVICE_URL, minimal_request, patient_resource, searchset

SELECT_URL = "/cds-services/leg-cramp-order-select"
SIGN_URL = "/cds-services/leg-cramp-order-sign"


def minimal_observations(count: int, start: int = 0) -> list[dict]:
    """The attack of issue 11 item 5: Observations with nothing but a resourceType (and an id)."""
    return [{"resourceType": "Observation", "id": f"o{i}"} for i in range(start, start + count)]


def _body_with(observations: list[dict]) -> dict:
    return minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(),
                                     "observations": searchset(*observations)})


class Records(logging.Handler):
    """Log records written while it is attached to the root logger (after the app configured logging)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)


@pytest.fixture
def validations(monkeypatch):
    """How many resources chart validation saw (fhir.resources), through the real validator."""
    seen: list[str] = []
    real = chart._MODEL_CLASSES.copy()

    class Counting:
        def __init__(self, name):
            self.name = name

        def model_validate(self, raw):
            seen.append(self.name)
            return real[self.name].model_validate(raw)

    monkeypatch.setattr(chart, "_MODEL_CLASSES", {name: Counting(name) for name in real})
    return seen


# ------------------------------------------------------------------------- the resource cap (413)

def test_resource_cap_default_and_setting():
    assert Settings().max_resources == DEFAULT_MAX_RESOURCES == 20_000
    assert Settings.from_env({"CRAMP_MAX_RESOURCES": "50"}).max_resources == 50
    with pytest.raises(SettingsError, match="CRAMP_MAX_RESOURCES"):
        Settings.from_env({"CRAMP_MAX_RESOURCES": "-5"})


def test_more_resources_than_the_cap_is_413_naming_it_before_any_validation(validations, no_network):
    client = make_app(max_resources=100).test_client()
    response = client.post(SERVICE_URL, json=_body_with(minimal_observations(100)))  # + Patient = 101
    assert response.status_code == 413, response.get_data(as_text=True)
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "CRAMP_MAX_RESOURCES" in outcome["issue"][0]["diagnostics"]
    assert "100" in outcome["issue"][0]["diagnostics"]
    assert validations == []  # refused on a count: not one resource was validated
    assert client.post(SERVICE_URL, json=_body_with(minimal_observations(99))).status_code == 200


def test_draft_orders_count_towards_the_cap(no_network):
    client = make_app(max_resources=10).test_client()
    entries = [{"resource": {"resourceType": "MedicationRequest", "id": f"m{i}", "status": "draft",
                             "intent": "order", "subject": {"reference": f"Patient/{PATIENT_ID}"},
                             "medicationCodeableConcept": {"text": "x"}}} for i in range(9)]
    body = minimal_request(hook="order-sign", context={
        "userId": "Practitioner/example", "patientId": PATIENT_ID,
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": entries}})
    assert client.post(SIGN_URL, json=body).status_code == 200  # 1 Patient + 9 drafts = 10
    body["context"]["draftOrders"]["entry"].append(entries[0])
    response = client.post(SIGN_URL, json=body)
    assert response.status_code == 413 and "CRAMP_MAX_RESOURCES" in response.get_data(as_text=True)


def test_the_default_cap_refuses_the_200000_observation_bundle(validations, no_network):
    """The body of the report (200,000 minimal Observations, ~9 MB) is inside the body limit; the cap stops it."""
    client = make_app().test_client()
    raw = json.dumps(_body_with(minimal_observations(200_000))).encode()
    assert len(raw) < Settings().max_body_bytes
    response = client.post(SERVICE_URL, data=raw, content_type="application/json")
    assert response.status_code == 413
    assert "20,000" in response.get_json()["issue"][0]["diagnostics"]
    assert validations == []


# ------------------------------------------------------------------------- skipped records: one line, counted

def test_skipped_records_are_one_log_line_with_counts_by_type_and_reason(no_network):
    client = make_app().test_client()
    observations = minimal_observations(500)
    observations += [{"resourceType": "Observation", "id": "other", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
                      "subject": {"reference": "Patient/someone-else"}}]
    conditions = [{"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": f"Patient/{PATIENT_ID}"},
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "449918009"}]},
                   "onsetDateTime": "not a date"} for i in range(3)]
    body = minimal_request(prefetch={"patient": patient_resource(), "conditions": searchset(*conditions),
                                     "observations": searchset(*observations)})
    with Records() as log:
        response = client.post(SERVICE_URL, json=body)
    assert response.status_code == 200
    warnings = [r for r in log.records if r.levelno >= logging.WARNING and "skipped" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0]
    assert line.skipped_records == 504
    assert line.skipped_by_type_and_reason == {
        "Observation": {"invalid FHIR R4 (code: missing)": 500, "refers to another patient": 1},
        "Condition": {"invalid FHIR R4 (onsetDateTime: value_error)": 3},
    }
    answered = [r for r in log.records if r.getMessage() == "hook answered"]
    assert answered[-1].skipped_records == 504  # the count the cards' facts carry (facts.skipped)
    assert "o1" not in line.getMessage() and "o1" not in json.dumps(line.skipped_by_type_and_reason)


def test_skipped_records_reach_the_facts_the_cards_use(no_network):
    app = make_app()
    engine = app.extensions["leg_cramp_engine"]
    result = engine.invoke("leg-cramp-patient-view", _body_with(minimal_observations(7)))
    assert len(result.facts.skipped) == 7
    assert {s.reason for s in result.facts.skipped} == {"invalid FHIR R4 (code: missing)"}


def test_an_odd_resource_id_is_never_repeated(no_network):
    """A record's id goes into skipped records (cards, logs) only when it is a FHIR id (64 characters)."""
    app = make_app()
    huge = "x" * 100_000
    result = app.extensions["leg_cramp_engine"].invoke(
        "leg-cramp-patient-view", _body_with([{"resourceType": "Observation", "id": huge},
                                              {"resourceType": "Observation", "id": "<script>"}]))
    assert [s.resource_id for s in result.facts.skipped] == ["?", "?"]


# ------------------------------------------------------------------------- bounded identifiers (400)

def _context(**fields):
    return {"userId": "Practitioner/example", "patientId": PATIENT_ID, **fields}


BOUNDS = [
    ("hookInstance", 128, lambda v: minimal_request(hookInstance=v)),
    ("context.userId", 256, lambda v: minimal_request(context=_context(userId=v))),
    ("context.patientId", 256, lambda v: minimal_request(context=_context(patientId=v))),
    ("context.encounterId", 256, lambda v: minimal_request(context=_context(encounterId=v))),
    ("fhirServer", 2048, lambda v: minimal_request(fhirServer=v)),
]


@pytest.mark.parametrize("field, limit, make", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_identifier_over_its_bound_is_400_naming_it(field, limit, make, client, no_network):
    response = client.post(SERVICE_URL, json=make("a" * (limit + 1)))
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == [field] and str(limit) in issue["diagnostics"]
    assert "aaaa" not in response.get_data(as_text=True)  # the value is never echoed


@pytest.mark.parametrize("field, limit, make", BOUNDS[:2], ids=[b[0] for b in BOUNDS[:2]])
def test_identifier_at_its_bound_is_accepted(field, limit, make, client, no_network):
    assert client.post(SERVICE_URL, json=make("a" * limit)).status_code == 200


def test_a_15_mb_hook_instance_is_refused_not_stored_or_logged(no_network):
    app = make_app()
    huge = "h" * (15 * 2**20)
    with Records() as log:
        response = app.test_client().post(SERVICE_URL, json=minimal_request(hookInstance=huge))
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["hookInstance"]
    assert max(len(r.getMessage()) + len(json.dumps(vars(r), default=str)) for r in log.records) < 10_000
    store = app.extensions["leg_cramp_store"]
    with store.engine.connect() as connection:
        from sqlalchemy import text
        assert connection.execute(text("select count(*) from cards_shown")).scalar() == 0


def test_a_selection_over_its_bound_is_400_naming_it(client, no_network):
    body = minimal_request(hook="order-select", context=_context(
        draftOrders={"resourceType": "Bundle", "type": "collection", "entry": []},
        selections=["MedicationRequest/" + "a" * 300]))
    response = client.post(SELECT_URL, json=body)
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == ["context.selections[0]"] and "256" in issue["diagnostics"]


def test_a_draft_order_resource_type_of_any_length_is_refused_without_echo(client, no_network):
    body = minimal_request(hook="order-sign", context=_context(draftOrders={
        "resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "X" * 100_000}}]}))
    response = client.post(SIGN_URL, json=body)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["context.draftOrders.entry[0].resource.resourceType"]
    assert len(response.get_data()) < 1000


FEEDBACK_BOUNDS = [
    ("overrideReason.reason.code", 256, lambda v: {"reason": {"system": "http://x.example", "code": v}}),
    ("overrideReason.reason.system", 256, lambda v: {"reason": {"system": v, "code": "c"}}),
    ("overrideReason.reason.display", 1024, lambda v: {"reason": {"system": "http://x.example", "code": "c",
                                                                  "display": v}}),
    ("overrideReason.userComment", 4096, lambda v: {"userComment": v}),
]


@pytest.mark.parametrize("field, limit, reason", FEEDBACK_BOUNDS, ids=[b[0] for b in FEEDBACK_BOUNDS])
def test_feedback_string_over_its_bound_is_400_naming_it(field, limit, reason, client, no_network):
    item = {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
            "overrideReason": reason("a" * (limit + 1)), "outcomeTimestamp": "2026-06-15T12:00:00Z"}
    response = client.post(f"{SERVICE_URL}/feedback", json={"feedback": [item]})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == [f"feedback[0].{field}"] and str(limit) in issue["diagnostics"]
    item["overrideReason"] = reason("a" * limit)
    assert client.post(f"{SERVICE_URL}/feedback", json={"feedback": [item]}).status_code == 404  # never issued


def test_feedback_card_uuid_of_any_length_is_refused_without_echo(client, no_network):
    item = {"card": "9" * 100_000, "outcome": "overridden", "overrideReason": {"userComment": "x"},
            "outcomeTimestamp": "2026-06-15T12:00:00Z"}
    response = client.post(f"{SERVICE_URL}/feedback", json={"feedback": [item]})
    assert response.status_code == 400 and response.get_json()["issue"][0]["expression"] == ["feedback[0].card"]
    assert "9999" not in response.get_data(as_text=True)


# ------------------------------------------------------------------------- X-Request-ID

GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.parametrize("sent", ["a" * 129, "a" * 8000, "id with spaces", "id;drop", "id\"quote", "ünïcode",
                                  "{\"json\":1}", "x/y", ""])
def test_bad_request_id_is_replaced_by_a_generated_one_in_the_answer_and_the_log(sent, no_network):
    client = make_app().test_client()
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())  # the service's own log format, written while the request runs
    logging.getLogger().addHandler(handler)
    try:
        response = client.post(SERVICE_URL, json=minimal_request(), headers={"X-Request-ID": sent})
    finally:
        logging.getLogger().removeHandler(handler)
    assert response.status_code == 200
    echoed = response.headers["X-Request-ID"]
    assert GENERATED.match(echoed) and echoed != sent
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    answered = [line for line in lines if line["message"] == "hook answered"]
    assert answered and answered[-1]["request_id"] == echoed
    assert not sent or sent not in written.getvalue()


def test_sane_request_id_is_kept_up_to_128_characters(client, no_network):
    sent = "A-z0.9_:" * 16
    assert len(sent) == 128
    response = client.post(SERVICE_URL, json=minimal_request(), headers={"X-Request-ID": sent})
    assert response.headers["X-Request-ID"] == sent


# ------------------------------------------------------------------------- linear cost in a served worker

def test_a_gunicorn_worker_freezes_its_startup_heap_out_of_the_garbage_collector():
    """Without it, each full collection during a request walks the ~120,000 startup objects again, and a
    200,000-record Bundle cost twice as much per record as a 20,000 one (bench/bench_scaling.py)."""
    import gc
    from types import SimpleNamespace

    from cds_service.serve import gunicorn_conf

    assert gunicorn_conf.build()["post_worker_init"] is gunicorn_conf.worker_ready
    assert gunicorn_conf.post_worker_init is gunicorn_conf.worker_ready
    gc.unfreeze()
    try:
        gunicorn_conf.worker_ready(SimpleNamespace(wsgi=None))
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


# ------------------------------------------------------------------------- the same through real gunicorn

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`cramp-cds serve --dev` (gunicorn, one worker) with a cap of 1,000 resources; its log file."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    tmp = tmp_path_factory.mktemp("served")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CRAMP_MAX_RESOURCES": "1000", "CRAMP_DATABASE_URL": f"sqlite:///{tmp / 'cards.sqlite3'}",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli.main", "serve", "--dev", "--port", str(port), "--workers", "1"],
            env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()[-2000:]
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "server not healthy in time"
                time.sleep(0.2)
        yield base, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def _post_raw(base: str, body: bytes, headers: dict[str, str] | None = None):
    import http.client
    from urllib.parse import urlsplit

    connection = http.client.HTTPConnection(urlsplit(base).netloc, timeout=60)
    try:
        connection.request("POST", SERVICE_URL, body=body,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _log_lines(log_path) -> list[dict]:
    lines = []
    for line in log_path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def _log_lines_once(log_path, request_id: str, message: str = "hook answered", seconds: float = 20) -> list[dict]:
    """The server's log lines once the request's ``message`` line is there: a thread of each worker writes
    the lines (web/logs.BackgroundHandler), so the answer can arrive before them. Lines keep their order, so
    the request's earlier lines are written by then. A hang guard, not a speed test."""
    deadline = time.monotonic() + seconds
    while True:
        lines = _log_lines(log_path)
        if any(line.get("request_id") == request_id and line.get("message") == message for line in lines):
            return lines
        assert time.monotonic() < deadline, f"no {message!r} line for request {request_id} in {seconds} s"
        time.sleep(0.05)


def test_gunicorn_over_the_cap_is_413_naming_it(served):
    base, _ = served
    status, _, body = _post_raw(base, json.dumps(_body_with(minimal_observations(1000))).encode())
    assert status == 413, body[:300]
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and "CRAMP_MAX_RESOURCES" in outcome["issue"][0]["diagnostics"]


def test_gunicorn_skipped_records_are_one_log_line(served):
    base, log_path = served
    status, headers, _ = _post_raw(base, json.dumps(_body_with(minimal_observations(600))).encode(),
                                   {"X-Request-ID": "skip-count-1"})
    assert status == 200 and headers["X-Request-ID"] == "skip-count-1"
    mine = [line for line in _log_lines_once(log_path, "skip-count-1") if line.get("request_id") == "skip-count-1"]
    warnings = [line for line in mine if line["level"] == "WARNING" and "skipped" in line["message"]]
    assert len(warnings) == 1, warnings
    assert warnings[0]["skipped_by_type_and_reason"] == {"Observation": {"invalid FHIR R4 (code: missing)": 600}}
    assert len(mine) < 10  # a handful of lines for the request, not one per record


@pytest.mark.parametrize("sent", ["r" * 200, "has spaces", "semi;colon", "quote\"d"])
def test_gunicorn_bad_request_id_is_replaced(served, sent):
    base, log_path = served
    status, headers, _ = _post_raw(base, json.dumps(minimal_request()).encode(), {"X-Request-ID": sent})
    assert status == 200
    generated = headers["X-Request-ID"]
    assert GENERATED.match(generated)
    _log_lines_once(log_path, generated)  # its "hook answered" line names the generated id
    assert sent not in log_path.read_text()


def test_gunicorn_a_15_mb_hook_instance_is_400(served):
    base, log_path = served
    body = json.dumps(minimal_request(hookInstance="h" * (15 * 2**20))).encode()
    status, _, answer = _post_raw(base, body, {"X-Request-ID": "huge-instance"})
    assert status == 400 and json.loads(answer)["issue"][0]["expression"] == ["hookInstance"]
    _log_lines_once(log_path, "huge-instance", "request refused")
    assert "h" * 1000 not in log_path.read_text()
