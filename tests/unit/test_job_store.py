"""The job store (storage/jobs.py) on SQLite and PostgreSQL: a job is claimed by one worker only, a worker
that stops heartbeating loses its job to another, cancel stops queued and running jobs, nothing
acknowledged is lost."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from sqlalchemy.exc import OperationalError
from support.feedback import fresh_postgres_database, postgres_url

from cds_service.storage.jobs import Beat, JobNotFound, JobStore, JobStoreUnavailable
from cds_service.storage.store import CardStore

SECRET = "s" * 32
START = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path, monkeypatch) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
        return
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        yield postgres_url(host, port, name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def open_store(url: str, clock: Clock) -> JobStore:
    """One 'process': its own card store (its own engine and connections) on the shared database."""
    return JobStore.for_card_store(CardStore(url, SECRET), clock=clock, stale_after=timedelta(seconds=60))


def test_a_created_job_is_stored_queued_with_its_params(database_url, clock) -> None:
    store = open_store(database_url, clock)
    job = store.create("dry_run", {"draft": "2026.12.2", "source": {"kind": "fixtures"}}, "alice")
    again = open_store(database_url, clock).get(job.id)  # committed: another connection sees it
    assert again is not None
    assert (again.status, again.kind, again.created_by, again.params["draft"]) == ("queued", "dry_run", "alice",
                                                                                  "2026.12.2")
    assert again.created_at == START and again.attempts == 0 and again.fraction is None
    assert [j.id for j in store.list()] == [job.id]


def test_each_job_is_claimed_by_exactly_one_of_two_workers(database_url, clock) -> None:
    first, second = open_store(database_url, clock), open_store(database_url, clock)
    created = [first.create("dry_run", {"n": n}, "alice").id for n in range(12)]
    claimed: dict[str, list[int]] = {"w1": [], "w2": []}
    start = threading.Barrier(2)

    def work(store: JobStore, worker: str) -> None:
        start.wait(timeout=10)
        for _ in range(200):  # bounded: 12 jobs, a few lock retries at most
            try:
                job = store.claim_next(worker)
            except OperationalError:  # SQLite: the other worker held the write lock past the busy timeout
                continue
            if job is None:
                return
            assert job.status == "running" and job.worker_id == worker
            claimed[worker].append(job.id)

    threads = [threading.Thread(target=work, args=(s, w)) for s, w in ((first, "w1"), (second, "w2"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    everything = claimed["w1"] + claimed["w2"]
    assert sorted(everything) == created  # every job once, none twice
    assert all(first.get(i).status == "running" for i in created)


def test_oldest_queued_job_first_and_none_when_empty(database_url, clock) -> None:
    store = open_store(database_url, clock)
    assert store.claim_next("w1") is None
    a = store.create("dry_run", {}, "alice")
    b = store.create("dry_run", {}, "bob")
    assert store.claim_next("w1").id == a.id
    assert store.claim_next("w1").id == b.id
    assert store.claim_next("w1") is None


def test_progress_heartbeat_and_result(database_url, clock) -> None:
    store = open_store(database_url, clock)
    job = store.create("dry_run", {}, "alice")
    store.claim_next("w1")
    clock.advance(5)
    assert store.heartbeat(job.id, "w1", done=3, total=12, message="evaluating") is Beat.CONTINUE
    running = store.get(job.id)
    assert (running.progress_done, running.progress_total, running.fraction) == (3, 12, 0.25)
    assert running.heartbeat_at == START + timedelta(seconds=5) and running.message == "evaluating"
    assert store.finish(job.id, "w1", {"patients": 12, "cards": {"x": [1, 2]}})
    done = store.get(job.id)
    assert done.status == "done" and done.result == {"patients": 12, "cards": {"x": [1, 2]}}
    assert done.finished and done.fraction == 1.0
    assert store.list()[0].result is None  # the list leaves the (possibly large) results out
    assert store.heartbeat(job.id, "w1") is Beat.LOST  # a finished job is nobody's


def test_a_stale_job_is_queued_again_and_its_old_worker_told_it_lost_it(database_url, clock) -> None:
    first, second = open_store(database_url, clock), open_store(database_url, clock)
    job = first.create("dry_run", {}, "alice")
    assert first.claim_next("w1").id == job.id
    clock.advance(30)
    assert second.claim_next("w2") is None  # 30 s without a heartbeat: not stale yet
    clock.advance(31)
    taken = second.claim_next("w2")  # 61 s: stale, queued again, claimed by w2
    assert taken is not None and taken.id == job.id and taken.worker_id == "w2" and taken.attempts == 2
    assert first.heartbeat(job.id, "w1", done=1) is Beat.LOST
    assert not first.finish(job.id, "w1", {"late": True})  # the late result of the lost worker changes nothing
    assert second.finish(job.id, "w2", {"patients": 1})
    assert first.get(job.id).result == {"patients": 1}


def test_requeue_stale_without_claiming_and_failure_after_max_attempts(database_url, clock) -> None:
    store = open_store(database_url, clock)
    job = store.create("dry_run", {}, "alice")
    for attempt in range(1, 4):
        claimed = store.claim_next(f"w{attempt}")
        assert claimed is not None and claimed.attempts == attempt
        clock.advance(61)
    assert store.requeue_stale() == 1
    failed = store.get(job.id)
    assert failed.status == "failed" and "stopped" in failed.error and failed.finished_at == clock.now
    assert store.claim_next("w4") is None


def test_a_heartbeating_worker_keeps_its_job(database_url, clock) -> None:
    first, second = open_store(database_url, clock), open_store(database_url, clock)
    job = first.create("dry_run", {}, "alice")
    first.claim_next("w1")
    for _ in range(5):
        clock.advance(50)
        assert first.heartbeat(job.id, "w1") is Beat.CONTINUE
        assert second.claim_next("w2") is None


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_next_heartbeat(database_url, clock) -> None:
    store = open_store(database_url, clock)
    queued = store.create("dry_run", {}, "alice")
    running = store.create("dry_run", {}, "alice")
    assert store.cancel(queued.id).status == "cancelled"
    assert store.claim_next("w1").id == running.id  # the cancelled one is never claimed
    assert store.cancel(running.id).status == "running"  # asked; the worker decides when to stop
    assert store.heartbeat(running.id, "w1", done=1) is Beat.CANCEL
    assert store.cancelled(running.id, "w1")
    assert store.get(running.id).status == "cancelled"
    assert store.cancel(running.id).status == "cancelled"  # again: unchanged
    with pytest.raises(JobNotFound):
        store.cancel(987654)


def test_a_cancelled_job_whose_worker_died_ends_cancelled_not_queued(database_url, clock) -> None:
    store = open_store(database_url, clock)
    job = store.create("dry_run", {}, "alice")
    store.claim_next("w1")
    store.cancel(job.id)
    clock.advance(61)
    assert store.claim_next("w2") is None
    assert store.get(job.id).status == "cancelled"


def test_failure_message_is_stored(database_url, clock) -> None:
    store = open_store(database_url, clock)
    job = store.create("dry_run", {}, "alice")
    store.claim_next("w1")
    assert store.fail(job.id, "w1", "the FHIR server answered 503")
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error == "the FHIR server answered 503"


def test_inputs_reach_the_worker_once_and_their_secrets_leave_the_database_at_the_claim(database_url, clock) -> None:
    store = open_store(database_url, clock)
    job = store.create("dry_run", {"source": "bulk"}, "alice",
                       inputs={"rules": ["a: 1"], "secrets": {"token": "tok-123"}})
    assert store.list()[0].inputs is None  # lists never read inputs
    claimed = store.claim_next("w1")
    assert claimed.inputs == {"rules": ["a: 1"], "secrets": {"token": "tok-123"}}
    assert store.get(job.id).inputs == {"rules": ["a: 1"]}  # the token is no longer stored
    clock.advance(61)
    again = store.claim_next("w2")  # after a crash: queued again, without the secret
    assert again.inputs == {"rules": ["a: 1"]}
    store.finish(job.id, "w2", {})
    assert store.get(job.id).inputs is None


def test_a_released_job_is_queued_again_at_once_without_counting_the_claim(database_url, clock) -> None:
    store = open_store(database_url, clock)
    job = store.create("dry_run", {}, "alice")
    store.claim_next("w1")
    assert store.release(job.id, "w1")
    assert not store.release(job.id, "w1")  # no longer its job
    again = store.claim_next("w2")
    assert again.id == job.id and again.attempts == 1


def test_a_database_that_does_not_answer_is_a_typed_error(tmp_path) -> None:
    from sqlalchemy import create_engine

    broken = JobStore(create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}"))
    with pytest.raises(JobStoreUnavailable, match="did not answer"):
        broken.list()
    with pytest.raises(JobStoreUnavailable):
        broken.claim_next("w1")
