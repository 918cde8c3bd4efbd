"""Long-running admin jobs (dry runs) kept in the database, run by worker processes (admin/job_worker.py).

The table ``jobs`` (migration 0004) lives in the card store's database and is reached through its
SQLAlchemy engine (``JobStore.for_card_store``). A job's life:

    queued ──claim_next──▶ running ──finish──▶ done
       │                     │ └────fail────▶ failed
       └──cancel──▶ cancelled ◀──cancel (the worker sees it at its next heartbeat)──┘

* ``create`` commits before it returns: a job acknowledged to the admin is in the database.
* ``claim_next`` hands a queued job to exactly one worker: PostgreSQL ``FOR UPDATE SKIP LOCKED`` (workers
  never wait for each other), SQLite a ``BEGIN IMMEDIATE`` transaction (the card store's engine begins every
  write so: one writer at a time across processes).
* A running job whose worker stopped heartbeating for ``stale_after`` is queued again (by the next
  ``claim_next`` or ``requeue_stale``), unless it has been claimed ``MAX_ATTEMPTS`` times: then it fails,
  naming why, instead of crashing workers forever. A worker that lost its job that way is told so by its
  next ``heartbeat`` (``Beat.LOST``) and its late ``finish`` changes nothing. A worker told to stop
  ``release``s its job: queued again at once.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Integer, MetaData, String, Table, Text, and_, select,
                        update)
from sqlalchemy.engine import Connection, Engine

from cds_service.clock import system_clock
from cds_service.storage.store import UNAVAILABLE, CardStore, UtcDateTime, _error_type

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATUSES = frozenset({"done", "failed", "cancelled"})
DEFAULT_STALE_AFTER = timedelta(seconds=60)
MAX_ATTEMPTS = 3  # claims of one job; a job that keeps killing its worker fails after this many
MAX_ERROR_CHARS = 2000

metadata = MetaData()
jobs = Table(
    "jobs", metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),
    Column("params", JSON(), nullable=False),
    Column("inputs", JSON()),
    Column("status", String(16), nullable=False),
    Column("progress_done", Integer(), nullable=False),
    Column("progress_total", Integer()),
    Column("created_by", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime()),
    Column("finished_at", UtcDateTime()),
    Column("heartbeat_at", UtcDateTime()),
    Column("worker_id", String(200)),
    Column("attempts", Integer(), nullable=False),
    Column("cancel_requested", Boolean(), nullable=False),
    Column("message", Text()),  # what the worker is doing now ("reading the export", ...): no PHI
    Column("result", JSON()),
    Column("error", Text()),
)


class JobNotFound(LookupError):
    pass


class JobStoreUnavailable(RuntimeError):
    """The database did not answer (down, locked, timed out); the message names the driver's error type."""


class Beat(enum.Enum):
    """What a heartbeat tells the worker."""

    CONTINUE = "continue"
    CANCEL = "cancel"  # an admin asked to cancel: stop, then call ``cancelled``
    LOST = "lost"  # the job is no longer this worker's (re-queued after a stale heartbeat, or gone)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    params: dict[str, Any]
    inputs: dict[str, Any] | None
    status: str
    progress_done: int
    progress_total: int | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None
    attempts: int
    cancel_requested: bool
    message: str | None
    result: dict[str, Any] | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def fraction(self) -> float | None:
        """Share of the work done (None while the total is unknown)."""
        if self.status == "done":
            return 1.0
        if not self.progress_total:
            return None
        return min(1.0, self.progress_done / self.progress_total)


_SUMMARY_COLUMNS = [c for c in jobs.c if c.name not in ("result", "inputs")]


def _job(row: Any) -> Job:
    values = {"result": None, "inputs": None, **dict(row._mapping)}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


