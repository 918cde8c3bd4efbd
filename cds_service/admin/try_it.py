"""Try it: one patient under the active rule set and a draft, side by side, as a CDS client would show the
cards (admin/card_page.render_card) and with the explanation of each (admin/explanation.py).

The patient comes from one of three places (``PatientSource``):

- a bundled fixture (``fhir_fixtures/NN-name``: the hand-worked patient-view scenarios, listed by name,
  each evaluated by default on the day its expected cards were worked out for);
- an uploaded file: a FHIR Bundle holding one patient, or a patient-view hook request with prefetch
  (at most ``MAX_UPLOAD_BYTES``; errors name the field);
- a FHIR server: its base URL must be on the service's FHIR allowlist (``CRAMP_FHIR_ALLOWLIST``), with a
  patient id and an optional bearer token; the data is read by the service's own FHIR client through the
  rule set's prefetch templates, exactly as for an EHR's hook call that sent no prefetch.

Each rule set runs on an engine built like a dry run's (admin/simulation.build_engines: the drug table
shipped, a fixed clock at 12:00 UTC of the chosen day) and without a card ledger: nothing is recorded and
no card is suppressed by an earlier override. The token is used for this one read and never stored or logged.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import yaml

from cds_service.admin.card_page import render_card
from cds_service.admin.explanation import Explanation, explain, render_explanation_html
from cds_service.admin.population import BundleError, record_from_bundle
from cds_service.admin.simulation import build_engines
from cds_service.engine.pipeline import Engine
from cds_service.engine.registry import PATIENT_VIEW_SERVICE
from cds_service.errors import ServiceError
from cds_service.fhir.client import FhirFetcher
from cds_service.fhir.errors import RefusedByPolicy
from cds_service.hooks.request import parse_hook_request
from cds_service.ruleset.loader import RuleSet
from cds_service.settings import Settings

MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # a generous single patient; the page says so
MAX_JSON_DEPTH = 100  # deeper JSON is refused before parsing (FHIR resources nest a dozen levels)
TRY_FHIR_DEADLINE_SECONDS = 10.0  # an admin waits longer than an EHR's hook call (CRAMP_FHIR_DEADLINE_SECONDS)
FIXTURES_DIR = Path(__file__).resolve().parents[2] / "fhir_fixtures"
TRY_USER = "Practitioner/admin-console-try-it"


class TryError(ValueError):
    """Bad input for Try it: ``field`` is the form field it belongs to, the message says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# ---------------------------------------------------------------- fixtures

@dataclass(frozen=True)
class Fixture:
    name: str  # the folder name, e.g. 02-risk-below-threshold
    scenario: str
    as_of: date | None  # the day its expected cards were worked out for
    expected_cards: tuple[str, ...]


def fixtures_dir() -> Path | None:
    """The hand-worked fixtures: next to the package (a source checkout), else ./fhir_fixtures."""
    for candidate in (FIXTURES_DIR, Path.cwd() / "fhir_fixtures"):
        if candidate.is_dir():
            return candidate
    return None


def list_fixtures(directory: Path | None = None) -> list[Fixture]:
    """The patient-view fixtures, by name (the order-hook ones are left out: Try it shows patient-view)."""
    directory = directory or fixtures_dir()
    if directory is None:
        return []
    found = []
    for folder in sorted(p for p in directory.iterdir() if (p / "request.json").is_file()):
        if folder.name.startswith("order-"):  # the order-select / order-sign scenarios
            continue
        expected = _expected(folder)
        found.append(Fixture(folder.name, str(expected.get("scenario", "")), _date(expected.get("now")),
                             tuple(str(c.get("id")) for c in expected.get("cards") or [] if isinstance(c, dict))))
    return found


