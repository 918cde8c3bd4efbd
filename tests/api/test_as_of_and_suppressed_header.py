"""Development mode's per-request evaluation clock (X-Cramp-As-Of) and the X-Cramp-Suppressed-Cards header
(docs/integration.md). The as-of tests run on the real clock: the fixtures are written for 2026-06-15."""

from __future__ import annotations

import pytest
from support.feedback import SECRET, Service, card_ids, cramps_request, dvt_request, overridden

from cds_service.settings import Settings
from cds_service.web.app import create_app

SERVICE = "/cds-services/leg-cramp-patient-view"
AS_OF = "X-Cramp-As-Of"


def _dev_app():
    return create_app(Settings(development_mode=True, database_url="sqlite://", patient_key_secret=SECRET))


def _post(app, body: dict, headers: dict | None = None):
    return app.test_client().post(SERVICE, json=body, headers=headers or {})


@pytest.mark.parametrize("as_of", ["2026-06-15", "2026-06-15T12:00:00Z", "2026-06-15T14:00:00+02:00"])
def test_as_of_in_development_mode_evaluates_fixture_08_at_that_time(as_of) -> None:
    app = _dev_app()
    response = _post(app, dvt_request(), {AS_OF: as_of})
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    assert [(c["indicator"], c["source"]["topic"]["code"]) for c in cards] == [("critical", "possible-dvt")]


def test_without_as_of_the_real_clock_is_used_and_fixture_08_is_not_critical() -> None:
    app = _dev_app()
    response = _post(app, dvt_request())
    assert response.status_code == 200
    assert "possible-dvt" not in card_ids(response.get_json()["cards"])
    # per request, no global state: an as-of call does not move the next call's clock
    assert _post(app, dvt_request(), {AS_OF: "2026-06-15"}).status_code == 200
    assert "possible-dvt" not in card_ids(_post(app, dvt_request()).get_json()["cards"])


def test_as_of_outside_development_mode_is_a_400_naming_the_header() -> None:
    settings = Settings(database_url="sqlite://", patient_key_secret=SECRET, public_base_urls="http://localhost")
    app = create_app(settings)
    app.before_request_funcs[None].remove(next(f for f in app.before_request_funcs[None]
                                               if f.__name__ == "authenticate_client"))  # the header's own check
    response = _post(app, dvt_request(), {AS_OF: "2026-06-15"})
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [AS_OF]
    assert AS_OF in outcome["issue"][0]["diagnostics"] and "development mode" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("value", ["yesterday", "2026-06-15T12:00:00", "2026-02-30", "15/06/2026", "2026-06-15T25:00:00Z", ""])
def test_as_of_bad_value_is_a_400_naming_the_header(value) -> None:
    response = _post(_dev_app(), dvt_request(), {AS_OF: value})
    assert response.status_code == 400, response.get_data(as_text=True)
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == [AS_OF] and "RFC 3339" in issue["diagnostics"]


def test_suppressed_cards_header_names_the_card_held_back_after_an_override() -> None:
    service = Service("sqlite://")
    client = service.app.test_client()
    first = client.post(SERVICE, json=cramps_request())
    assert first.headers["X-Cramp-Suppressed-Cards"] == ""  # on every hook response, empty when none
    [card] = first.get_json()["cards"]
    assert card_ids([card]) == ["conservative-care"]
    assert service.feedback(overridden(card["uuid"])).status_code == 200
    again = client.post(SERVICE, json=cramps_request())
    assert again.get_json()["cards"] == []
    assert again.headers["X-Cramp-Suppressed-Cards"] == "conservative-care"
    # another patient: not suppressed, and nothing about the first one
    other = client.post(SERVICE, json=cramps_request("another-patient-9"))
    assert other.headers["X-Cramp-Suppressed-Cards"] == ""


def test_cors_exposes_the_suppressed_header_and_allows_as_of() -> None:
    app = _dev_app()
    preflight = app.test_client().options(SERVICE, headers={
        "Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": AS_OF})
    assert AS_OF.lower() in preflight.headers.get("Access-Control-Allow-Headers", "").lower()
