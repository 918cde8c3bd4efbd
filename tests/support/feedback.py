"""Shared by the feedback tests: hook requests for the fixture patients, feedback bodies, an HTTP helper
around a Flask app, a `cramp-cds serve` subprocess, and ``FeedbackContract``, the database-independent
tests that ``test_feedback.py`` (SQLite) and ``test_feedback_postgres.py`` (PostgreSQL) run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import MetaData, select

from cds_service.clock import fixed_clock
from cds_service.hooks.feedback import parse_feedback
from cds_service.settings import Settings
from cds_service.storage.store import CardStore, FeedbackResult
from cds_service.web.app import create_app
from support.live_service import free_port, wait_healthy  # noqa: F401  (free_port: for importers)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fhir_fixtures"
SERVICE_ID = "leg-cramp-patient-view"
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)
SECRET = "test-patient-key-secret-0123456789"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
CRAMPS_PATIENT = "fixture-04"  # documented cramps + loop diuretic -> conservative-care (info, 90 days)
DVT_PATIENT = "fixture-08"  # R22.41 + M79.661 within 14 days -> possible-dvt (critical)
PATIENT_NAMES = ("Fixture", "Four", "Eight", "Quentin", "Zorro")


def hook_request(fixture: str, patient_id: str | None = None, name: tuple[str, str] | None = None) -> dict:
    """A fixture's patient-view request, optionally for another patient id (and name)."""
    folder = next(FIXTURES.glob(f"{fixture}-*"))
    text = (folder / "request.json").read_text()
    original = json.loads(text)["context"]["patientId"]
    body = json.loads(text.replace(original, patient_id) if patient_id else text)
    if name:
        body["prefetch"]["patient"]["name"] = [{"family": name[0], "given": [name[1]]}]
    return body


def cramps_request(patient_id: str | None = None) -> dict:
    return hook_request("04", patient_id, ("Zorro", "Quentin") if patient_id else None)


def dvt_request() -> dict:
    return hook_request("08")


