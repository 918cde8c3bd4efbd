"""Fetching missing prefetch from the client's FHIR server, through the HTTP contract (STATUS.md; issue 3;
docs/fetching.md). The FHIR server is mocked with ``responses``; nothing reaches a network.

The 412 matrix of the reference services (STYLE.md item 6):

    case                                          answer
    --------------------------------------------  ----------------------------------------------------------
    prefetch present                               200, no call
    no prefetch, no fhirServer                     412 naming patient, conditions
    open server (no fhirAuthorization)             200, no Authorization header sent
    secured server                                 200, Authorization: Bearer <token> sent
    network error                                  412 naming the keys (after retries within the deadline)
    invalid resource from the server               200, skipped and named in the card

then paging, retries, the deadline, the token, the allowlist, redirects, optional keys and parallelism.
Tests about the deadline use 0.3 s (``deadline_client``); the others 2 s, so that a loaded machine does
not turn them into deadline tests.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import requests
import responses
from responses import matchers

from cds_service.clock import fixed_clock
from cds_service.engine.pipeline import Engine
from cds_service.fhir.client import MAX_ATTEMPTS, PAGE_CAP, FhirFetcher
from cds_service.hooks.request import HookRequest
from cds_service.settings import Settings
from cds_service.web.app import create_app
from support.hook_requests import DROP, NOW, PATIENT_ID, SERVICE_URL, minimal_request, patient_resource, searchset
from support.fhir_server import LoopbackFhir

BASE = "https://ehr.example.org/fhir"
TOKEN = "tok-5f1c-never-in-logs"
DEADLINE = 0.3  # for the tests about the deadline (``deadline_client``)
GENEROUS = 2.0  # for the others (``fetch_client``): a loaded CI machine must not turn them into deadline tests
CONSERVATIVE = "Leg cramps: conservative care"
OPTIONAL_KEYS = ("medicationRequests", "medicationStatements", "observations", "procedures", "serviceRequests")

CRAMPS = {
    "resourceType": "Condition",
    "id": "cramps-1",
    "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "clinicalStatus": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
    },
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "449918009", "display": "Leg cramps"}]},
}
INVALID_CONDITION = {
    "resourceType": "Condition",
    "id": "bad-1",
    "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "clinicalStatus": "active",  # must be a CodeableConcept
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
}

PATIENT_URL = f"{BASE}/Patient/{PATIENT_ID}"
CONDITION_URL = f"{BASE}/Condition?patient={PATIENT_ID}"
URLS = {
    "patient": re.compile(re.escape(PATIENT_URL) + "$"),
    "conditions": re.compile(re.escape(f"{BASE}/Condition?") + r".*"),
    "medicationRequests": re.compile(re.escape(f"{BASE}/MedicationRequest?") + r".*"),
    "medicationStatements": re.compile(re.escape(f"{BASE}/MedicationStatement?") + r".*"),
    "observations": re.compile(re.escape(f"{BASE}/Observation?") + r".*"),
    "procedures": re.compile(re.escape(f"{BASE}/Procedure?") + r".*"),
    "serviceRequests": re.compile(re.escape(f"{BASE}/ServiceRequest?") + r".*"),
}
SEARCH_TYPES = ("MedicationRequest", "MedicationStatement", "Observation", "Procedure", "ServiceRequest")


# ---------------------------------------------------------------- helpers


def make_fetch_app(deadline: float = GENEROUS, allowlist: tuple[str, ...] = (BASE,), **settings: Any):
    return create_app(
        Settings(development_mode=True, fhir_server_allowlist=allowlist, fhir_deadline_seconds=deadline, **settings),
        clock=fixed_clock(NOW),
    )


def make_app_with_sleep(sleep: Callable[[float], None], deadline: float) -> Any:
    settings = Settings(development_mode=True, fhir_server_allowlist=(BASE,), fhir_deadline_seconds=deadline)
    engine = Engine.default(clock=fixed_clock(NOW), fetcher=FhirFetcher(settings, sleep=sleep))
    return create_app(settings, engine=engine)


def hook_body(prefetch: dict[str, Any] | None = None, *, server: str | None = BASE,
              token: str | None = None, expires_in: int = 300) -> dict[str, Any]:
    """A patient-view request with ``prefetch`` (none by default), ``fhirServer`` and optionally a token."""
    body = minimal_request(prefetch=prefetch if prefetch is not None else DROP)
    if server is not None:
        body["fhirServer"] = server
    if token is not None:
        body["fhirAuthorization"] = {
            "access_token": token, "token_type": "Bearer", "expires_in": expires_in,
            "scope": "patient/*.read", "subject": "leg-cramp-cds",
        }
    return body


def full_prefetch(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"patient": patient_resource(), "conditions": searchset(*conditions),
            **{key: searchset() for key in OPTIONAL_KEYS}}


def serve_chart(rsps: responses.RequestsMock, *, skip: tuple[str, ...] = (), conditions: list[dict] | None = None,
                match: list | None = None) -> None:
    """Register the searches of a patient with documented cramps, one per key (all but ``skip``)."""
    bodies = {
        "patient": patient_resource(),
        "conditions": searchset(*(conditions if conditions is not None else [CRAMPS])),
        **{key: searchset() for key in OPTIONAL_KEYS},
    }
    for key, body in bodies.items():
        if key not in skip:
            rsps.get(URLS[key], json=body, match=match or [])


def conservative_detail(response: Any) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)[:600]
    cards = [c for c in response.get_json()["cards"] if c["summary"] == CONSERVATIVE]
    assert cards, [c["summary"] for c in response.get_json()["cards"]]
    return cards[0]["detail"]


def diagnostics(response: Any) -> str:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def calls_to(rsps: responses.RequestsMock, fragment: str) -> int:
    return sum(fragment in call.request.url for call in rsps.calls)


@pytest.fixture
def fhir() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture
def relaxed_fhir() -> Iterator[responses.RequestsMock]:
    """For the 0.3 s deadline tests: on a loaded machine some other key may not have started in time."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def fetch_client():
    return make_fetch_app().test_client()


