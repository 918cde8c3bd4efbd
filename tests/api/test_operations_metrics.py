"""Operations metrics through GET /metrics: authentication rejections by coarse category, the build-info
gauge (service and rule-set versions, following a rule-set reload), fetch outcomes (issue 16 item 3)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from support.hook_requests import SERVICE_URL, minimal_request
from support.security import TestIssuer, secure_app

from cds_service import __version__
from cds_service.settings import Settings
from cds_service.web.app import create_app

BUNDLED_RULES = resources.files("cds_service").joinpath("data/ruleset.yaml")


def _sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value in the exposition text, None when absent."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.split("{", 1)[0] == name and all(f'{k}="{v}"' in sample for k, v in labels.items()):
            return float(value)
    return None


def _metrics(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer.create()


def test_auth_rejections_are_counted_by_category(tmp_path: Path, issuer: TestIssuer) -> None:
    client = secure_app(tmp_path, issuer).test_client()
    before = _metrics(client)
    body = minimal_request()
    assert client.post(SERVICE_URL, json=body).status_code == 401  # no Authorization: missing
    assert client.post(SERVICE_URL, json=body, headers={"Authorization": "Bearer not.a.jwt"}).status_code == 401
    assert client.post(SERVICE_URL, json=body, headers={"Authorization": "Bearer x"}).status_code == 401
    token = issuer.token(SERVICE_URL)
    assert client.post(SERVICE_URL, json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.post(SERVICE_URL, json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    after = _metrics(client)

    def delta(category: str) -> float:
        name = "cramp_auth_rejections_total"
        return (_sample(after, name, category=category) or 0) - (_sample(before, name, category=category) or 0)

    assert delta("missing") == 1
    assert delta("malformed") == 2
    assert delta("replayed") == 1
    assert delta("signature") == 0  # the accepted call is not counted
    assert "# TYPE cramp_auth_rejections_total counter" in after


def test_build_info_names_the_service_and_rule_set_versions_and_follows_a_reload(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    text = BUNDLED_RULES.read_text(encoding="utf-8")
    old_version = next(line.split('"')[1] for line in text.splitlines() if line.startswith("version:"))
    rules.write_text(text, encoding="utf-8")
    app = create_app(Settings(development_mode=True, rules_path=rules, rules_source="file"))
    client = app.test_client()
    first = _metrics(client)
    assert _sample(first, "cramp_build_info", version=__version__, ruleset_version=old_version) == 1

    rules.write_text(text.replace(f'version: "{old_version}"', 'version: "2099.1.1"'), encoding="utf-8")
    app.extensions["leg_cramp_engines"].request_reload()  # as SIGHUP does
    assert client.post(SERVICE_URL, json=minimal_request()).status_code == 200  # the request takes the new engine
    reloaded = _metrics(client)
    assert _sample(reloaded, "cramp_build_info", version=__version__, ruleset_version="2099.1.1") == 1
    assert _sample(reloaded, "cramp_build_info", version=__version__, ruleset_version=old_version) == 0


def test_fetch_outcomes_are_exposed_by_resource_and_outcome(app, client) -> None:
    from cds_service.web.metrics import metrics_of

    metrics_of(app).fhir_read_finished("Condition?patient=secret-id", 0.01)
    metrics_of(app).fhir_read_finished("Observation?patient=secret-id", 0.02, error="timeout")
    text = _metrics(client)
    assert (_sample(text, "cramp_fhir_fetch_duration_seconds_count", resource="Condition", outcome="ok") or 0) >= 1
    assert (_sample(text, "cramp_fhir_fetch_errors_total", resource="Observation", reason="timeout") or 0) >= 1
    assert "secret-id" not in text
