"""Every JSON example of the CDS Hooks specs (../shared/spec/artifacts/examples-extracted/*/*.json), POSTed
as it stands to /cds-services/leg-cramp-patient-view, answered with the status ../shared/spec/STATUS.md
gives it and never a 5xx; plus the CDS Hooks Sandbox's real request (sandbox/request-patient-view.json).

``*-wrapped.json`` files are fragments (``"context": {...}``) and are sent wrapped in ``{`` ``}``.
Nothing is completed: a fragment without ``hook`` is a request without ``hook``.

    example(s)                                          what it is                        status (STATUS.md row)
    --------------------------------------------------  --------------------------------  ---------------------------------
    spec201-01, spec300-01                              patient-view request, external    412 naming patient, conditions
                                                        http fhirServer + token, prefetch (required data missing, no fetch,
                                                        only "patientToGreet"             no network call)
    spec201-25, spec300-28                              patient-view request, context     400 naming context.patientId
                                                        without patientId, no prefetch
    spec300-03                                          order-sign request (full)         400 naming hook (hook differs)
    hooks-library-5d04c4d/* (all 10),                   context fragments of patient-     400 naming hook (hook missing)
    spec201-03/04/05/27/29, spec300-07/08/30/32         view, order-select, order-sign,
                                                        medication-prescribe, or custom
    spec201-02/06/07/28, spec300-02/04/05/06/09/10/31   prefetch fragments                400 naming hook
    spec201-08, spec300-11                              fhirAuthorization fragment        400 naming hook
    spec201-00/26, spec300-00/29                        discovery documents               400 naming hook
    spec201-09/15/16/17, spec300-12/18/19/20            responses {"cards": ...}          400 naming hook; and the body
                                                                                          validates with CdsResponse,
                                                                                          except spec201-17 = spec300-20:
                                                                                          a card without the REQUIRED
                                                                                          indicator (spec erratum)
    spec201-10..14, spec300-13..17                      source, actions, overrideReasons  400 naming hook
    spec201-18..20, spec300-21..23                      feedback                          400 naming hook
    spec201-21..24, spec300-24..27                      JWT header, payload, JWKS, JWK    400 naming hook
    sandbox/request-patient-view.json (body)            Sandbox patient-view, prefetch    200, cards valid, CORS header;
                                                        patient, conditions, medrequests, medrequests/medstatements are
                                                        medstatements; http fhirServer    keys we never asked for: ignored
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cds_service.hooks.cards import CdsResponse
from support.app import SHARED_DIR, make_app
from support.hook_requests import SERVICE_URL

EXAMPLES = Path("spec", "artifacts", "examples-extracted")
SANDBOX = Path("spec", "sandbox", "request-patient-view.json")
EXPECTED: dict[str, tuple[int, tuple[str, ...]]] = {  # the rows that are not "no hook -> 400 naming hook"
    "spec201-01-valid.json": (412, ("patient", "conditions")),
    "spec300-01-valid.json": (412, ("patient", "conditions")),
    "spec201-25-valid.json": (400, ("context.patientId",)),
    "spec300-28-valid.json": (400, ("context.patientId",)),
    "spec300-03-valid.json": (400, ("hook",)),
}
INDICATORLESS = {"spec201-17-valid.json", "spec300-20-valid.json"}  # spec erratum, see test_card_model.py


def _example_names() -> list[str]:
    folder = SHARED_DIR / EXAMPLES
    if not folder.is_dir():
        return ["<shared material missing>"]  # the shared_dir fixture skips it
    return sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.json"))


def load_example(shared_dir: Path, name: str) -> tuple[str, Any]:
    """The example as the text to send, and as parsed JSON."""
    text = (shared_dir / EXAMPLES / name).read_text(encoding="utf-8")
    if name.endswith("-wrapped.json"):
        text = "{" + text + "}"
    return text, json.loads(text)


def expected_for(name: str, example: Any) -> tuple[int, tuple[str, ...]]:
    basename = Path(name).name
    if basename in EXPECTED:
        return EXPECTED[basename]
    assert isinstance(example, dict) and "hook" not in example, f"{name} needs a row in EXPECTED"
    return 400, ("hook",)


def secrets_in(value: Any) -> list[str]:
    """Access tokens and private key material an example carries: never to be echoed back."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("access_token", "d") and isinstance(item, str) and len(item) > 8:
                found.append(item)
            found += secrets_in(item)
    elif isinstance(value, list):
        for item in value:
            found += secrets_in(item)
    return found