@pytest.fixture
def deadline_client():
    return make_fetch_app(deadline=DEADLINE).test_client()


@pytest.fixture
def fetch_log() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("cds_service.fhir.client")
    handler = Keep(level=logging.DEBUG)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# ---------------------------------------------------------------- the 412 matrix (STYLE.md item 6)


def test_fetch_prefetch_present_makes_no_call(fetch_client) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        response = fetch_client.post(SERVICE_URL, json=hook_body(full_prefetch(CRAMPS), token=TOKEN))
        assert len(rsps.calls) == 0
    assert "Could not be checked" not in conservative_detail(response)


def test_fetch_no_prefetch_and_no_fhir_server_is_412(fetch_client) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        response = fetch_client.post(SERVICE_URL, json=hook_body(server=None))
        assert len(rsps.calls) == 0
    assert response.status_code == 412
    assert response.mimetype == "application/fhir+json"
    message = diagnostics(response)
    assert "patient, conditions" in message and "no fhirServer" in message


def test_fetch_open_server_sends_no_authorization(fetch_client, fhir) -> None:
    serve_chart(fhir)
    response = fetch_client.post(SERVICE_URL, json=hook_body())
    assert "Could not be checked" not in conservative_detail(response)
    assert len(fhir.calls) == len(URLS)  # one call per key
    for call in fhir.calls:
        assert "Authorization" not in call.request.headers
        assert call.request.headers["Accept"] == "application/fhir+json"


def test_fetch_secured_server_sends_bearer_token(fetch_client, fhir) -> None:
    serve_chart(fhir, match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}",
                                                      "Accept": "application/fhir+json"})])
    response = fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN))
    assert "Could not be checked" not in conservative_detail(response)
    assert len(fhir.calls) == len(URLS)  # one call per key


def test_fetch_network_error_is_412_naming_the_keys(fetch_client, fhir) -> None:
    serve_chart(fhir, skip=("patient", "conditions"))
    fhir.get(URLS["patient"], body=requests.ConnectionError("refused"))
    fhir.get(URLS["conditions"], body=requests.ConnectionError("refused"))
    response = fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN))
    assert response.status_code == 412
    message = diagnostics(response)
    assert "patient, conditions" in message
    assert f"patient: connection failed after {MAX_ATTEMPTS} attempts" in message
    assert calls_to(fhir, "/Patient/") == MAX_ATTEMPTS  # retried with backoff, then given up
    assert TOKEN not in response.get_data(as_text=True) and BASE not in message