def _expected(folder: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((folder / "expected.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _date(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------- patient sources

@dataclass(frozen=True)
class PatientSource:
    kind: str  # fixture | upload | fhir
    label: str  # shown on the page: the fixture's name, the file's name, the server and id
    body: dict[str, Any] = field(repr=False)  # a patient-view hook request (PHI; the token for kind "fhir")
    default_as_of: date | None = None
    fixture: Fixture | None = None  # kind "fixture": its scenario and the cards expected under the bundled rules
    fhir_settings: Settings | None = field(default=None, repr=False)  # kind "fhir": the fetcher's settings


def patient_from_fixture(name: str, directory: Path | None = None) -> PatientSource:
    """A fixture by its listed name (only a listed name: never a path)."""
    directory = directory or fixtures_dir()
    by_name = {f.name: f for f in list_fixtures(directory)}
    if directory is None or name not in by_name:
        raise TryError("fixture", f"no bundled fixture is named {name!r}")
    body = _parse_json((directory / name / "request.json").read_bytes(), "fixture")
    fixture = by_name[name]
    return PatientSource("fixture", f"fixture {name}", _patient_view_request(body, "fixture"), fixture.as_of, fixture)


def patient_from_upload(data: bytes, filename: str = "upload") -> PatientSource:
    """An uploaded Bundle (one patient) or patient-view hook request with prefetch."""
    if not data:
        raise TryError("upload", "the file is empty: choose a FHIR Bundle or a hook-request JSON file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise TryError("upload", f"the file is {len(data)} bytes; at most {MAX_UPLOAD_BYTES} bytes are read")
    body = _parse_json(data, "upload")
    label = f"file {Path(filename or 'upload').name}"
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        try:
            record = record_from_bundle(body, label)
        except BundleError as exc:
            raise TryError("upload", str(exc)) from None
        return PatientSource("upload", label, record.hook_request(user=TRY_USER))
    return PatientSource("upload", label, _patient_view_request(body, "upload"))


def patient_from_fhir(url: str, patient_id: str, token: str | None, settings: Settings) -> PatientSource:
    """A patient on a FHIR server of the allowlist, read through the prefetch templates when tried."""
    url, patient_id, token = (url or "").strip(), (patient_id or "").strip(), (token or "").strip() or None
    if not url:
        raise TryError("fhir_url", "give the FHIR server's base URL")
    if not patient_id:
        raise TryError("patient_id", "give the patient's id on that server")
    fetch_settings = settings.with_changes(
        fhir_deadline_seconds=max(settings.fhir_deadline_seconds, TRY_FHIR_DEADLINE_SECONDS))
    try:
        FhirFetcher(fetch_settings).check_server(url)
    except RefusedByPolicy as refused:
        allowed = ", ".join(settings.fhir_server_allowlist) or "none configured (CRAMP_FHIR_ALLOWLIST)"
        raise TryError("fhir_url", f"{url} {' and '.join(refused.reasons)} (allowed: {allowed})") from None
    body: dict[str, Any] = {
        "hook": "patient-view", "hookInstance": _hook_instance(),
        "context": {"userId": TRY_USER, "patientId": patient_id},
        "fhirServer": url.rstrip("/"),
    }
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": TRY_USER}
    try:
        parse_hook_request(body)
    except ServiceError as exc:
        raise TryError("patient_id" if "patientId" in (exc.expression or "") else "fhir_url", exc.message) from None
    return PatientSource("fhir", f"{url.rstrip('/')} Patient/{patient_id}", body, fhir_settings=fetch_settings)


def _hook_instance() -> str:
    return str(uuid.uuid4())


def _parse_json(data: bytes, where: str) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TryError(where, "the file is not UTF-8 text (a FHIR JSON file is)") from None
    if _nesting(text) > MAX_JSON_DEPTH:
        raise TryError(where, f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise TryError(where, f"not valid JSON ({exc})") from None


def _nesting(text: str) -> int:
    """How deep brackets nest, outside strings (so that json.loads never recurses without bound)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _patient_view_request(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise TryError(where, "expected a JSON object: a FHIR Bundle or a CDS Hooks request")
    if "hook" not in body:
        raise TryError(where, "expected a FHIR Bundle or a CDS Hooks request: field 'hook' is missing "
                              f"(resourceType is {body.get('resourceType')!r})")
    if body.get("hook") != "patient-view":
        raise TryError(where, f"field 'hook' is {body.get('hook')!r}; Try it reads patient-view requests")
    try:
        parse_hook_request(body)
    except ServiceError as exc:
        field_name = f" (field {exc.expression})" if exc.expression else ""
        raise TryError(where, f"{exc.message}{field_name}") from None
    return body


# ---------------------------------------------------------------- running it

@dataclass(frozen=True)
class Column:
    """One rule set's answer for the patient."""

    title: str  # "Active" or "Draft"
    version: str
    cards: tuple[dict[str, Any], ...] = ()  # as the CDS client receives them (wire JSON)
    cards_html: tuple[str, ...] = ()  # each as a CDS client shows it
    explanation: Explanation | None = None
    explanation_html: str = ""
    error: str | None = None  # the call was refused (e.g. 412: required data could not be read)

    @property
    def card_ids(self) -> tuple[str, ...]:
        return tuple(str(((c.get("source") or {}).get("topic") or {}).get("code", "")) for c in self.cards)


@dataclass(frozen=True)
class TryResult:
    patient: str
    as_of: date
    columns: tuple[Column, ...]
    fixture: Fixture | None = None

    @property
    def differs(self) -> bool:
        """Do the columns show different cards (by card id)?"""
        return len({(c.card_ids, c.error is None) for c in self.columns}) > 1


def try_patient(source: PatientSource, rule_sets: Sequence[tuple[str, RuleSet]], as_of: date | None = None
                ) -> TryResult:
    """Run the patient under each ``(title, rule set)``; ``as_of`` defaults to the source's day, else today."""
    day = as_of or source.default_as_of or date.today()
    engines = _engines([rs for _, rs in rule_sets], day, source)
    columns = tuple(_run(title, ruleset, engine, source, day)
                    for (title, ruleset), engine in zip(rule_sets, engines))
    return TryResult(source.label, day, columns, source.fixture)


def _engines(rule_sets: list[RuleSet], day: date, source: PatientSource) -> list[Engine]:
    engines = build_engines(rule_sets, day)
    if source.fhir_settings is None:
        return engines
    # The same engines, with the service's own FHIR client to read what the templates ask for.
    fetcher = FhirFetcher(source.fhir_settings)
    return [Engine(e.ruleset, e.drugs, clock=e.clock, fetcher=fetcher) for e in engines]


def _run(title: str, ruleset: RuleSet, engine: Engine, source: PatientSource, day: date) -> Column:
    try:
        result = engine.run(engine.registry.get(PATIENT_VIEW_SERVICE), parse_hook_request(source.body))
    except ServiceError as exc:
        where = f" (field {exc.expression})" if exc.expression else ""
        return Column(title, ruleset.version, error=f"{exc.status}: {exc.message}{where}")
    cards = tuple(result.response.get("cards") or ())
    explanation = explain(result, ruleset, patient_label=source.label,
                          rules_label=f"{title.lower()} rule set", day=day)
    return Column(title, ruleset.version, cards, tuple(render_card(c) for c in cards), explanation,
                  render_explanation_html(explanation))