def instant(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def overridden(card: str, at: datetime = NOW + timedelta(minutes=1), code: str = "cds-not-applicable",
               display: str = "Not clinically relevant", comment: str | None = None) -> dict:
    reason: dict[str, Any] = {"reason": {"system": NON_ADHERENCE, "code": code, "display": display}}
    if comment:
        reason["userComment"] = comment
    return {"card": card, "outcome": "overridden", "overrideReason": reason, "outcomeTimestamp": instant(at)}


def accepted(card: str, suggestions: list[str], at: datetime = NOW + timedelta(minutes=1)) -> dict:
    return {"card": card, "outcome": "accepted", "acceptedSuggestions": [{"id": s} for s in suggestions],
            "outcomeTimestamp": instant(at)}


def track_stores(monkeypatch: pytest.MonkeyPatch) -> list[CardStore]:
    """Record every CardStore opened from now on, so the test can close their pools at teardown."""
    opened: list[CardStore] = []
    original = CardStore.__init__

    def init(self: CardStore, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(CardStore, "__init__", init)
    return opened


# --- PostgreSQL (127.0.0.1:5432) ------------------------------------------------------------------------
POSTGRES_ADMIN_DSN = os.environ.get("CRAMP_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def postgres_unavailable(message: str) -> None:
    """Skip (or fail, with CRAMP_REQUIRE_POSTGRES=1 as .ci/run sets) when PostgreSQL can't be used."""
    if os.environ.get("CRAMP_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message} (CRAMP_REQUIRE_POSTGRES=1 makes this a failure)", pytrace=False)
    pytest.skip(f"{message}; set CRAMP_REQUIRE_POSTGRES=1 to make this a failure")


def postgres_admin_connection():
    try:
        import psycopg
    except ImportError:
        postgres_unavailable("psycopg is not installed (pip install '.[postgres]')")
    try:
        return psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        postgres_unavailable(f"PostgreSQL not reachable at {POSTGRES_ADMIN_DSN!r}: "
                             f"{str(error).strip().splitlines()[0]}")


@contextlib.contextmanager
def fresh_postgres_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int, str]]:
    """A new, empty database: yields (host, port, name); closes every CardStore opened, then drops it."""
    admin = postgres_admin_connection()
    name = f"cramp_test_{uuid.uuid4().hex[:12]}"
    info = admin.info
    admin.execute(f'CREATE DATABASE "{name}"')
    stores = track_stores(monkeypatch)
    try:
        yield info.host, info.port, name
    finally:
        for store in stores:
            store.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def postgres_url(host: str, port: int, name: str) -> str:
    return f"postgresql+psycopg://postgres@{host}:{port}/{name}"


class Service:
    """A Flask app's test client with the two calls the tests make."""

    def __init__(self, database_url: str, now: datetime = NOW, secret: str = SECRET) -> None:
        settings = Settings(development_mode=True, database_url=database_url, patient_key_secret=secret)
        self.app = create_app(settings, clock=fixed_clock(now))
        self.store = self.app.extensions["leg_cramp_store"]

    def cards(self, body: dict) -> list[dict]:
        response = self.app.test_client().post(f"/cds-services/{SERVICE_ID}", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["cards"]

    def feedback(self, *items: dict, service_id: str = SERVICE_ID, body: Any = None) -> Any:
        payload = {"feedback": list(items)} if body is None else body
        return self.app.test_client().post(f"/cds-services/{service_id}/feedback", json=payload)


def card_ids(cards: list[dict]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in cards]


def feedback_rows(store: Any) -> list[dict]:
    metadata = MetaData()
    metadata.reflect(store.engine, only=["feedback"])
    with store.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(select(metadata.tables["feedback"]))]


def all_rows(store: Any) -> dict[str, list[tuple]]:
    metadata = MetaData()
    metadata.reflect(store.engine)
    with store.engine.connect() as connection:
        return {name: [tuple(row) for row in connection.execute(select(table))]
                for name, table in metadata.tables.items()}


INVALID_BODIES: list[tuple[str, Any, str]] = [
    ("not an object", ["feedback"], "JSON object"),
    ("no feedback key", {}, "feedback is required"),
    ("feedback not an array", {"feedback": {}}, "feedback must be an array"),
    ("item not an object", {"feedback": ["x"]}, "feedback[0] must be a JSON object"),
    ("no card", {"feedback": [{"outcome": "overridden", "outcomeTimestamp": "2026-06-15T12:01:00Z"}]},
     "feedback[0].card is required"),
    ("card not a uuid", {"feedback": [{"card": "abc", "outcome": "overridden",
                                        "outcomeTimestamp": "2026-06-15T12:01:00Z"}]}, "feedback[0].card"),
    ("cds-fb-1 unknown outcome", "OUTCOME", "feedback[0].outcome"),
    ("cds-fb-2 accepted without suggestions", "ACCEPTED_BARE", "feedback[0].acceptedSuggestions"),
    ("cds-fb-3 empty overrideReason", "EMPTY_REASON", "feedback[0].overrideReason"),
    ("reason Coding without code", "REASON_NO_CODE", "feedback[0].overrideReason.reason.code"),
    ("no outcomeTimestamp", "NO_TIMESTAMP", "feedback[0].outcomeTimestamp is required"),
    ("timestamp not RFC 3339", "BAD_TIMESTAMP", "feedback[0].outcomeTimestamp"),
    ("timestamp not UTC", "LOCAL_TIMESTAMP", "feedback[0].outcomeTimestamp"),
    ("second item bad", "SECOND_BAD", "feedback[1].outcome"),
    ("timestamp in the future", "FUTURE", "feedback[0].outcomeTimestamp is in the future"),
    ("suggestion the card did not carry", "FOREIGN_SUGGESTION", "feedback[0].acceptedSuggestions[0].id"),
]


def invalid_body(kind: Any, card: str) -> Any:
    good = overridden(card)
    variants = {
        "OUTCOME": {**good, "outcome": "ignored"},
        "ACCEPTED_BARE": {**good, "outcome": "accepted"},
        "EMPTY_REASON": {**good, "overrideReason": {}},
        "REASON_NO_CODE": {**good, "overrideReason": {"reason": {"system": NON_ADHERENCE}}},
        "NO_TIMESTAMP": {k: v for k, v in good.items() if k != "outcomeTimestamp"},
        "BAD_TIMESTAMP": {**good, "outcomeTimestamp": "15/06/2026 12:01"},
        "LOCAL_TIMESTAMP": {**good, "outcomeTimestamp": "2026-06-15T14:01:00+02:00"},
        "SECOND_BAD": [good, {**good, "outcome": "maybe"}],
        "FUTURE": {**good, "outcomeTimestamp": instant(NOW + timedelta(days=1))},
        "FOREIGN_SUGGESTION": accepted(card, ["0b9c1d1e-7f57-4a51-9d2c-000000000000"]),
    }
    if not isinstance(kind, str):
        return kind
    item = variants[kind]
    return {"feedback": item if isinstance(item, list) else [item]}


class FeedbackContract:
    """The feedback behaviour, whatever the database. Subclasses provide the ``database_url`` fixture."""

    @pytest.fixture
    def service(self, database_url: str) -> Service:
        return Service(database_url)

    @pytest.fixture
    def card(self, service: Service) -> dict:
        cards = service.cards(cramps_request())
        assert card_ids(cards) == ["conservative-care"]
        return cards[0]

    @pytest.mark.parametrize("name, body, message", INVALID_BODIES, ids=[c[0] for c in INVALID_BODIES])
    def test_feedback_invalid_body_is_400_naming_the_field(self, service, card, name, body, message) -> None:
        response = service.feedback(body=invalid_body(body, card["uuid"]))
        assert response.status_code == 400, response.get_data(as_text=True)
        outcome = response.get_json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert message in outcome["issue"][0]["diagnostics"]
        assert feedback_rows(service.store) == []

    def test_feedback_valid_override_is_200_empty_object_and_stored(self, service, card) -> None:
        response = service.feedback(overridden(card["uuid"], comment="seen by vascular last week"))
        assert response.status_code == 200
        assert response.get_json() == {}
        [row] = feedback_rows(service.store)
        assert (row["card_uuid"], row["outcome"], row["override_reason_code"]) == (
            card["uuid"], "overridden", "cds-not-applicable")
        assert row["user_comment"] == "seen by vascular last week"

    def test_feedback_empty_list_is_200_and_stores_nothing(self, service) -> None:
        assert service.feedback().status_code == 200
        assert feedback_rows(service.store) == []

    def test_feedback_for_unknown_card_is_404_and_stores_nothing(self, service, card) -> None:
        unknown = "6f1d2c3b-0000-4000-8000-000000000001"
        response = service.feedback(overridden(card["uuid"]), overridden(unknown))
        assert response.status_code == 404
        assert "feedback[1].card" in response.get_json()["issue"][0]["diagnostics"]
        assert feedback_rows(service.store) == []  # all items or none

    def test_feedback_for_unknown_service_is_404(self, service, card) -> None:
        response = service.feedback(overridden(card["uuid"]), service_id="no-such-service")
        assert response.status_code == 404
        assert feedback_rows(service.store) == []

    def test_feedback_same_item_twice_is_stored_once(self, service, card) -> None:
        item = overridden(card["uuid"])
        assert service.feedback(item).status_code == 200
        assert service.feedback(item, item).status_code == 200
        # the same instant written another way is the same item
        same_instant = {**item, "outcomeTimestamp": item["outcomeTimestamp"].replace(".000000Z", "Z")}
        assert service.feedback(same_instant).status_code == 200
        assert len(feedback_rows(service.store)) == 1
        later = overridden(card["uuid"], at=NOW + timedelta(minutes=2))
        assert service.feedback(later).status_code == 200
        assert len(feedback_rows(service.store)) == 2

    def test_feedback_stored_count_counts_new_items_only(self, service, card) -> None:
        first, second = (parse_feedback({"feedback": [overridden(card["uuid"], at=NOW + timedelta(minutes=m))]})
                         for m in (1, 2))
        assert service.store.record_feedback(SERVICE_ID, first) == FeedbackResult(received=1, stored=1)
        assert service.store.record_feedback(SERVICE_ID, first + second) == FeedbackResult(received=2, stored=1)
        assert service.store.record_feedback(SERVICE_ID, first + second).duplicates == 2

    def test_feedback_accepted_with_its_suggestions(self, service, card) -> None:
        suggestion_ids = [s["uuid"] for s in card["suggestions"]]
        assert suggestion_ids
        response = service.feedback(accepted(card["uuid"], suggestion_ids))
        assert response.status_code == 200
        [row] = feedback_rows(service.store)
        assert row["outcome"] == "accepted"
        assert row["accepted_suggestions"] == suggestion_ids
        # accepted does not suppress
        assert card_ids(service.cards(cramps_request())) == ["conservative-care"]

    def test_override_suppresses_the_card_for_that_patient_for_its_days(self, service, card, database_url) -> None:
        assert service.feedback(overridden(card["uuid"])).status_code == 200
        assert service.cards(cramps_request()) == []  # same patient, any clinician
        other_clinician = cramps_request()
        other_clinician["context"]["userId"] = "Practitioner/someone-else"
        assert service.cards(other_clinician) == []
        assert card_ids(service.cards(cramps_request("another-patient-9"))) == ["conservative-care"]
        day_89 = Service(database_url, now=NOW + timedelta(days=89))
        assert day_89.cards(cramps_request()) == []
        day_91 = Service(database_url, now=NOW + timedelta(days=91))
        assert card_ids(day_91.cards(cramps_request())) == ["conservative-care"]

    def test_critical_card_is_never_suppressed(self, service) -> None:
        [card] = service.cards(dvt_request())
        assert (card["indicator"], card_ids([card])) == ("critical", ["possible-dvt"])
        assert service.feedback(overridden(card["uuid"])).status_code == 200
        again = service.cards(dvt_request())
        assert card_ids(again) == ["possible-dvt"]

    def test_suppression_holds_across_two_apps_sharing_the_database(self, database_url) -> None:
        first, second = Service(database_url), Service(database_url)
        [card] = second.cards(cramps_request())
        assert first.feedback(overridden(card["uuid"])).status_code == 200
        assert second.cards(cramps_request()) == []
        assert first.cards(cramps_request()) == []
        assert len(feedback_rows(second.store)) == 1

    def test_concurrent_feedback_is_stored_exactly_once(self, service) -> None:
        cards = [service.cards(cramps_request(f"patient-{n}"))[0]["uuid"] for n in range(8)]
        items = [overridden(uuid, at=NOW + timedelta(seconds=s)) for uuid in cards for s in (1, 2)]
        statuses: list[int] = []
        errors: list[BaseException] = []
        start = threading.Barrier(16)

        def post(worker: int) -> None:
            try:
                client = service.app.test_client()
                start.wait()
                for round_ in range(3):  # every thread sends every item: the same and different feedback
                    for item in items[worker:] + items[:worker]:
                        response = client.post(f"/cds-services/{SERVICE_ID}/feedback", json={"feedback": [item]})
                        statuses.append(response.status_code)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=post, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        assert statuses == [200] * (16 * 3 * len(items))
        rows = feedback_rows(service.store)
        keys = sorted((r["card_uuid"], r["outcome_timestamp"]) for r in rows)
        assert len(keys) == len(set(keys)) == len(items)

    def test_no_patient_id_or_name_in_any_table(self, service) -> None:
        [card] = service.cards(cramps_request())
        service.cards(cramps_request("another-patient-9"))
        [dvt] = service.cards(dvt_request())
        assert service.feedback(overridden(card["uuid"], comment="talked it through"),
                                overridden(dvt["uuid"])).status_code == 200
        tables = all_rows(service.store)
        assert tables["cards_shown"] and tables["feedback"]
        dump = json.dumps(tables, default=str)
        for needle in (CRAMPS_PATIENT, DVT_PATIENT, "another-patient-9", *PATIENT_NAMES):
            assert needle not in dump
        assert service.store.patient_key(CRAMPS_PATIENT) in dump  # the keyed hash is what is kept


# --- a real server in a subprocess ----------------------------------------------------------------------
class ServerProcess:
    """`cramp-cds serve` on 127.0.0.1 and a free port, with the given database: in development mode, unless
    ``env`` configures authentication (CRAMP_DEV_MODE=0, CRAMP_TRUSTED_CLIENTS_FILE, ...)."""

    def __init__(self, database_url: str, log_path: Path, *, workers: int = 2, threads: int = 4,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CRAMP_DEV_MODE": "1", "CRAMP_DATABASE_URL": database_url,
               "CRAMP_PATIENT_KEY_SECRET": SECRET, "CRAMP_LOG_LEVEL": "WARNING", **(env or {})}
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cds_service.cli.main import main; sys.exit(main())",
             "serve", "--port", str(self.port), "--workers", str(workers), "--threads", str(threads)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=log_path.parent,
            start_new_session=True,  # its own process group: kill() reaches gunicorn's workers too
        )
        self.log_path = log_path

    def wait_healthy(self, seconds: float = 30) -> None:
        wait_healthy(self.base, self.process, seconds=seconds, log_path=self.log_path)

    def post(self, path: str, body: Any, timeout: float = 10, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def cards(self, body: dict) -> list[dict]:
        status, answer = self.post(f"/cds-services/{SERVICE_ID}", body)
        assert status == 200, answer
        return answer["cards"]

    def kill(self) -> None:
        """SIGKILL the server and its workers (the process group this object started), as a crash would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL for anything left in the group; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # orphaned workers, if any
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self._log.close()