def test_fetch_invalid_resource_is_skipped_and_reported(fetch_client, fhir) -> None:
    serve_chart(fhir, conditions=[CRAMPS, INVALID_CONDITION])
    detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body()))
    assert "Data may be incomplete: 1 record could not be read and was left out (1 condition: invalid FHIR R4" in detail
    assert "Condition/bad-1" not in detail  # the id stays in the card's extension


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_fetch_client_error_is_final_and_412(fetch_client, fhir, status: int) -> None:
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], status=status, json={"resourceType": "OperationOutcome", "issue": []})
    response = fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN))
    assert response.status_code == 412
    message = diagnostics(response)
    assert "key(s) conditions" in message and f"HTTP {status}" in message
    assert calls_to(fhir, "/Condition?") == 1  # never retried


@pytest.mark.parametrize("body, reason", [
    ({"json": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}},
     "OperationOutcome"),
    ({"body": "<html>login</html>", "content_type": "text/html"}, "not JSON"),
    ({"json": [1, 2]}, "not a FHIR resource"),
    ({"json": {"resourceType": "Condition", "id": "x"}}, "expected a Bundle"),
])
def test_fetch_unusable_200_is_a_failure_for_that_key(fetch_client, fhir, body: dict, reason: str) -> None:
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], **body)
    response = fetch_client.post(SERVICE_URL, json=hook_body())
    assert response.status_code == 412
    assert reason in diagnostics(response)


def test_fetch_read_must_return_the_resource_type(fetch_client, fhir) -> None:
    serve_chart(fhir, skip=("patient",))
    fhir.get(URLS["patient"], json=searchset(patient_resource()))
    response = fetch_client.post(SERVICE_URL, json=hook_body())
    assert response.status_code == 412
    assert "expected a Patient, got a Bundle" in diagnostics(response)


def test_fetch_search_ignores_outcome_entries(fetch_client, fhir) -> None:
    bundle = searchset(CRAMPS)
    bundle["entry"].append({"resource": {"resourceType": "OperationOutcome", "issue": []},
                            "search": {"mode": "outcome"}})
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], json=bundle)
    detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body()))
    assert "Skipped" not in detail


def test_fetch_only_missing_keys_are_fetched(fetch_client, fhir) -> None:
    """A partial prefetch: the keys present are used as sent; null and OperationOutcome values are fetched."""
    fhir.get(URLS["observations"], json=searchset())
    fhir.get(URLS["medicationStatements"], json=searchset())
    prefetch = {"patient": patient_resource(), "conditions": searchset(CRAMPS), "medicationRequests": searchset(),
                "procedures": searchset(), "serviceRequests": searchset(), "medicationStatements": None,
                "observations": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}}
    detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body(prefetch)))
    assert "Could not be checked" not in detail
    assert len(fhir.calls) == 2


# ---------------------------------------------------------------- paging


def paged_conditions(rsps: responses.RequestsMock, pages: int, *, last_next: str | None = None) -> None:
    """Condition search in ``pages`` pages; CRAMPS on the last; the last links to ``last_next`` if given."""
    for page in range(1, pages + 1):
        url = CONDITION_URL if page == 1 else f"{BASE}/Condition?patient={PATIENT_ID}&_page={page}"
        following = f"{BASE}/Condition?patient={PATIENT_ID}&_page={page + 1}" if page < pages else last_next
        resources = [CRAMPS] if page == pages else [{**CRAMPS, "id": f"other-{page}", "code": {"text": "x"}}]
        rsps.get(url, json=searchset(*resources, next_url=following),
                 match=[matchers.query_string_matcher(url.split("?", 1)[1])])


@pytest.mark.parametrize("pages", [2, 3])
def test_fetch_follows_next_links_on_the_same_server(fetch_client, fhir, pages: int) -> None:
    serve_chart(fhir, skip=("conditions",))
    paged_conditions(fhir, pages)
    detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN)))
    assert "may be incomplete" not in detail
    assert calls_to(fhir, "/Condition?") == pages


