"""The FHIR client's typed error tree (cds_service/fhir/errors.py): each HTTP status and each transport failure
becomes one type, carrying the URL and the status; decided by type and attribute, never by message text.
``responses`` where no real server is needed; real loopback sockets for refused connections, TLS spoken to a
plain-http server, and timeouts."""

from __future__ import annotations

import pytest
import requests
import responses

from support.fhir_server import LoopbackFhir, free_port
from cds_service.fhir.crawler import ServerPopulation, ServerSourceError
from cds_service.fhir.errors import (AuthFailed, FhirError, Invalid, NotFound, RefusedByPolicy, Rejected, TooLarge,
                                     Unavailable)
from cds_service.fhir.reader import FhirReader, read_json
from cds_service.fhir.session import build_session, error_from_exception

BASE = "https://ehr.example.org/fhir"
URL = f"{BASE}/Patient/p1"


def reader(**kwargs) -> FhirReader:
    return FhirReader(BASE, sleep=lambda seconds: None, **kwargs)


@pytest.mark.parametrize("status, kind, label", [
    (401, AuthFailed, "http_4xx"),
    (403, AuthFailed, "http_4xx"),
    (404, NotFound, "http_4xx"),
    (410, NotFound, "http_4xx"),
    (400, Rejected, "http_4xx"),
    (422, Rejected, "http_4xx"),
    (500, Unavailable, "http_5xx"),
    (503, Unavailable, "http_5xx"),
    (429, Unavailable, "http_4xx"),
    (302, RefusedByPolicy, "redirect"),
])
def test_fhir_status_becomes_one_type_with_url_and_status(status: int, kind: type, label: str) -> None:
    with responses.RequestsMock() as mock:
        mock.get(URL, status=status, json={"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "x", "diagnostics": "said the server"}]},
                 headers={"Location": "https://elsewhere.example.org/"} if status == 302 else {})
        with pytest.raises(FhirError) as caught:
            reader().read("Patient/p1")
    error = caught.value
    assert type(error) is kind
    assert (error.url, error.status, error.metric_label) == (URL, status, label)
    assert error.server == "https://ehr.example.org"  # what a log line may carry: no path, no patient id
    assert error.detail == "error x: said the server"


def test_fhir_busy_server_is_retried_then_answers() -> None:
    with responses.RequestsMock() as mock:
        mock.get(URL, status=503)
        mock.get(URL, status=429, headers={"Retry-After": "0"})
        mock.get(URL, json={"resourceType": "Patient", "id": "p1"})
        assert reader().read("Patient/p1")["id"] == "p1"
        assert len(mock.calls) == 3


def test_fhir_busy_server_after_the_retries_is_unavailable() -> None:
    with responses.RequestsMock() as mock:
        mock.get(URL, status=503)
        with pytest.raises(Unavailable) as caught:
            reader(attempts=3).read("Patient/p1")
        assert len(mock.calls) == 3
    assert caught.value.cause == "server_error" and caught.value.status == 503


def test_fhir_500_and_401_are_not_retried() -> None:
    for status in (500, 401):
        with responses.RequestsMock() as mock:
            mock.get(URL, status=status)
            with pytest.raises(FhirError):
                reader().read("Patient/p1")
            assert len(mock.calls) == 1


@pytest.mark.parametrize("answer, message", [
    ({"body": "<html>login</html>", "content_type": "text/html"}, "not JSON"),
    ({"json": ["a", "list"]}, "not a FHIR resource"),
    ({"json": {"resourceType": "Patient", "id": "p1"}}, "expected a Bundle, got a Patient"),
])
def test_fhir_unusable_answer_is_invalid(answer: dict, message: str) -> None:
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Condition", **answer)
        with pytest.raises(Invalid) as caught:
            reader().read("Condition", expected="Bundle")
    assert message in caught.value.reason and caught.value.status == 200


def test_fhir_answer_over_the_cap_is_too_large() -> None:
    with responses.RequestsMock() as mock:
        mock.get(URL, body=b"{" + b" " * 5000 + b"}", content_type="application/json")
        with pytest.raises(TooLarge) as caught:
            read_json(build_session(), URL, timeout=5, max_bytes=1024)
    assert caught.value.url == URL


@pytest.mark.parametrize("link", [
    "https://elsewhere.example.org/fhir/Condition?page=2",
    "https://ehr.example.org/fhir/../admin/Condition?page=2",  # the CLI's old path startswith check took it
    "https://ehr.example.org/fhirx/Condition?page=2",
    "http://ehr.example.org/fhir/Condition?page=2",
])
def test_fhir_next_link_off_the_server_is_refused_by_policy(link: str) -> None:
    page = {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": link}],
            "entry": [{"resource": {"resourceType": "Condition", "id": "c1"}}]}
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Condition?patient=p1", json=page)
        with pytest.raises(RefusedByPolicy):
            reader().search("Condition?patient=p1")
        assert len(mock.calls) == 1  # never followed


def test_fhir_next_link_on_the_server_is_followed() -> None:
    first = {"resourceType": "Bundle", "link": [{"relation": "next", "url": f"{BASE}/Condition?page=2"}],
             "entry": [{"resource": {"resourceType": "Condition", "id": "c1"}}]}
    second = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Condition", "id": "c2"}}]}
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Condition?patient=p1", json=first)
        mock.get(f"{BASE}/Condition?page=2", json=second)
        assert [r["id"] for r in reader().search("Condition?patient=p1")] == ["c1", "c2"]


def test_fhir_bare_connection_error_is_unavailable() -> None:
    error = error_from_exception(requests.ConnectionError(), URL)
    assert isinstance(error, Unavailable) and error.cause == "connection" and error.metric_label == "connection"


def test_fhir_connection_refused_on_a_real_port() -> None:
    base = f"http://127.0.0.1:{free_port()}/fhir"
    with pytest.raises(Unavailable) as caught:
        FhirReader(base, sleep=lambda s: None, attempts=2).read("metadata")
    assert caught.value.cause == "connection_refused" and caught.value.reason == "connection refused"
    assert caught.value.url == f"{base}/metadata" and caught.value.status is None


def test_fhir_tls_to_a_plain_http_server_is_named() -> None:
    with LoopbackFhir() as server:
        https = server.base_url.replace("http://", "https://")
        with pytest.raises(Unavailable) as caught:
            FhirReader(https, sleep=lambda s: None).read("Patient/p1")
    assert caught.value.cause == "plain_http" and caught.value.metric_label == "connection"


def test_fhir_slow_server_times_out() -> None:
    with LoopbackFhir([{"resourceType": "Patient", "id": "p1"}], delay=3.0) as server:
        with pytest.raises(Unavailable) as caught:
            FhirReader(server.base_url, timeout=0.3, attempts=1).read("Patient/p1")
    assert caught.value.cause == "timeout" and caught.value.metric_label == "timeout"


def test_fhir_crawler_carries_the_typed_cause() -> None:
    """rules simulate from a server: a next link leaving it stops the run, the cause typed, the URL named."""
    page = {"resourceType": "Bundle", "link": [{"relation": "next", "url": "https://evil.example.org/Patient"}],
            "entry": [{"resource": {"resourceType": "Patient", "id": "p1"}}]}
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Patient?_count=100", json=page)
        with pytest.raises(ServerSourceError) as caught:
            list(ServerPopulation(BASE, ["1234-5"]).patient_bundles())
    assert isinstance(caught.value.error, RefusedByPolicy)
    assert "a next link leaves https://ehr.example.org/fhir" in str(caught.value)


def test_jwks_fetch_goes_through_the_fhir_client(caplog) -> None:
    """Authentication's key fetch uses fhir/reader.read_json: a redirect is not followed, and the log says
    why in the typed error's words (no requests exception text)."""
    from cds_service.auth.jwks import JWKSCache
    from cds_service.auth.rejection import AuthenticationError

    jwks_url = "https://ehr.example.org/.well-known/jwks.json"
    cache = JWKSCache(clock=lambda: 1000.0)
    with responses.RequestsMock() as mock:
        mock.get(jwks_url, status=302, headers={"Location": "https://evil.example.org/jwks.json"})
        with caplog.at_level("WARNING", logger="cds_service.auth.jwks"), pytest.raises(AuthenticationError):
            cache.get_key(f"url:{jwks_url}", "kid-1")
        assert len(mock.calls) == 1 and mock.calls[0].request.url == jwks_url
    assert any("HTTP 302: redirects are not followed" in r.getMessage() for r in caplog.records), caplog.text
