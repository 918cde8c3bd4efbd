"""Shared fixtures: the ../shared material, a development-mode app on a fixed clock, its test client,
and ``minimal_request`` (a valid patient-view request with prefetch) for HTTP-level tests.

Import the helpers with ``from conftest import minimal_request, PATIENT_ID, PATIENT_NAME``.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
import responses

from cds_service.app import create_app
from cds_service.clock import fixed_clock
from cds_service.settings import Settings

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
NOW = "2026-06-15T12:00:00Z"
SERVICE_ID = "leg-cramp-patient-view"
SERVICE_URL = f"/cds-services/{SERVICE_ID}"
PATIENT_ID = "p-zq-1"
# A distinctive name: tests assert it never appears in any response body (no PHI echoed back).
PATIENT_NAME = ("Zebulon", "Quixote")
DROP = object()  # ``minimal_request(hook=DROP)`` removes the key


def patient_resource(**fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "name": [{"given": [PATIENT_NAME[0]], "family": PATIENT_NAME[1]}],
        "gender": "male",
        "birthDate": "1960-03-02",
    }
    resource.update(fields)
    return resource


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def minimal_request(**overrides: Any) -> dict[str, Any]:
    """A valid patient-view request: Patient with birthDate and an empty Condition searchset.

    Keyword arguments replace top-level fields (``prefetch=...``, ``context=...``); ``DROP`` removes one.
    """
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient_resource(), "conditions": searchset()},
    }
    for key, value in overrides.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = copy.deepcopy(value)
    return body


def make_app(**settings: Any):
    settings.setdefault("database_url", "sqlite://")  # an in-memory card store per app (docs/feedback.md)
    return create_app(Settings(development_mode=True, **settings), clock=fixed_clock(NOW))


class NetworkGuard:
    """Outbound calls attempted during a test: through ``requests`` (refused by ``responses``) or any
    raw socket (refused too). The service may catch the refusal, so tests assert ``attempts == []``."""

    def __init__(self, mock: responses.RequestsMock) -> None:
        self._mock = mock
        self.sockets: list[Any] = []

    @property
    def attempts(self) -> list[str]:
        return [call.request.url for call in self._mock.calls] + [repr(a) for a in self.sockets]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        guard = NetworkGuard(mock)

        def refuse(sock: socket.socket, address: Any, *args: Any) -> None:
            guard.sockets.append(address)
            raise ConnectionRefusedError(f"test forbids network access (to {address!r})")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket.socket, "connect_ex", refuse)
        yield guard
    assert guard.attempts == [], f"the service made outbound calls: {guard.attempts}"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared material not found at {SHARED_DIR} (expected next to the repository as ../shared)")
    return SHARED_DIR


@pytest.fixture
def app():
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