@pytest.mark.parametrize("elsewhere", [
    "https://evil.example.com/fhir/Condition?page=2",
    "https://ehr.example.org.evil.com/fhir/Condition?page=2",
    "https://ehr.example.org/other/Condition?page=2",
    "http://ehr.example.org/fhir/Condition?page=2",
    "https://ehr.example.org:8443/fhir/Condition?page=2",
    "https://ehr.example.org/fhir/../admin/Condition?page=2",
])
def test_fetch_next_link_to_another_server_is_not_followed(fetch_client, fhir, elsewhere: str) -> None:
    serve_chart(fhir, skip=("conditions",))
    paged_conditions(fhir, 2, last_next=elsewhere)
    detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN)))
    assert "Data may be incomplete (more pages were not read): conditions" in detail
    assert calls_to(fhir, "/Condition?") == 2
    assert all(call.request.url.startswith(BASE + "/") for call in fhir.calls)


def test_fetch_relative_next_link_is_resolved_on_the_server(fetch_client, fhir) -> None:
    serve_chart(fhir, skip=("conditions",))
    fhir.get(CONDITION_URL, json=searchset(next_url="Condition?patient=p-zq-1&_page=2"),
             match=[matchers.query_string_matcher(f"patient={PATIENT_ID}")])
    fhir.get(f"{BASE}/Condition", json=searchset(CRAMPS),
             match=[matchers.query_string_matcher(f"patient={PATIENT_ID}&_page=2")])
    assert "may be incomplete" not in conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body()))


def test_fetch_stops_at_the_page_cap(fhir) -> None:
    client = make_fetch_app(deadline=5.0).test_client()
    serve_chart(fhir, skip=("conditions",))

    def endless(request: Any) -> tuple[int, dict, str]:
        page = int(request.params.get("_page", 1))
        nxt = f"{BASE}/Condition?patient={PATIENT_ID}&_page={page + 1}"
        return 200, {}, json.dumps(searchset(CRAMPS if page == 1 else {**CRAMPS, "id": f"c{page}"}, next_url=nxt))

    fhir.add_callback(responses.GET, URLS["conditions"], callback=endless)
    detail = conservative_detail(client.post(SERVICE_URL, json=hook_body()))
    assert "Data may be incomplete (more pages were not read): conditions" in detail
    assert calls_to(fhir, "/Condition?") == PAGE_CAP


def test_fetch_partial_prefetch_bundle_reads_the_remaining_pages(fetch_client, fhir) -> None:
    """The client sent page 1 with a next link: only page 2 is fetched and its resources are added."""
    page2 = f"{BASE}/Condition?patient={PATIENT_ID}&_page=2"
    fhir.get(page2, json=searchset(CRAMPS), match=[matchers.query_string_matcher(page2.split("?", 1)[1])])
    prefetch = full_prefetch()
    prefetch["conditions"] = searchset({**CRAMPS, "id": "old", "code": {"text": "x"}}, next_url=page2)
    detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body(prefetch, token=TOKEN)))
    assert "may be incomplete" not in detail
    assert len(fhir.calls) == 1


def test_fetch_partial_prefetch_next_link_elsewhere_is_incomplete(fetch_client) -> None:
    prefetch = full_prefetch(CRAMPS)
    prefetch["conditions"] = searchset(CRAMPS, next_url="https://evil.example.com/fhir/Condition?_page=2")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body(prefetch, token=TOKEN)))
        assert len(rsps.calls) == 0
    assert "Data may be incomplete (more pages were not read): conditions" in detail


def test_fetch_partial_prefetch_that_cannot_be_completed_and_no_card_is_412(fetch_client, fhir) -> None:
    """fhirServer allowlisted, but page 2 fails: page 1 alone fires nothing, so no all-clear: 412 naming
    conditions (STATUS.md rev), with the reason and no URL."""
    page2 = f"{BASE}/Condition?patient={PATIENT_ID}&_page=2"
    fhir.get(page2, status=404, match=[matchers.query_string_matcher(page2.split("?", 1)[1])])
    prefetch = full_prefetch()
    prefetch["conditions"] = searchset({**CRAMPS, "id": "other", "code": {"text": "x"}}, next_url=page2)
    response = fetch_client.post(SERVICE_URL, json=hook_body(prefetch, token=TOKEN))
    assert response.status_code == 412, response.get_data(as_text=True)[:300]
    message = diagnostics(response)
    assert "conditions" in message and "incomplete" in message and "HTTP 404" in message
    assert BASE not in message and PATIENT_ID not in message


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_fetch_retries_a_busy_server(fetch_client, fhir, status: int) -> None:
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], status=status)
    fhir.get(URLS["conditions"], json=searchset(CRAMPS))
    assert "Could not be checked" not in conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body()))
    assert calls_to(fhir, "/Condition?") == 2


