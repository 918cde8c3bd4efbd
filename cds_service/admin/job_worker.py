"""The job worker: claims dry-run jobs from the database (``storage/jobs.py``) and runs them
(``admin/dry_run.py``), outside any request worker. ``cramp-cds worker`` runs one; ``cramp-cds serve``
starts one beside gunicorn (``cli/worker.py``).

    worker = JobWorker(JobStore.for_card_store(store), settings)
    worker.run_once()            # claim one job and run it to its end (None: nothing queued)
    worker.run(stop=event.is_set) # until stop() is true; idle polls every ``poll_seconds``

While a job runs, a heartbeat thread records its progress every ``heartbeat_seconds`` (so a run busy in one
long step, a bulk export's wait or a slow chunk of patients, is not taken for a dead one) and learns from the
answer whether the job was cancelled or lost; the run then stops at its next patient or poll. A job that
raises is failed with a one-line message (the type and message of a dry-run error; for anything else only
the exception type, never data). ``release`` puts the running job back in the queue when the worker is
told to stop (SIGTERM), so another worker takes it over at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable

from cds_service.admin.dry_run import (DryRunError, DryRunStopped, Progress, RuleText, Source, allowed_dirs,
                                       check_source, run_dry_run)
from cds_service.settings import Settings
from cds_service.storage.jobs import Beat, Job, JobStore

log = logging.getLogger(__name__)

DRY_RUN = "dry_run"
HEARTBEAT_SECONDS = 2.0
POLL_SECONDS = 1.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Running:
    """The state the heartbeat thread and the run share."""

    job: Job
    progress: Progress
    stop: threading.Event
    beat: Beat = Beat.CONTINUE


def dry_run_job(active_version: str, active_text: str, draft_version: str, draft_text: str, source: Source,
                as_of: date, *, token: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, inputs) of a dry-run job: params are listed (no token, no rule texts); inputs go to the worker
    only (the rule texts as they were when the job was created; the token as a secret)."""
    params = {"active": active_version, "draft": draft_version, "source": source.to_json(),
              "as_of": as_of.isoformat(), "token": bool(token)}
    inputs: dict[str, Any] = {"active": active_text, "draft": draft_text}
    if token:
        inputs["secrets"] = {"token": token}
    return params, inputs


