"""``cramp-cds worker``: run the admin console's dry-run jobs (``admin/job_worker.py``) from the database
at CRAMP_DATABASE_URL, until SIGTERM or Ctrl-C (the job running then goes back to the queue).

    cramp-cds worker [--once] [--processes N] [--poll-seconds S]

``cramp-cds serve`` starts one (``job_worker_process``) unless ``--no-worker`` or CRAMP_JOB_WORKER=0; it
passes ``--parent-pid`` so that the worker also stops when the server is gone without telling it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, Mapping

import click

from cds_service.settings import SettingsError

WORKER_VARIABLE = "CRAMP_JOB_WORKER"
STOP_TIMEOUT_SECONDS = 15
OPEN_RETRY_SECONDS = 30


class CliError(click.ClickException):
    """The worker cannot start (settings, database); exit 1 with one line."""

    exit_code = 1


def worker_enabled(env: Mapping[str, str]) -> bool:
    """CRAMP_JOB_WORKER (default on); click.BadParameter naming it when it is not true/false."""
    raw = (env.get(WORKER_VARIABLE) or "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise click.UsageError(f"{WORKER_VARIABLE}: expected true/false, got {env.get(WORKER_VARIABLE)!r}")


@contextlib.contextmanager
def job_worker_process(env: Mapping[str, str], enabled: bool = True) -> Iterator[subprocess.Popen | None]:
    """One ``cramp-cds worker`` process for as long as the block runs (``serve``): stopped with SIGTERM
    (its job is queued again), killed if it does not stop within STOP_TIMEOUT_SECONDS."""
    if not enabled:
        yield None
        return
    command = [sys.executable, "-c", "import sys; from cds_service.cli.main import main; sys.exit(main())",
               "worker", "--parent-pid", str(os.getpid())]
    process = subprocess.Popen(command, env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    click.echo(f"Dry-run job worker started (pid {process.pid}); {WORKER_VARIABLE}=0 or --no-worker to run "
               "none here", err=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _open_store(card_store: Any, unavailable: type[Exception], url: str, secret: str, cli_error: Any) -> Any:
    """The card store, tried for up to OPEN_RETRY_SECONDS: the server's workers, starting at the same
    moment, hold the schema lock in turn (SQLite)."""
    deadline = time.monotonic() + OPEN_RETRY_SECONDS
    while True:
        try:
            return card_store(url, secret)
        except unavailable as error:
            if time.monotonic() >= deadline:
                raise cli_error(str(error)) from None
            time.sleep(0.5)
        except SettingsError as error:
            raise cli_error(str(error)) from None


@click.command("worker")
@click.option("--once", is_flag=True, help="Run at most one queued job, then exit.")
@click.option("--processes", type=click.IntRange(1, 64), default=None,
              help="Processes evaluating the patients of a job [default: CPU count].")
@click.option("--poll-seconds", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="How often an idle worker looks for a queued job.")
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="Stop when this process is gone (set by `serve`).")
@click.pass_obj
def worker(obj: Any, once: bool, processes: int | None, poll_seconds: float, parent_pid: int | None) -> None:
    """Run the admin console's dry-run jobs from the database (until SIGTERM)."""
    from cds_service.admin.job_worker import JobWorker
    from cds_service.storage.jobs import JobStore
    from cds_service.storage.store import CardStore, StoreUnavailable
    from cds_service.web.logs import configure_logging

    settings = obj.settings()
    configure_logging(settings.log_level)
    # one "hook answered" line per patient and rule set is noise here: the job's own lines say what ran
    logging.getLogger("cds_service.engine").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        secret, _ = settings.patient_key_secret_or_default()
    except SettingsError as error:
        raise CliError(str(error)) from None
    store = _open_store(CardStore, StoreUnavailable, settings.database_url, secret, CliError)
    job_worker = JobWorker(JobStore.for_card_store(store), settings, processes=processes)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()
        job_worker.release()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def stop() -> bool:
        if parent_pid is not None and os.getppid() != parent_pid:
            job_worker.release()
            return True
        return stopping.is_set()

    if once:
        ran = 0 if job_worker.run_once() is None else 1
    else:
        ran = job_worker.run(stop, poll_seconds=poll_seconds, wait=stopping.wait)
    store.close()
    click.echo(f"job worker {job_worker.worker_id}: {ran} job(s) run", err=True)