def test_fetch_retries_after_a_connection_error(fetch_client, fhir) -> None:
    serve_chart(fhir, skip=("patient",))
    fhir.get(URLS["patient"], body=requests.ConnectionError("reset"))
    fhir.get(URLS["patient"], json=patient_resource())
    conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body()))
    assert calls_to(fhir, "/Patient/") == 2


def test_fetch_honours_retry_after_when_it_fits(fhir) -> None:
    slept: list[float] = []
    client = make_app_with_sleep(slept.append, deadline=3.0).test_client()
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], status=429, headers={"Retry-After": "2"})
    fhir.get(URLS["conditions"], json=searchset(CRAMPS))
    conservative_detail(client.post(SERVICE_URL, json=hook_body()))
    assert slept == [2.0]


def test_fetch_does_not_wait_for_a_retry_after_past_the_deadline(fhir) -> None:
    slept: list[float] = []
    client = make_app_with_sleep(slept.append, deadline=3.0).test_client()
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], status=429, headers={"Retry-After": "120"})
    response = client.post(SERVICE_URL, json=hook_body())
    assert response.status_code == 412
    assert "HTTP 429; no time left to retry" in diagnostics(response)
    assert slept == [] and calls_to(fhir, "/Condition?") == 1


class FakeClock:
    """The fetcher's clock and sleep: time moves only when the fetcher sleeps (backoff), so the test does
    not depend on how fast a loaded machine runs it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_fetch_retries_stop_at_the_deadline(fhir) -> None:
    clock = FakeClock()
    settings = Settings(development_mode=True, fhir_server_allowlist=(BASE,), fhir_deadline_seconds=DEADLINE)
    engine = Engine.default(clock=fixed_clock(NOW), fetcher=FhirFetcher(settings, clock=clock, sleep=clock.sleep))
    client = create_app(settings, engine=engine).test_client()
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], status=503)  # every attempt
    response = client.post(SERVICE_URL, json=hook_body())
    assert response.status_code == 412
    assert "conditions: HTTP 503" in diagnostics(response)
    assert "no time left to retry" in diagnostics(response)
    # backoff (50, 100, 200 ms + jitter) would allow 4 attempts; the 0.3 s deadline cut it short, and no wait
    # ran past it
    assert 2 <= calls_to(fhir, "/Condition?") < MAX_ATTEMPTS
    assert len(clock.slept) == calls_to(fhir, "/Condition?") - 1
    assert sum(clock.slept) < DEADLINE


def test_fetch_500_is_not_retried(fetch_client, fhir) -> None:
    serve_chart(fhir, skip=("conditions",))
    fhir.get(URLS["conditions"], status=500)
    assert fetch_client.post(SERVICE_URL, json=hook_body()).status_code == 412
    assert calls_to(fhir, "/Condition?") == 1


# ---------------------------------------------------------------- the deadline


class Held:
    """A server callback that answers only once ``release`` is set (or after ``seconds``); ``returned`` says
    whether it has answered. A response that arrives while it is still held did not wait for it: no clock."""

    def __init__(self, body: dict[str, Any], seconds: float = 30.0) -> None:
        self.body, self.seconds = body, seconds
        self.release, self.returned = threading.Event(), threading.Event()

    def __call__(self, request: Any) -> tuple[int, dict, str]:
        self.release.wait(self.seconds)
        self.returned.set()
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(self.body)


def let_abandoned_call_finish(rsps: responses.RequestsMock, held: Held, count: int) -> None:
    """Release the slow call the service gave up on, and wait until the mock has recorded it."""
    held.release.set()
    waited = time.monotonic() + 10.0
    while len(rsps.calls) < count and time.monotonic() < waited:
        time.sleep(0.01)


def test_fetch_deadline_slow_required_key_is_412_in_time(deadline_client, relaxed_fhir) -> None:
    fhir = relaxed_fhir
    held = Held(searchset(CRAMPS))
    serve_chart(fhir, skip=("conditions",))
    fhir.add_callback(responses.GET, URLS["conditions"], callback=held)
    response = deadline_client.post(SERVICE_URL, json=hook_body())
    answered_while_held = not held.returned.is_set()
    let_abandoned_call_finish(fhir, held, len(URLS))
    assert response.status_code == 412
    assert "conditions: deadline passed" in diagnostics(response)
    assert answered_while_held  # at the deadline, not when the slow server answered


def test_fetch_deadline_slow_optional_key_is_not_checked_in_time(deadline_client, relaxed_fhir) -> None:
    fhir = relaxed_fhir
    held = Held(searchset())
    serve_chart(fhir, skip=("observations",))
    fhir.add_callback(responses.GET, URLS["observations"], callback=held)
    response = deadline_client.post(SERVICE_URL, json=hook_body())
    answered_while_held = not held.returned.is_set()
    let_abandoned_call_finish(fhir, held, len(URLS))
    assert "Could not be checked: observations" in conservative_detail(response)
    assert answered_while_held


def test_fetch_keys_are_fetched_in_parallel(fhir) -> None:
    """Each call (one per key) waits until all of them are in the server at once: sequential fetching could
    never get past the first one (it would break the barrier and answer 500). Counts, not a stopwatch."""
    client = make_fetch_app(deadline=20.0).test_client()
    bodies = {"patient": patient_resource(), "conditions": searchset(CRAMPS),
              **{key: searchset() for key in OPTIONAL_KEYS}}
    together = threading.Barrier(len(bodies), timeout=15.0)

    def meeting(body: dict[str, Any]) -> Callable[[Any], tuple[int, dict, str]]:
        def callback(request: Any) -> tuple[int, dict, str]:
            try:
                together.wait()
            except threading.BrokenBarrierError:
                return 500, {}, "{}"
            return 200, {"Content-Type": "application/fhir+json"}, json.dumps(body)
        return callback

    for key, body in bodies.items():
        fhir.add_callback(responses.GET, URLS[key], callback=meeting(body))
    detail = conservative_detail(client.post(SERVICE_URL, json=hook_body(token=TOKEN)))
    assert "Could not be checked" not in detail
    assert not together.broken and len(fhir.calls) == len(bodies)


def _fetch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("fhir-fetch") and t.is_alive()}


def _until(condition: Callable[[], bool], seconds: float = 15.0) -> bool:
    """Poll ``condition``: a generous bound for a loaded machine; a thread that never ends still fails."""
    waited = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > waited:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body drips", "headers drip"])
def test_fetch_abandoned_at_the_deadline_closes_its_connections_and_threads_end(drip_headers: bool) -> None:
    """Issue 11 item 10: a server dripping one byte every 20 ms never lets a read time out. At the deadline
    the fetcher shuts the abandoned connections down: its threads end and the server sees every connection
    closed, long before the drip (64 KiB, about 20 minutes) would have ended it."""
    with LoopbackFhir([patient_resource()], drip=0.02, drip_headers=drip_headers) as server:
        settings = Settings(development_mode=True, fhir_server_allowlist=(server.base_url,),
                            fhir_allow_http_loopback=True, fhir_deadline_seconds=DEADLINE)
        fetcher = FhirFetcher(settings)
        before = _fetch_threads()
        queries = {"patient": f"Patient/{PATIENT_ID}", "conditions": f"Condition?patient={PATIENT_ID}",
                   "observations": f"Observation?patient={PATIENT_ID}"}
        outcomes = fetcher.fetch(HookRequest.model_validate(hook_body(server=server.base_url)), queries, {})
        assert {key: o.resources for key, o in outcomes.items()} == {key: None for key in queries}
        assert all("deadline" in (o.reason or "") for o in outcomes.values()), outcomes
        assert len(server.requests) == len(queries)  # each key did reach the server
        assert _until(lambda: not (_fetch_threads() - before)), "fetch threads still reading after the deadline"
        assert _until(lambda: server.open_connections == 0), f"{server.open_connections} connections still open"


def test_fetch_a_slow_server_does_not_lose_connections_of_a_finished_request() -> None:
    """The shutdown touches only connections still in use by the abandoned keys: a pooled connection that
    a finished key returned is reused by the next request without a failure."""
    with LoopbackFhir([patient_resource()], drip=0.02, drip_types=("Observation",)) as server:
        settings = Settings(development_mode=True, fhir_server_allowlist=(server.base_url,),
                            fhir_allow_http_loopback=True, fhir_deadline_seconds=DEADLINE)
        fetcher = FhirFetcher(settings)
        request = HookRequest.model_validate(hook_body(server=server.base_url))
        queries = {"patient": f"Patient/{PATIENT_ID}", "observations": f"Observation?patient={PATIENT_ID}"}
        first = fetcher.fetch(request, queries, {})
        assert first["patient"].resources and first["observations"].resources is None
        again = fetcher.fetch(request, {"patient": f"Patient/{PATIENT_ID}"}, {})
        assert again["patient"].resources and again["patient"].reason is None


# ---------------------------------------------------------------- the token


def test_fetch_expired_token_is_not_sent(fetch_client, fhir) -> None:
    serve_chart(fhir)
    response = fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN, expires_in=0))
    conservative_detail(response)
    assert all("Authorization" not in call.request.headers for call in fhir.calls)


def test_fetch_expired_token_on_a_secured_server_is_412(fetch_client, fhir) -> None:
    for key in ("patient", "conditions", *OPTIONAL_KEYS):
        fhir.get(URLS[key], status=401)
    response = fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN, expires_in=-5))
    assert response.status_code == 412
    assert "patient, conditions" in diagnostics(response) and "HTTP 401" in diagnostics(response)
    assert all("Authorization" not in call.request.headers for call in fhir.calls)


def test_fetch_logs_keys_not_urls_tokens_or_patient_ids(fetch_client, fhir, fetch_log) -> None:
    serve_chart(fhir, skip=("observations",))
    fhir.get(URLS["observations"], status=503)
    conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN)))
    lines = [r for r in fetch_log if r.getMessage() == "fhir fetch"]
    assert {r.key for r in lines} == {"patient", "conditions", *OPTIONAL_KEYS}  # type: ignore[attr-defined]
    assert {r.resource_type for r in lines} >= {"Patient", "Condition", "Observation"}  # type: ignore[attr-defined]
    for record in fetch_log:
        text = repr(vars(record))
        assert TOKEN not in text and PATIENT_ID not in text and "ehr.example.org" not in text


# ---------------------------------------------------------------- the allowlist


@pytest.mark.parametrize("server, reason", [
    ("https://other.example.org/fhir", "not on this service's allowlist"),
    ("https://ehr.example.org.evil.com/fhir", "not on this service's allowlist"),
    ("https://ehr.example.org/fhirx", "not on this service's allowlist"),
    ("https://ehr.example.org/", "not on this service's allowlist"),
    ("https://ehr.example.org:8443/fhir", "not on this service's allowlist"),
    ("http://ehr.example.org/fhir", "must be https"),
    ("http://127.0.0.1:8080/fhir", "must be https"),  # loopback http needs the development setting
    ("file:///etc/passwd", "must be https"),
    ("ftp://ehr.example.org/fhir", "must be https"),
    ("https://user:pw@ehr.example.org/fhir", "not a usable absolute URL"),
    ("https://ehr.example.org/fhir/../admin", "not a usable absolute URL"),
    ("https://ehr.example.org\\@evil.com/fhir", "not a usable absolute URL"),
    ("not a url", "not a usable absolute URL"),
    ("https://[::1/fhir", "not a usable absolute URL"),
    ("https://ehr.example.org:99999/fhir", "not a usable absolute URL"),
    ("https://ehr.example.org/fhir?x=1", "not a usable absolute URL"),
    ("https://ehr.example.org/fhir/%2e%2e/admin", "not a usable absolute URL"),
])
def test_fetch_refused_server_is_412_without_a_call(fetch_client, server: str, reason: str) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        response = fetch_client.post(SERVICE_URL, json=hook_body(server=server, token=TOKEN))
        assert len(rsps.calls) == 0
    assert response.status_code == 412
    message = diagnostics(response)
    assert reason in message and "patient, conditions" in message and "no request was made" in message


def test_fetch_refused_server_with_only_optional_keys_missing_is_not_checked(fetch_client) -> None:
    """What the CDS Hooks Sandbox does: required keys sent, the others omitted, an unknown fhirServer."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        body = hook_body({"patient": patient_resource(), "conditions": searchset(CRAMPS)},
                         server="https://other.example.org/fhir", token=TOKEN)
        detail = conservative_detail(fetch_client.post(SERVICE_URL, json=body))
        assert len(rsps.calls) == 0
    assert "Could not be checked: medication orders, medication statements, observations" in detail


