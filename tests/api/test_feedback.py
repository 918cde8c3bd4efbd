"""Feedback, suppression and the report on the default store, a SQLite file (docs/feedback.md).

The database-independent behaviour is ``FeedbackContract`` (support/feedback.py), run here on SQLite and
in test_feedback_postgres.py on PostgreSQL.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from support.feedback import (NOW, SECRET, FeedbackContract, Service, accepted, cramps_request, dvt_request, overridden,
                              track_stores)

from cds_service.admin.feedback_report import render_html
from cds_service.cli.main import main
from cds_service.settings import Settings, SettingsError
from cds_service.storage.store import MIGRATIONS_DIR, CardStore
from cds_service.web.app import create_app


@pytest.fixture
def database_url(tmp_path, monkeypatch) -> Iterator[str]:
    stores = track_stores(monkeypatch)
    yield f"sqlite:///{tmp_path / 'cards.sqlite3'}"
    for store in stores:
        store.close()


class TestFeedbackOnSqlite(FeedbackContract):
    pass


def test_store_sqlite_is_wal_with_full_sync(database_url, tmp_path) -> None:
    store = CardStore(database_url, SECRET)
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    with sqlite3.connect(tmp_path / "cards.sqlite3") as raw:
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"cards_shown", "feedback", "alembic_version", "ix_feedback_suppression"} <= names


def test_store_migrations_are_idempotent(database_url) -> None:
    CardStore(database_url, SECRET)
    CardStore(database_url, SECRET)  # a second start (another replica) finds the schema at head
    with CardStore(database_url, SECRET).engine.connect() as connection:
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert revision == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def test_patient_key_is_hmac_sha256_of_the_id_under_the_secret() -> None:
    store = CardStore("sqlite://", SECRET)
    expected = hmac.new(SECRET.encode(), b"fixture-04", hashlib.sha256).hexdigest()
    assert store.patient_key("fixture-04") == expected
    assert CardStore("sqlite://", SECRET + "x").patient_key("fixture-04") != expected


def test_patient_key_secret_is_required_outside_development_mode() -> None:
    with pytest.raises(SettingsError, match="CRAMP_PATIENT_KEY_SECRET"):
        create_app(Settings(database_url="sqlite://"))
    with pytest.raises(SettingsError, match="CRAMP_PATIENT_KEY_SECRET"):
        Settings.from_env({"CRAMP_PATIENT_KEY_SECRET": "short"})
    settings = Settings.from_env({"CRAMP_PATIENT_KEY_SECRET": SECRET})
    assert settings.patient_key_secret == SECRET and SECRET not in repr(settings)


def test_development_mode_without_secret_uses_one_random_key_per_process() -> None:
    first, _ = Settings(development_mode=True).patient_key_secret_or_default()
    second, is_random = Settings(development_mode=True).patient_key_secret_or_default()
    assert first == second and is_random and len(first) >= 32


def test_unsupported_database_url_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="CRAMP_DATABASE_URL"):
        CardStore("mysql://root@127.0.0.1/test", SECRET)
    with pytest.raises(SettingsError, match="CRAMP_DATABASE_URL"):
        CardStore("not a url", SECRET)


def _seed_report(database_url: str) -> None:
    service = Service(database_url)
    cards = [service.cards(cramps_request(f"p-{n}"))[0] for n in range(4)]
    [dvt] = service.cards(dvt_request())
    assert service.feedback(
        overridden(cards[0]["uuid"]),
        overridden(cards[0]["uuid"]),  # the same item again: counted once
        overridden(cards[1]["uuid"], code="patient-refuses", display="Patient refuses"),
        overridden(cards[2]["uuid"]),
        accepted(cards[3]["uuid"], [s["uuid"] for s in cards[3]["suggestions"]]),
        overridden(dvt["uuid"], code="action-completed", display="Already evaluated"),
    ).status_code == 200


def test_report_counts_per_card_and_ruleset_version(database_url) -> None:
    _seed_report(database_url)
    rows = {row.rule: row for row in CardStore(database_url, None).report()}
    care = rows["conservative-care"]
    assert (care.shown, care.accepted, care.overridden) == (4, 1, 3)
    assert care.accept_rate == 0.25 and care.override_rate == 0.75
    assert [(r.code, r.cards) for r in care.top_reasons] == [("cds-not-applicable", 2), ("patient-refuses", 1)]
    assert (rows["possible-dvt"].shown, rows["possible-dvt"].overridden) == (1, 1)
    later = datetime(2026, 6, 16, tzinfo=timezone.utc)
    assert CardStore(database_url, None).report(since=later) == []


def test_report_command_table_csv_html(database_url) -> None:
    _seed_report(database_url)
    runner = CliRunner()
    table = runner.invoke(main, ["feedback", "report", "--database-url", database_url])
    assert table.exit_code == 0, table.output
    assert "conservative-care" in table.output and "75.0%" in table.output
    assert "Not clinically relevant (2)" in table.output

    as_csv = runner.invoke(main, ["feedback", "report", "--format", "csv", "--database-url", database_url])
    rows = {row["rule"]: row for row in csv.DictReader(io.StringIO(as_csv.output))}
    assert rows["conservative-care"]["shown"] == "4" and rows["conservative-care"]["override_rate"] == "0.7500"
    assert rows["conservative-care"]["top_reason_1_code"] == "cds-not-applicable"

    html = runner.invoke(main, ["feedback", "report", "--format", "html", "--database-url", database_url]).output
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<style>" in html
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html

    since = runner.invoke(main, ["feedback", "report", "--since", "2026-06-16", "--database-url", database_url])
    assert since.exit_code == 0 and "conservative-care" not in since.output


def test_report_command_reads_the_database_url_from_the_environment(database_url) -> None:
    _seed_report(database_url)
    result = CliRunner().invoke(main, ["feedback", "report"], obj=None, env={"CRAMP_DATABASE_URL": database_url})
    assert result.exit_code == 0 and "possible-dvt" in result.output


def test_report_command_on_a_missing_database_exits_1(tmp_path) -> None:
    result = CliRunner().invoke(main, ["feedback", "report", "--database-url", f"sqlite:///{tmp_path}/none.db"])
    assert result.exit_code == 1
    assert "no SQLite database" in result.output
    assert not (tmp_path / "none.db").exists()


def test_report_html_escapes_reason_text() -> None:
    from cds_service.storage.store import ReasonCount, ReportRow

    row = ReportRow("r<1>", "v&1", 2, 0, 1, (ReasonCount("s", "c", "<b>x</b>", 1),))
    html = render_html([row], now=NOW)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "r&lt;1&gt;" in html


def test_settings_without_a_database_url_write_into_the_test_directory_not_the_working_tree() -> None:
    # issue 11 item 12: the product default stays ./leg-cramp-cds.sqlite3, relative to where it runs;
    # tests run in a temporary directory of their own (conftest.py), so it is never the checkout's.
    repo = Path(__file__).resolve().parents[2]
    default = repo / "leg-cramp-cds.sqlite3"
    before = default.stat().st_mtime_ns if default.exists() else None
    settings = Settings(development_mode=True)
    assert settings.database_url == "sqlite:///leg-cramp-cds.sqlite3"
    app = create_app(settings)
    assert app.test_client().post("/cds-services/leg-cramp-patient-view", json=dvt_request()).status_code == 200
    app.extensions["leg_cramp_store"].close()
    assert (Path.cwd() / "leg-cramp-cds.sqlite3").is_file()
    assert repo not in Path.cwd().parents and Path.cwd() != repo
    assert (default.stat().st_mtime_ns if default.exists() else None) == before