class JobWorker:
    def __init__(self, store: JobStore, settings: Settings, *, worker_id: str | None = None,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, processes: int | None = None,
                 work_root: Path | None = None, allowed_output_prefixes: tuple[str, ...] = ()) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.heartbeat_seconds = heartbeat_seconds
        self.processes = processes
        self.work_root = work_root
        self.allowed_output_prefixes = allowed_output_prefixes
        self._current: _Running | None = None

    # ------------------------------------------------------------ the loop

    def run(self, stop: Callable[[], bool], poll_seconds: float = POLL_SECONDS, max_jobs: int | None = None,
            wait: Callable[[float], Any] | None = None) -> int:
        """Run jobs until ``stop()`` (checked between jobs and while idle); returns how many ran."""
        idle = threading.Event()
        wait = wait or idle.wait
        ran = 0
        while not stop() and (max_jobs is None or ran < max_jobs):
            try:
                job = self.run_once()
            except Exception as exc:  # the database did not answer: wait and try again, never die
                log.warning("job worker: claiming failed", extra={"error_type": type(exc).__name__})
                job = None
            if job is None:
                wait(poll_seconds)
            else:
                ran += 1
        return ran

    def run_once(self) -> Job | None:
        """Claim the next job and run it to its end; the job as it ended, or None when none was queued."""
        job = self.store.claim_next(self.worker_id, kinds=(DRY_RUN,))
        if job is None:
            return None
        log.info("job started", extra={"job_id": job.id, "kind": job.kind, "attempt": job.attempts})
        running = _Running(job, Progress(0, None, "starting"), threading.Event())
        self._current = running
        beating = threading.Thread(target=self._heartbeat, args=(running,), name=f"job-{job.id}-heartbeat",
                                   daemon=True)
        beating.start()
        try:
            self._run(running)
        finally:
            running.stop.set()
            beating.join(timeout=10)
            self._current = None
        final = self.store.get(job.id)
        log.info("job ended", extra={"job_id": job.id, "status": final.status if final else "?"})
        return final

    def release(self) -> None:
        """Stop the running job and queue it again (the worker is shutting down)."""
        running = self._current
        if running is not None:
            running.beat = Beat.LOST
            running.stop.set()
            self.store.release(running.job.id, self.worker_id)

    # ------------------------------------------------------------ one job

    def _run(self, running: _Running) -> None:
        job = running.job
        try:
            result = self._dry_run(running)
        except DryRunStopped:
            if running.beat is Beat.CANCEL:
                self.store.cancelled(job.id, self.worker_id)
            return  # lost (taken over, or released): the job is no longer ours to end
        except DryRunError as error:
            self.store.fail(job.id, self.worker_id, str(error))
            return
        except Exception as exc:  # a bug: the job fails with the type only (a message may carry data)
            log.exception("job failed unexpectedly", extra={"job_id": job.id})
            self.store.fail(job.id, self.worker_id, f"internal error ({type(exc).__name__}); see the worker's log")
            return
        if running.beat is Beat.CONTINUE:  # the last word before the result: cancelled or lost meanwhile?
            patients = int(result.get("patients", 0)) + len(result.get("not_evaluated", []))
            running.beat = self.store.heartbeat(job.id, self.worker_id, done=patients, total=patients,
                                                message="done")
        if running.beat is Beat.CANCEL:
            self.store.cancelled(job.id, self.worker_id)
        elif running.beat is Beat.CONTINUE:
            self.store.finish(job.id, self.worker_id, result)

    def _dry_run(self, running: _Running) -> dict[str, Any]:
        params, inputs = running.job.params, running.job.inputs or {}
        source = Source.from_json(params.get("source") or {})
        problem = check_source(source, self.settings)  # again: the folder or allowlist may have changed
        if problem:
            raise DryRunError(f"source refused: {problem}")
        if not isinstance(inputs.get("active"), str) or not isinstance(inputs.get("draft"), str):
            raise DryRunError("the job has no rule-set texts")
        token = (inputs.get("secrets") or {}).get("token")
        if params.get("token") and not token:
            raise DryRunError("the bearer token is no longer available (the job was restarted after a worker "
                              "stopped); start the dry run again")
        try:
            as_of = date.fromisoformat(str(params.get("as_of")))
        except ValueError:
            raise DryRunError(f"not a date: {params.get('as_of')!r}") from None

        def progress(step: Progress) -> None:
            running.progress = step
            if running.stop.is_set():
                raise DryRunStopped()

        def sleep(seconds: float) -> None:  # a stop request cuts a wait short
            running.stop.wait(seconds)

        result = run_dry_run(
            RuleText(inputs["active"], f"active {params.get('active')}"),
            RuleText(inputs["draft"], f"draft {params.get('draft')}"),
            source, as_of, progress=progress, should_stop=running.stop.is_set, token=token,
            processes=self.processes, allowed_output_prefixes=self.allowed_output_prefixes,
            work_root=self.work_root, sleep=sleep, allowed=allowed_dirs(self.settings))
        return result.to_json()

    def _heartbeat(self, running: _Running) -> None:
        while True:
            step = running.progress
            try:
                beat = self.store.heartbeat(running.job.id, self.worker_id, done=step.done, total=step.total,
                                            message=step.message)
            except Exception as exc:  # the database missed one beat: the next may land
                log.warning("job heartbeat failed", extra={"job_id": running.job.id,
                                                           "error_type": type(exc).__name__})
                beat = Beat.CONTINUE
            if beat is not Beat.CONTINUE and running.beat is Beat.CONTINUE:
                running.beat = beat
                running.stop.set()
            if running.stop.wait(self.heartbeat_seconds):
                return


__all__ = ["DRY_RUN", "JobWorker", "dry_run_job", "new_worker_id"]