@pytest.mark.parametrize("server", ["https://EHR.Example.org:443/fhir/", "https://ehr.example.org/fhir/r4"])
def test_fetch_allowlist_compares_normalised_prefixes(fhir, server: str) -> None:
    client = make_fetch_app(allowlist=("https://ehr.example.org/fhir/",)).test_client()
    fhir.get(re.compile(r"https://ehr\.example\.org/fhir/(r4/)?Patient/" + PATIENT_ID), json=patient_resource())
    fhir.get(re.compile(r"https://ehr\.example\.org/fhir/(r4/)?Condition\?.*"), json=searchset(CRAMPS))
    for kind in SEARCH_TYPES:
        fhir.get(re.compile(rf"https://ehr\.example\.org/fhir/(r4/)?{kind}\?.*"), json=searchset())
    conservative_detail(client.post(SERVICE_URL, json=hook_body(server=server)))
    assert len(fhir.calls) == len(URLS)  # one call per key


def test_fetch_http_loopback_needs_the_development_setting(fhir) -> None:
    loopback = "http://127.0.0.1:8099/fhir"
    client = make_fetch_app(allowlist=(loopback,), fhir_allow_http_loopback=True).test_client()
    fhir.get(f"{loopback}/Patient/{PATIENT_ID}", json=patient_resource())
    fhir.get(re.compile(re.escape(loopback) + r"/Condition\?.*"), json=searchset(CRAMPS))
    for kind in SEARCH_TYPES:
        fhir.get(re.compile(re.escape(loopback) + rf"/{kind}\?.*"), json=searchset())
    conservative_detail(client.post(SERVICE_URL, json=hook_body(server=loopback)))


