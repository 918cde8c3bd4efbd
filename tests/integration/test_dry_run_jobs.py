"""Dry-run jobs run by a real worker process, started as ``cramp-cds serve`` starts it
(``cli.worker.job_worker_process``), over the shared Synthea patients: from their folder, and from a
loopback FHIR Bulk Data server's ``$export`` of the same patients (support/bulk_data_server.py).

The draft lowers the elevated-risk threshold (RULES.md C, no documented cramps) from 3 to 2.5. Worked out
from docs/synthea-firing.md: no Synthea patient has cramps, venous disease or DVT, so only C can fire; at
2021-03-11 the patients scoring 2.5 are Angelic Mueller (HCTZ 1.5 + simvastatin 0.5 + hyperlipidaemia 0.5),
Dirk Kuhlman and Renea Quigley (HCTZ 1.5 + diabetes 1). They, and only they, change: elevated-cramp-risk
goes from 4/31 to 7/31. The test also checks the rule itself against the active run's scores: a patient
changes iff its score lies in [2.5, 3).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Iterator

import pytest
from support.bulk_data_server import BulkDataServer, resources_of_bundles
from support.feedback import fresh_postgres_database, postgres_url
from support.fhir_server import free_port

from cds_service.admin.dry_run import Source
from cds_service.admin.job_worker import DRY_RUN, dry_run_job
from cds_service.admin.population import iter_bundle_files
from cds_service.admin.simulation import build_engines
from cds_service.cli.worker import job_worker_process
from cds_service.engine.registry import PATIENT_VIEW_SERVICE
from cds_service.hooks.request import parse_hook_request
from cds_service.ruleset.loader import load_default_ruleset
from cds_service.storage.jobs import Job, JobStore
from cds_service.storage.store import CardStore

SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea-r4"
pytestmark = [
    pytest.mark.synthea,
    pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared Synthea data not found at {SYNTHEA}"),
]
AS_OF = date(2021, 3, 11)
SECRET = "w" * 32
TOKEN = "bulk-token-for-the-worker"
CHANGED = {  # Patient.id -> who (docs/synthea-firing.md)
    "2ec622d5-095b-44d4-9cb2-c0e7e451cd74": "Angelic Mueller 2.5",
    "948e608d-e408-4788-8cf2-8157c49c2940": "Dirk Kuhlman 2.5",
    "ab4e7a7d-8b0d-41e1-9ce9-3877d7615aed": "Renea Quigley 2.5",
}
JOB_TIMEOUT = 120


def _texts() -> tuple[str, str]:
    active = resources.files("cds_service").joinpath("data/ruleset.yaml").read_text(encoding="utf-8")
    head, rest = active.split("contributors:                   # evaluation C\n  threshold: 3\n", 1)
    draft = f"{head}contributors:                   # evaluation C\n  threshold: 2.5\n{rest}"
    return active, draft.replace('version: "2026.12.1"', 'version: "2026.12.2"', 1)


@pytest.fixture(scope="module")
def bulk_server() -> Iterator[BulkDataServer]:
    bundles = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(SYNTHEA.glob("*.json"))]
    with BulkDataServer(resources_of_bundles(bundles), token=TOKEN, polls_before_ready=2, retry_after=1,
                        open_searches=True) as server:
        yield server


@pytest.fixture(scope="module")
def environment(tmp_path_factory, bulk_server) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("dry-run-jobs")
    return {"CRAMP_DATABASE_URL": f"sqlite:///{folder / 'jobs.sqlite3'}", "CRAMP_PATIENT_KEY_SECRET": SECRET,
            "CRAMP_DRY_RUN_DIRS": str(SYNTHEA.parent), "CRAMP_FHIR_ALLOWLIST": bulk_server.base_url,
            "CRAMP_FHIR_ALLOW_HTTP_LOOPBACK": "1", "CRAMP_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def store(environment) -> JobStore:
    return JobStore.for_card_store(CardStore(environment["CRAMP_DATABASE_URL"], SECRET))


@pytest.fixture(scope="module")
def worker(environment, store) -> Iterator[object]:
    """One worker process for the module, as serve starts it; stopped (SIGTERM) at the end."""
    with job_worker_process(environment) as process:
        yield process
    assert process.returncode is not None


def submit(store: JobStore, source: Source, token: str | None = None) -> Job:
    active, draft = _texts()
    params, inputs = dry_run_job("2026.12.1", active, "2026.12.2", draft, source, AS_OF, token=token)
    return store.create(DRY_RUN, params, "test", inputs)


def wait_for(store: JobStore, job_id: int, condition, seconds: float = JOB_TIMEOUT, process=None) -> Job:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the worker process exited ({process.returncode}) before job {job_id} ended")
        job = store.get(job_id)
        if condition(job):
            return job
        time.sleep(0.1)
    job = store.get(job_id)
    raise AssertionError(f"job {job_id} still {job.status} ({job.message}, {job.error}) after {seconds} s")


def check_result(result: dict) -> None:
    assert result["patients"] == 31 and result["not_evaluated"] == []
    counts = {row["card"]: row["counts"] for row in result["cards"]}
    assert counts["elevated-cramp-risk"] == [4, 7]
    assert all(c == [0, 0] for card, c in counts.items() if card != "elevated-cramp-risk")
    assert {c["patientId"] for c in result["changes"]} == set(CHANGED) and result["changes_total"] == 3
    for change in result["changes"]:
        assert change["before"] == [] and change["after"] == ["elevated-cramp-risk"]
        [reason] = change["reasons"]
        assert reason.startswith("contributors: elevated-cramp-risk score 2.5 vs threshold 3, does not fire -> "
                                 "elevated-cramp-risk score 2.5 vs threshold 2.5, fires")


def test_the_changed_patients_are_those_scoring_between_the_two_thresholds() -> None:
    """The rule behind CHANGED, from the active rule set's own scores (no hand-worked list involved)."""
    [engine] = build_engines([load_default_ruleset()], AS_OF)
    between = set()
    for record in iter_bundle_files([SYNTHEA]):
        evaluation = engine.run(engine.registry.get(PATIENT_VIEW_SERVICE),
                                parse_hook_request(record.hook_request())).evaluation
        if not evaluation.shown and 2.5 <= (evaluation.contributors.score or 0) < 3:
            between.add(record.patient_id)
    assert between == set(CHANGED)


