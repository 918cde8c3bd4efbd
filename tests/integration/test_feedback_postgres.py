"""Feedback and suppression on PostgreSQL (127.0.0.1:5432): the same contract as on SQLite, plus two
`cramp-cds serve` processes on different ports sharing one database.

Each test gets a fresh database, dropped afterwards. When PostgreSQL does not answer, the tests are skipped
with a message, unless CRAMP_REQUIRE_POSTGRES=1 (as .ci/run sets), which turns that into a failure.
Another server: CRAMP_TEST_POSTGRES (a libpq connection string; default in support/feedback.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

import pytest
from alembic.script import ScriptDirectory
from support.feedback import (FeedbackContract, ServerProcess, cramps_request, feedback_rows, fresh_postgres_database,
                              overridden, postgres_url)

from cds_service.storage.store import MIGRATIONS_DIR, CardStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url(monkeypatch) -> Iterator[str]:
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        yield postgres_url(host, port, name)


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
    assert version == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()  # every migration ran
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