def test_fetch_empty_allowlist_refuses_every_server() -> None:
    client = make_fetch_app(allowlist=()).test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        response = client.post(SERVICE_URL, json=hook_body())
        assert len(rsps.calls) == 0
    assert response.status_code == 412 and "allowlist" in diagnostics(response)


def test_fetch_redirect_is_not_followed(fetch_client, fhir) -> None:
    serve_chart(fhir, skip=("patient",))
    fhir.get(URLS["patient"], status=302, headers={"Location": "https://evil.example.com/steal"})
    response = fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN))
    assert response.status_code == 412
    assert "key(s) patient" in diagnostics(response) and "HTTP 302" in diagnostics(response)
    assert all("evil" not in call.request.url for call in fhir.calls)


def test_fetch_patient_id_cannot_reshape_the_query(fetch_client) -> None:
    body = hook_body()
    body["context"]["patientId"] = "../../admin?x=1#"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(re.compile(r".*"), json=searchset())
        response = fetch_client.post(SERVICE_URL, json=body)
        urls = [call.request.url for call in rsps.calls]
    assert response.status_code == 412
    assert "Patient/" not in " ".join(urls) and all(u.startswith(BASE + "/") for u in urls)
    assert all("%2F..%2Fadmin%3Fx%3D1%23" in u for u in urls)  # searches carry the id encoded