def test_a_dry_run_of_the_synthea_folder_in_the_worker_process(store, worker) -> None:
    job = submit(store, Source("folder", str(SYNTHEA)))
    done = wait_for(store, job.id, lambda j: j.finished, process=worker)
    assert done.status == "done", done.error
    assert (done.progress_done, done.progress_total) == (31, 31)
    check_result(done.result)
    print(f"\nSynthea folder dry run: {done.result['patients']} patients in {done.result['seconds']} s "
          f"({done.result['patients_per_second']:.1f} patients/s, worker start excluded)")


def test_a_dry_run_of_the_bulk_export_of_the_same_patients(store, worker, bulk_server) -> None:
    job = submit(store, Source("bulk", bulk_server.base_url), token=TOKEN)
    done = wait_for(store, job.id, lambda j: j.finished, process=worker)
    assert done.status == "done", done.error
    check_result(done.result)
    kick_off = bulk_server.seen("GET", "/Patient/$export")[-1]
    assert "Claim" not in kick_off.query["_type"][0] and "Patient" in kick_off.query["_type"][0]
    assert all(r.authorised for r in bulk_server.requests if "$export" in r.path or "/files/" in r.path)
    assert store.get(job.id).inputs is None  # neither the token nor the rule texts are kept


def test_a_dry_run_of_the_same_patients_read_from_a_fhir_server(store, worker, bulk_server) -> None:
    """The "FHIR server" source: each patient and the prefetch's searches (fhir/crawler.py, which sends no
    token: the server's searches are open here), no export."""
    before = bulk_server.searches
    job = submit(store, Source("fhir", bulk_server.base_url), token=None)
    done = wait_for(store, job.id, lambda j: j.finished, process=worker)
    assert done.status == "done", done.error
    check_result(done.result)
    assert bulk_server.searches - before == 1 + 31 * 6  # the Patient search, then six per patient


def test_cancel_a_running_bulk_dry_run(store, worker, bulk_server) -> None:
    bulk_server.polls_before_ready = 10_000  # the export never ends by itself
    try:
        job = submit(store, Source("bulk", bulk_server.base_url), token=TOKEN)
        wait_for(store, job.id, lambda j: j.status == "running" and (j.message or "").startswith("bulk export: 1"),
                 seconds=60)
        store.cancel(job.id)
        ended = wait_for(store, job.id, lambda j: j.finished, seconds=60)
    finally:
        bulk_server.polls_before_ready = 2
    assert ended.status == "cancelled"
    assert bulk_server.seen("DELETE", "/$export-status/")  # the export was cancelled on the server too


def test_a_worker_told_to_stop_puts_its_job_back_in_the_queue(environment, bulk_server, tmp_path) -> None:
    """SIGTERM (serve stopping): the running job is queued again at once, and the next worker takes it. Its
    bearer token left the database when the first worker claimed it, so the second fails it, saying so."""
    env = {**environment, "CRAMP_DATABASE_URL": f"sqlite:///{tmp_path / 'own.sqlite3'}"}
    own = JobStore.for_card_store(CardStore(env["CRAMP_DATABASE_URL"], SECRET))
    bulk_server.polls_before_ready = 10_000
    try:
        job = submit(own, Source("bulk", bulk_server.base_url), token=TOKEN)
        with job_worker_process(env) as first:
            running = wait_for(own, job.id, lambda j: j.status == "running", seconds=60)
        assert first.returncode == 0
        released = own.get(job.id)
        assert released.status == "queued" and released.attempts == 0 and "worker stopped" in released.message
        with job_worker_process(env):
            failed = wait_for(own, job.id, lambda j: j.finished, seconds=60)
        assert failed.worker_id != running.worker_id or failed.status == "failed"
        assert failed.status == "failed" and "bearer token is no longer available" in failed.error
    finally:
        bulk_server.polls_before_ready = 2