def _answering(method: F) -> F:
    """A database that does not answer raises ``JobStoreUnavailable`` (callers show a message, never a 500)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise JobStoreUnavailable(f"the database did not answer ({_error_type(exc)})") from None

    return wrapper  # type: ignore[return-value]


class JobStore:
    """The ``jobs`` table on ``engine`` (see the module docstring)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = system_clock,
                 stale_after: timedelta = DEFAULT_STALE_AFTER, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.engine = engine
        self.clock = clock
        self.stale_after = stale_after
        self.max_attempts = max_attempts

    @classmethod
    def for_card_store(cls, store: CardStore, **kwargs: Any) -> "JobStore":
        """On the card store's database (migrated by it: the table is migration 0004)."""
        return cls(store.engine, **kwargs)

    # --- the admin's side ------------------------------------------------------------------------
    @_answering
    def create(self, kind: str, params: dict[str, Any], created_by: str,
               inputs: dict[str, Any] | None = None) -> Job:
        """Queue a job; committed before this returns. ``params`` is what lists show; ``inputs`` what only
        the worker reads (``inputs["secrets"]``, e.g. a bearer token, is removed when a worker claims it)."""
        json.dumps([params, inputs])  # refuse what the database could not store, here rather than in a worker
        row = {"kind": kind, "params": params, "inputs": inputs, "status": "queued", "progress_done": 0,
               "progress_total": None, "created_by": created_by, "created_at": self.clock(), "attempts": 0, "cancel_requested": False}
        with self.engine.begin() as connection:
            new_id = connection.execute(jobs.insert().returning(jobs.c.id), row).scalar_one()
        return self.get(int(new_id))  # type: ignore[return-value]

    @_answering
    def get(self, job_id: int) -> Job | None:
        with self._read() as connection:
            row = connection.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row is not None else None

    @_answering
    def list(self, kind: str | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
        """Newest first, without their results and inputs (they can be large)."""
        query = select(*_SUMMARY_COLUMNS).order_by(jobs.c.id.desc()).limit(limit).offset(offset)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        with self._read() as connection:
            return [_job(row) for row in connection.execute(query)]

    @_answering
    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its worker sees it at the next
        heartbeat). A finished job is left as it is. ``JobNotFound`` when there is no such job."""
        now = self.clock()
        with self.engine.begin() as connection:
            connection.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
                               .values(status="cancelled", finished_at=now, cancel_requested=True, inputs=None))
            connection.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running")
                               .values(cancel_requested=True))
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    # --- the worker's side -----------------------------------------------------------------------
    @_answering
    def claim_next(self, worker_id: str, kinds: tuple[str, ...] | None = None) -> Job | None:
        """The oldest queued job, now running for ``worker_id``; None when there is none. Stale running
        jobs are re-queued first (or failed after ``max_attempts``). The job returned carries its inputs'
        secrets; the row keeps them no longer (a job queued again after a crash has none: it should fail,
        asking for the token again)."""
        now = self.clock()
        with self.engine.begin() as connection:
            self._requeue_stale(connection, now)
            query = select(jobs.c.id).where(jobs.c.status == "queued").order_by(jobs.c.id).limit(1)
            if kinds is not None:
                query = query.where(jobs.c.kind.in_(kinds))
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            job_id = connection.execute(query).scalar()
            if job_id is None:
                return None
            inputs = connection.execute(select(jobs.c.inputs).where(jobs.c.id == job_id)).scalar()
            kept = {k: v for k, v in inputs.items() if k != "secrets"} if isinstance(inputs, dict) else inputs
            claimed = connection.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
                .values(status="running", worker_id=worker_id, started_at=now, heartbeat_at=now, inputs=kept,
                        attempts=jobs.c.attempts + 1, progress_done=0, error=None)
                .returning(*jobs.c)).first()
        if claimed is None:
            return None
        job = _job(claimed)
        return replace(job, inputs=inputs)

    @_answering
    def requeue_stale(self) -> int:
        """Queue again the running jobs whose worker stopped heartbeating; returns how many changed."""
        with self.engine.begin() as connection:
            return self._requeue_stale(connection, self.clock())

    def _requeue_stale(self, connection: Connection, now: datetime) -> int:
        cutoff = now - self.stale_after
        stale = select(jobs.c.id).where(jobs.c.status == "running", jobs.c.heartbeat_at < cutoff)
        if connection.dialect.name == "postgresql":
            stale = stale.with_for_update(skip_locked=True)
        ids = [row[0] for row in connection.execute(stale)]
        if not ids:
            return 0
        lost = "the worker running it stopped (no heartbeat)"
        connection.execute(
            update(jobs).where(jobs.c.id.in_(ids), jobs.c.attempts >= self.max_attempts)
            .values(status="failed", finished_at=now, worker_id=None,
                    error=f"{lost} {self.max_attempts} times; not tried again"))
        connection.execute(
            update(jobs).where(jobs.c.id.in_(ids), jobs.c.status == "running", jobs.c.cancel_requested)
            .values(status="cancelled", finished_at=now, worker_id=None))
        connection.execute(
            update(jobs).where(jobs.c.id.in_(ids), jobs.c.status == "running")
            .values(status="queued", worker_id=None, heartbeat_at=None, message=f"queued again: {lost}"))
        return len(ids)

    @_answering
    def heartbeat(self, job_id: int, worker_id: str, *, done: int | None = None, total: int | None = None,
                  message: str | None = None) -> Beat:
        """Record progress and that the worker is alive; say whether to go on."""
        values: dict[str, Any] = {"heartbeat_at": self.clock()}
        if done is not None:
            values["progress_done"] = done
        if total is not None:
            values["progress_total"] = total
        if message is not None:
            values["message"] = message[:500]
        with self.engine.begin() as connection:
            row = connection.execute(
                update(jobs).where(self._owned(job_id, worker_id)).values(**values)
                .returning(jobs.c.cancel_requested)).first()
        if row is None:
            return Beat.LOST
        return Beat.CANCEL if row[0] else Beat.CONTINUE

    @_answering
    def release(self, job_id: int, worker_id: str) -> bool:
        """The worker is stopping (SIGTERM): its job goes back to the queue now, the claim not counted."""
        with self.engine.begin() as connection:
            row = connection.execute(
                update(jobs).where(self._owned(job_id, worker_id))
                .values(status="queued", worker_id=None, heartbeat_at=None, attempts=jobs.c.attempts - 1,
                        message="queued again: its worker stopped")
                .returning(jobs.c.id)).first()
        return row is not None

    def finish(self, job_id: int, worker_id: str, result: dict[str, Any]) -> bool:
        """Store the result (done); False when the job is no longer this worker's."""
        return self._end(job_id, worker_id, status="done", result=result, message=None)

    def fail(self, job_id: int, worker_id: str, error: str) -> bool:
        return self._end(job_id, worker_id, status="failed", error=error[:MAX_ERROR_CHARS])

    def cancelled(self, job_id: int, worker_id: str) -> bool:
        """The worker stopped on a cancel request."""
        return self._end(job_id, worker_id, status="cancelled", message="cancelled")

    @_answering
    def _end(self, job_id: int, worker_id: str, **values: Any) -> bool:
        with self.engine.begin() as connection:
            row = connection.execute(
                update(jobs).where(self._owned(job_id, worker_id))
                .values(finished_at=self.clock(), heartbeat_at=self.clock(), inputs=None, **values)
                .returning(jobs.c.id)).first()
        return row is not None

    @staticmethod
    def _owned(job_id: int, worker_id: str) -> Any:
        return and_(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status == "running")

    def _read(self) -> Any:
        return self.engine.connect().execution_options(cramp_read_only=True)


__all__ = ["Beat", "Job", "JobNotFound", "JobStore", "JobStoreUnavailable", "STATUSES", "FINAL_STATUSES", "jobs"]