# ---------------------------------------------------------------- optional keys


def test_fetch_optional_key_failing_is_not_checked(fetch_client, fhir) -> None:
    serve_chart(fhir, skip=("observations",))
    fhir.get(URLS["observations"], status=500)
    detail = conservative_detail(fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN)))
    assert "Could not be checked: observations" in detail


def test_fetch_settings_reject_a_malformed_allowlist() -> None:
    from cds_service.settings import SettingsError

    with pytest.raises(SettingsError, match="CRAMP_FHIR_ALLOWLIST"):
        FhirFetcher(Settings(fhir_server_allowlist=("ehr.example.org/fhir",)))


def test_fetch_failures_are_counted_in_metrics(fetch_client, fhir) -> None:
    """A failed read shows in cramp_fhir_fetch_errors with a fixed reason label, never a URL."""
    def errors() -> float:
        text = fetch_client.get("/metrics").get_data(as_text=True)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("cramp_fhir_fetch_errors_total{") and 'reason="http_5xx"' in line)

    before = errors()
    serve_chart(fhir, skip=("observations",))
    fhir.get(URLS["observations"], status=500)
    fetch_client.post(SERVICE_URL, json=hook_body(token=TOKEN))
    assert errors() == before + 1
    assert "http://" not in fetch_client.get("/metrics").get_data(as_text=True).split("cramp_fhir_fetch_errors")[1][:2000]