# ---------------------------------------------------------------- serve and the Docker CMD start one


def _start(command: list[str], env: dict[str, str], log: Path) -> "subprocess.Popen[bytes]":
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT,
                                cwd=log.parent, start_new_session=True)


def _worker_pid(log: Path, pattern: str, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no worker started within {seconds} s:\n{log.read_text(errors='replace')[-3000:]}")


def _gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _stop(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything left in its group
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.mark.parametrize("how", ["serve", "gunicorn -c (the Docker CMD)"])
def test_the_server_starts_a_worker_that_runs_jobs_and_stops_with_it(how, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'served.sqlite3'}"
    port = free_port()
    env = {"CRAMP_DEV_MODE": "1", "CRAMP_DATABASE_URL": url, "CRAMP_PATIENT_KEY_SECRET": SECRET,
           "CRAMP_LOG_LEVEL": "INFO", "CRAMP_DRY_RUN_DIRS": str(SYNTHEA.parent), "CRAMP_BIND": f"127.0.0.1:{port}",
           "CRAMP_WORKERS": "1", "CRAMP_THREADS": "2"}
    if how == "serve":
        command = [sys.executable, "-c", "import sys; from cds_service.cli.main import main; sys.exit(main())",
                   "serve", "--port", str(port), "--workers", "1", "--threads", "2"]
        pattern = r"Dry-run job worker started \(pid (\d+)\)"
    else:
        command = [str(Path(sys.executable).with_name("gunicorn")), "-c", "python:cds_service.serve.gunicorn_conf",
                   "cds_service.serve.wsgi:app"]
        pattern = r"dry-run job worker started \(pid (\d+)\)"
    log = tmp_path / "server.log"
    server = _start(command, env, log)
    try:
        pid = _worker_pid(log, pattern)
        store = JobStore.for_card_store(CardStore(url, SECRET))
        job = submit(store, Source("folder", str(SYNTHEA)))
        done = wait_for(store, job.id, lambda j: j.finished)
        assert done.status == "done", done.error
        check_result(done.result)
        server.terminate()
        server.wait(timeout=40)
        assert _gone(pid), f"the worker {pid} outlived the server"
    finally:
        _stop(server)


def test_no_worker_with_the_option_or_the_variable(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'served.sqlite3'}"
    port = free_port()
    env = {"CRAMP_DEV_MODE": "1", "CRAMP_DATABASE_URL": url, "CRAMP_PATIENT_KEY_SECRET": SECRET,
           "CRAMP_JOB_WORKER": "0"}
    log = tmp_path / "server.log"
    server = _start([sys.executable, "-c", "import sys; from cds_service.cli.main import main; sys.exit(main())",
                     "serve", "--port", str(port), "--workers", "1", "--threads", "2"], env, log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Listening at" not in log.read_text(errors="replace"):
            time.sleep(0.1)
        assert "Listening at" in log.read_text(errors="replace")
        store = JobStore.for_card_store(CardStore(url, SECRET))
        job = submit(store, Source("fixtures"))
        time.sleep(2.0)  # (a worker would have claimed it within its 1 s poll)
        assert store.get(job.id).status == "queued"
        assert "job worker started" not in log.read_text(errors="replace").lower()
    finally:
        _stop(server)


@pytest.mark.postgres
def test_two_worker_processes_on_postgresql_share_the_queue(monkeypatch, tmp_path) -> None:
    """On PostgreSQL (as replicas share it), two workers: each job runs once, and all of them run."""
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        url = postgres_url(host, port, name)
        store = JobStore.for_card_store(CardStore(url, SECRET))
        jobs = [submit(store, Source("fixtures")) for _ in range(3)]
        env = {"CRAMP_DATABASE_URL": url, "CRAMP_PATIENT_KEY_SECRET": SECRET, "CRAMP_LOG_LEVEL": "WARNING"}
        with job_worker_process(env) as first, job_worker_process(env) as second:
            ended = [wait_for(store, job.id, lambda j: j.finished, process=first) for job in jobs]
        assert first.returncode == 0 and second.returncode == 0
        assert [job.status for job in ended] == ["done"] * 3
        assert all(job.attempts == 1 for job in ended)  # claimed once each
        assert len({job.result["patients"] for job in ended}) == 1 and ended[0].result["patients"] > 20
