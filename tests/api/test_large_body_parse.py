"""A large request body is parsed with the cyclic collector held off, and the collector runs again after
(web/views.py, engine/gc_pause.py); a small one is parsed with the collector as it was."""

from __future__ import annotations

import gc

import orjson
import pytest

from cds_service.web import views
from support.hook_requests import minimal_request


@pytest.fixture
def parse_states(monkeypatch):
    seen: list[bool] = []
    real = orjson.loads

    def recording(raw):
        seen.append(gc.isenabled())
        return real(raw)

    monkeypatch.setattr(views.orjson, "loads", recording)
    return seen


def _padded(size: int) -> bytes:
    body = minimal_request()
    body["extension"] = {"padding": "x" * size}
    return orjson.dumps(body)


def test_a_large_body_is_parsed_with_the_collector_held_and_it_runs_again_after(client, parse_states):
    assert gc.isenabled()
    response = client.post("/cds-services/leg-cramp-patient-view", data=_padded(views.LARGE_BODY_BYTES),
                           content_type="application/json")
    assert response.status_code == 200
    assert parse_states == [False]
    assert gc.isenabled()


def test_a_small_body_is_parsed_with_the_collector_running(client, parse_states):
    response = client.post("/cds-services/leg-cramp-patient-view", data=_padded(10),
                           content_type="application/json")
    assert response.status_code == 200
    assert parse_states == [True]
