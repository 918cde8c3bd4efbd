"""Feedback and suppression on PostgreSQL (127.0.0.1:5432): the same contract as on SQLite, plus two
`cramp-cds serve` processes on different ports sharing one database.

Each test gets a fresh database, dropped afterwards. When PostgreSQL does not answer, the tests are skipped
with a message, unless CRAMP_REQUIRE_POSTGRES=1 (as .ci/run sets), which turns that into a failure.
Another server: CRAMP_TEST_POSTGRES (a libpq connection string; default below).
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from typing import Iterator

import pytest
from feedback_support import FeedbackContract, ServerProcess, cramps_request, feedback_rows, overridden, track_stores

from cds_service.store import CardStore

pytestmark = pytest.mark.postgres

ADMIN_DSN = os.environ.get("CRAMP_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def _unavailable(message: str) -> None:
    if os.environ.get("CRAMP_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message} (CRAMP_REQUIRE_POSTGRES=1 makes this a failure)", pytrace=False)
    pytest.skip(f"{message}; set CRAMP_REQUIRE_POSTGRES=1 to make this a failure")


def _admin_connection():
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install '.[postgres]')")
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        _unavailable(f"PostgreSQL not reachable at {ADMIN_DSN!r}: {str(error).strip().splitlines()[0]}")


@pytest.fixture
def database_url(monkeypatch) -> Iterator[str]:
    admin = _admin_connection()
    name = f"cramp_test_{uuid.uuid4().hex[:12]}"
    info = admin.info
    admin.execute(f'CREATE DATABASE "{name}"')
    stores = track_stores(monkeypatch)
    try:
        yield f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
    finally:
        for store in stores:
            store.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class TestFeedbackOnPostgres(FeedbackContract):
    pass


def test_postgres_schema_has_the_unique_item_and_the_suppression_index(database_url) -> None:
    store = CardStore(database_url, "x" * 32)
    CardStore(database_url, "x" * 32)  # a second replica starting: migrations already at head
    with store.engine.connect() as connection:
        indexes = {row[0] for row in connection.exec_driver_sql(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'feedback'")}
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert {"uq_feedback_item", "ix_feedback_suppression"} <= indexes
    assert version == "0002"  # 0002: jwt_seen (JWT replay protection)
    store.close()


def test_two_server_processes_sharing_postgres_share_suppression(database_url, tmp_path) -> None:
    first = ServerProcess(database_url, tmp_path / "first.log", workers=1, threads=2)
    second = ServerProcess(database_url, tmp_path / "second.log", workers=1, threads=2)
    try:
        first.wait_healthy()
        second.wait_healthy()
        body = cramps_request("shared-patient-1")
        [card] = first.cards(body)
        status, answer = second.post(
            "/cds-services/leg-cramp-patient-view/feedback",
            {"feedback": [overridden(card["uuid"], at=datetime.now(timezone.utc))]},
        )
        assert (status, answer) == (200, {})
        assert second.cards(body) == []
        assert first.cards(body) == []
        assert [c["source"]["topic"]["code"] for c in first.cards(cramps_request("shared-patient-2"))] == [
            "conservative-care"]
    finally:
        first.stop()
        second.stop()
    assert len(feedback_rows(CardStore(database_url, None, migrate=False))) == 1