@pytest.mark.parametrize("name", _example_names())
def test_spec_example_gets_its_status(shared_dir: Path, name: str, client, no_network) -> None:
    text, example = load_example(shared_dir, name)
    status, names = expected_for(name, example)
    response = client.post(SERVICE_URL, data=text, headers={"Content-Type": "application/json"})
    body_text = response.get_data(as_text=True)
    assert response.status_code < 500, body_text[:500]
    assert response.status_code == status, body_text[:500]
    for forbidden in ("Traceback", 'File "', *secrets_in(example)):
        assert forbidden not in body_text
    outcome = json.loads(body_text)
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error" and issue["code"] and issue["diagnostics"]
    for field in names:
        assert field in issue["diagnostics"], f"{field!r} not named in {issue['diagnostics']!r}"
    assert no_network.attempts == []


def _response_example_names() -> list[str]:
    if not (SHARED_DIR / EXAMPLES).is_dir():
        return ["<shared material missing>"]
    return [n for n in _example_names() if '"cards"' in load_example(SHARED_DIR, n)[0]]


@pytest.mark.parametrize("name", _response_example_names())
def test_spec_response_example_validates(shared_dir: Path, name: str) -> None:
    _, example = load_example(shared_dir, name)
    assert isinstance(example, dict) and "cards" in example
    if Path(name).name in INDICATORLESS:
        with pytest.raises(ValidationError, match="indicator"):
            CdsResponse.model_validate(example)
        return
    CdsResponse.model_validate(example)


def test_every_example_is_covered(shared_dir: Path) -> None:
    names = {Path(n).name for n in _example_names()}
    assert set(EXPECTED) | INDICATORLESS <= names
    assert len(names) >= 73  # 10 hooks-library + 30 spec 2.0.1 + 33 spec 3.0 ballot at the time of writing
    assert len(_response_example_names()) == 8


# ------------------------------------------------------------------------------- CDS Hooks Sandbox


@pytest.fixture
def sandbox(shared_dir: Path) -> dict[str, Any]:
    return json.loads((shared_dir / SANDBOX).read_text(encoding="utf-8"))


def test_sandbox_request_is_answered(sandbox: dict[str, Any], no_network) -> None:
    """What the Sandbox sent, minus its JWT (development mode): 200 with valid cards and CORS."""
    headers = {k: v for k, v in sandbox["headers"].items() if k in ("Origin", "Content-Type", "Accept")}
    assert "Origin" in headers and "Content-Type" in headers
    client = make_app().test_client()
    response = client.post(SERVICE_URL, data=json.dumps(sandbox["body"]), headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    CdsResponse.model_validate(response.get_json())
    assert response.headers.get("Access-Control-Allow-Origin") in (headers["Origin"], "*")
    text = response.get_data(as_text=True)
    patient = sandbox["body"]["prefetch"]["patient"]
    for name in patient.get("name", []):
        assert name["family"] not in text
    assert no_network.attempts == []


def test_sandbox_prefetch_keys(sandbox: dict[str, Any]) -> None:
    """Pins the premise of the test above: required keys present, the others unknown to this service."""
    client = make_app().test_client()
    templates = next(s for s in client.get("/cds-services").get_json()["services"]
                     if s["id"] == "leg-cramp-patient-view")["prefetch"]
    sent = set(sandbox["body"]["prefetch"])
    assert {"patient", "conditions"} <= sent
    assert sent - set(templates) == {"medrequests", "medstatements"}
