"""The job worker (admin/job_worker.py) in this process on a SQLite file: how a job ends when its rule set
is invalid, its source refused, the run breaks, or the job is lost to another worker mid-run."""

from __future__ import annotations

from datetime import date
from importlib import resources

import pytest

from cds_service.admin import job_worker as job_worker_module
from cds_service.admin.dry_run import Source
from cds_service.admin.job_worker import DRY_RUN, JobWorker, dry_run_job
from cds_service.settings import Settings
from cds_service.storage.jobs import Beat, JobStore
from cds_service.storage.store import CardStore

ACTIVE = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore.for_card_store(CardStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}", "k" * 32))


def queue(store: JobStore, draft: str = ACTIVE, source: Source = Source("fixtures"), token: str | None = None):
    params, inputs = dry_run_job("2026.12.1", ACTIVE, "2026.12.2", draft, source, date(2026, 6, 15), token=token)
    return store.create(DRY_RUN, params, "eddie", inputs)


def worker(store: JobStore, **settings) -> JobWorker:
    return JobWorker(store, Settings(**settings), processes=1, heartbeat_seconds=0.05)


def test_an_invalid_draft_fails_the_job_naming_the_line(store) -> None:
    job = queue(store, draft=ACTIVE.replace("  threshold: 3\n", "  threshold: three\n", 1))
    ended = worker(store).run_once()
    assert ended.id == job.id and ended.status == "failed"
    assert "draft 2026.12.2: invalid rule set (line " in ended.error and "threshold" in ended.error


def test_a_source_refused_when_the_worker_checks_it_again(store, tmp_path) -> None:
    queue(store, source=Source("folder", str(tmp_path)))
    ended = worker(store).run_once()
    assert ended.status == "failed" and ended.error.startswith("source refused: not under an allowed directory")


def test_an_unexpected_error_fails_the_job_with_its_type_only(store, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise KeyError("Patient Jane Doe 1950-01-01")  # stands for data a message could carry

    monkeypatch.setattr(job_worker_module, "run_dry_run", broken)
    queue(store)
    ended = worker(store).run_once()
    assert ended.status == "failed" and ended.error == "internal error (KeyError); see the worker's log"


def test_a_job_lost_mid_run_is_left_to_the_worker_that_has_it(store) -> None:
    class Lost(JobStore):
        def heartbeat(self, *args, **kwargs) -> Beat:
            super().heartbeat(*args, **kwargs)
            return Beat.LOST  # as if another worker had taken it over

    lost = Lost(store.engine)
    job = queue(lost)
    ended = worker(lost).run_once()
    assert ended.id == job.id and ended.status == "running" and ended.result is None  # not finished by us


def test_a_bulk_job_without_its_token_fails_asking_to_start_again(store) -> None:
    job = queue(store, source=Source("bulk", "https://ehr.example.org/fhir"), token="t")
    store.claim_next("crashed-worker")  # the token left the row with this claim
    store.release(job.id, "crashed-worker")
    ended = worker(store, fhir_server_allowlist=("https://ehr.example.org/fhir",)).run_once()
    assert ended.status == "failed" and "bearer token is no longer available" in ended.error


def test_nothing_queued(store) -> None:
    assert worker(store).run_once() is None
