"""A dry run: a draft rule set (YAML text) and the active one, run side by side over a population, for the
admin console (docs/dry-run.md). The machinery is ``rules simulate``'s (``admin/simulation.py``); this
module adds the sources the console offers, progress and stop callbacks, and a JSON result a job stores
(``storage/jobs.py``, run by ``admin/job_worker.py``) and the console renders, with a CSV export.

Sources (``Source.kind``):

    fixtures   the bundled test patients (``fhir_fixtures/*/request.json``: hook requests with prefetch)
    folder     a folder of FHIR Bundles, one patient each (e.g. Synthea), NDJSON files beside them read too
    ndjson     a bulk NDJSON file, or a folder of them
    fhir       a FHIR server base URL: the patients and their searches (``fhir/crawler.py``)
    bulk       the FHIR Bulk Data ``$export`` of an EHR (``fhir/bulk_export.py``), optionally of a Group,
               with a bearer token; downloaded to a temporary folder, removed after the run

``check_source`` says whether a source may be used: folders and files only under an allowed directory
(the bundled fixtures always), servers only on the FHIR allowlist (``FhirFetcher.check_server``).

The result names patients by source file (or server) and Patient.id only, as the simulate report does.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable

from cds_service.admin.bulk import is_ndjson, locate_patients
from cds_service.admin.population import READ_TYPES, BundleError, PatientRecord, record_from_bundle
from cds_service.admin.simulation import (RuleText, Simulation, SourceError, Task, collect_tasks,
                                          load_rule_source, simulate)
from cds_service.fhir.bulk_export import BulkExportClient, ExportCancelled
from cds_service.fhir.client import FhirFetcher
from cds_service.fhir.crawler import ServerPopulation, ServerSourceError
from cds_service.fhir.errors import FhirError, RefusedByPolicy
from cds_service.ruleset.loader import RuleSetError
from cds_service.settings import Settings

SOURCE_KINDS = ("fixtures", "folder", "ndjson", "fhir", "bulk")
SOURCE_LABELS = {
    "fixtures": "the bundled test patients (fhir_fixtures/)",
    "folder": "a folder of FHIR Bundles on the server",
    "ndjson": "bulk NDJSON files on the server",
    "fhir": "a FHIR server",
    "bulk": "the FHIR Bulk Data $export of an EHR",
}
FIXTURES_DIR = Path(__file__).resolve().parents[2] / "fhir_fixtures"
DRY_RUN_DIRS_VARIABLE = "CRAMP_DRY_RUN_DIRS"
HEARTBEAT_EVERY = 25  # patients between progress reports (and at least once a second, see ``_Reporter``)
RESULT_CHANGES_CAP = 5000
# Below this many patients the run stays in the worker's process: starting a pool (each process imports the
# engine and parses both rule sets, ~1 s) costs more than it saves (31 Synthea patients: 1.7 s vs 3.6 s).
IN_PROCESS_BELOW = 400  # changed patients kept in a result (the counts are always complete)


class DryRunError(ValueError):
    """The dry run cannot run (source refused or unreadable, invalid rule set); the message says why."""


class DryRunStopped(Exception):
    """Raised by a progress callback (or ``should_stop``) to stop a run: cancelled, or the job was lost."""


@dataclass(frozen=True)
class Source:
    kind: str
    location: str = ""  # a path or a base URL; "" for the fixtures
    group_id: str | None = None  # bulk: export this Group instead of all patients

    def describe(self) -> str:
        if self.kind == "fixtures":
            return SOURCE_LABELS["fixtures"]
        group = f" (Group {self.group_id})" if self.group_id else ""
        return f"{SOURCE_LABELS.get(self.kind, self.kind)}: {self.location}{group}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "groupId": self.group_id}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Source":
        return cls(str(body.get("kind", "")), str(body.get("location") or ""), body.get("groupId") or None)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None
    message: str


# ---------------------------------------------------------------- which sources may be used


def allowed_dirs(settings: Settings, env: dict[str, str] | None = None) -> tuple[Path, ...]:
    """The directories a dry run may read on the server: the bundled fixtures, and those in
    CRAMP_DRY_RUN_DIRS (colon- or comma-separated)."""
    configured = getattr(settings, "dry_run_dirs", None)
    if configured is None:
        raw = (env if env is not None else os.environ).get(DRY_RUN_DIRS_VARIABLE, "")
        configured = [item for part in raw.split(",") for item in part.split(":") if item.strip()]
    dirs = [FIXTURES_DIR, *(Path(item.strip()) for item in configured)]
    return tuple(path.resolve() for path in dirs)


def check_source(source: Source, settings: Settings, env: dict[str, str] | None = None) -> str | None:
    """Why ``source`` may not be used (a message for the form's field), or None."""
    if source.kind not in SOURCE_KINDS:
        return f"choose one of: {', '.join(SOURCE_KINDS)}"
    if source.kind == "fixtures":
        return None if FIXTURES_DIR.is_dir() else "the bundled fixtures are not installed with this package"
    if source.kind in ("folder", "ndjson"):
        if not source.location.strip():
            return "give a path on the server"
        path = Path(source.location)
        if not path.is_absolute():
            return "give an absolute path"
        resolved = path.resolve()
        dirs = allowed_dirs(settings, env)
        if not _under(resolved, dirs):
            listed = ", ".join(str(d) for d in dirs)
            return f"not under an allowed directory ({listed}; more with {DRY_RUN_DIRS_VARIABLE})"
        if not resolved.exists():
            return "no such file or folder"
        return None
    if not source.location.strip():
        return "give the server's base URL"
    fetcher = FhirFetcher(settings)
    try:
        fetcher.check_server(source.location.rstrip("/"))
    except RefusedByPolicy as refused:
        return f"the server {refused.reason.removeprefix('fhirServer ')} (CRAMP_FHIR_ALLOWLIST)"
    finally:
        fetcher._session.close()
    if source.group_id is not None and (not source.group_id or any(c in source.group_id for c in "/?#")):
        return "not a usable Group id"
    return None


# ---------------------------------------------------------------- reading a source


def fixture_records(folder: Path = FIXTURES_DIR) -> list[PatientRecord]:
    """The patient-view hook requests of the bundled fixtures, as records."""
    records = []
    for request_file in sorted(folder.glob("*/request.json")):
        try:
            body = json.loads(request_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(body, dict) or body.get("hook") != "patient-view":
            continue
        patient_id = str((body.get("context") or {}).get("patientId") or "?")
        records.append(PatientRecord(patient_id, request_file.parent.name, body.get("prefetch") or {}))
    return records


def _files_within(path: Path, allowed: tuple[Path, ...]) -> list[Path]:
    """The Bundle and NDJSON files of ``path`` (a folder or one file) that really lie under an allowed
    directory: a symbolic link inside it pointing elsewhere is left out."""
    try:
        candidates = [path] if path.is_file() else sorted(
            p for p in path.iterdir() if p.is_file() and (p.suffix == ".json" or is_ndjson(p)))
    except OSError as exc:
        raise DryRunError(f"{path}: cannot be read ({exc.strerror})") from None
    inside = [p for p in candidates if _under(p.resolve(), allowed)]
    if not inside:
        raise DryRunError(f"{path}: no Bundle (.json) or NDJSON file in it")
    return inside


def _under(path: Path, allowed: tuple[Path, ...]) -> bool:
    return any(path == d or d in path.parents for d in allowed)


def read_source(source: Source, loinc_codes: list[str], *, token: str | None, work_dir: Path,
                should_stop: Callable[[], bool], report: Callable[[str], None],
                allowed_output_prefixes: Iterable[str] = (), sleep: Callable[[float], None] = time.sleep,
                allowed: tuple[Path, ...] = ()) -> list[Task]:
    """The patients of ``source`` as simulation tasks; ``DryRunError`` naming the problem. ``allowed``: the
    directories files may be read from (``allowed_dirs``)."""
    try:
        if source.kind == "fixtures":
            return [Task(record=r) for r in fixture_records()]
        if source.kind in ("folder", "ndjson"):
            report("reading the patients")
            return collect_tasks([str(p) for p in _files_within(Path(source.location), allowed)], loinc_codes)
        if source.kind == "fhir":
            return _server_tasks(source, loinc_codes, should_stop, report)
        if source.kind == "bulk":
            return _bulk_tasks(source, token, work_dir, should_stop, report, allowed_output_prefixes, sleep)
    except (SourceError, BundleError) as exc:
        raise DryRunError(str(exc)) from None
    except ServerSourceError as exc:
        raise DryRunError(str(exc)) from None
    except FhirError as error:
        detail = f" ({error.detail})" if error.detail else ""
        raise DryRunError(f"{error.server or source.location}: {error.reason}{detail}") from None
    raise DryRunError(f"unknown source kind {source.kind!r}")


def _server_tasks(source: Source, loinc_codes: list[str], should_stop: Callable[[], bool],
                  report: Callable[[str], None]) -> list[Task]:
    """Each patient of the server and its searches (``fhir/crawler.py``), stoppable between patients."""
    base = source.location.rstrip("/")
    tasks = []
    report("reading the patients from the FHIR server")
    for bundle in ServerPopulation(base, loinc_codes).patient_bundles():
        if should_stop():
            raise DryRunStopped("cancelled while reading the FHIR server")
        tasks.append(Task(record=record_from_bundle(bundle, base)))
        if len(tasks) % HEARTBEAT_EVERY == 0:
            report(f"read {len(tasks)} patients from the FHIR server")
    return tasks


def _bulk_tasks(source: Source, token: str | None, work_dir: Path, should_stop: Callable[[], bool],
                report: Callable[[str], None], allowed_output_prefixes: Iterable[str],
                sleep: Callable[[float], None]) -> list[Task]:
    report("bulk export: kick-off")
    with BulkExportClient(source.location, token=token, group_id=source.group_id, types=sorted(READ_TYPES),
                          should_stop=should_stop, on_progress=lambda text: report(f"bulk export: {text}"),
                          allowed_output_prefixes=allowed_output_prefixes, sleep=sleep) as client:
        try:
            export = client.export(work_dir)
        except ExportCancelled:
            raise DryRunStopped("cancelled during the export") from None
    report(f"bulk export: {len(export.files)} files downloaded; reading them")
    # located here, read by the workers that evaluate them (the files stay until the run has ended)
    return [Task(located=located) for located in locate_patients(list(export.files))]


def _default_allowed(source: Source) -> tuple[Path, ...]:
    own = Path(source.location).resolve() if source.kind in ("folder", "ndjson") and source.location else None
    return (FIXTURES_DIR.resolve(), *([own if own.is_dir() else own.parent] if own else []))


# ---------------------------------------------------------------- the run


@dataclass
class DryRunResult:
    """What the console shows and the job stores (``to_json``): per card the patients and rate under the
    active and the draft rule set, and the patients whose cards change, with why."""

    as_of: str
    source: str
    rule_sets: list[dict[str, str]]  # [{"label", "version"}] active first, then the draft
    patients: int
    cards: list[dict[str, Any]]  # [{"card", "counts": [a, d], "rates": [a, d]}]
    changes: list[dict[str, Any]]  # [{"source", "patientId", "before", "after", "reasons"}]
    changes_total: int
    not_evaluated: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    export_error_files: int = 0

    @property
    def patients_per_second(self) -> float | None:
        return self.patients / self.seconds if self.seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["patients_per_second"] = self.patients_per_second
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "DryRunResult":
        fields = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def result_of(simulation: Simulation, source: Source, seconds: float) -> DryRunResult:
    changes = simulation.changes()
    return DryRunResult(
        as_of=simulation.as_of.isoformat(),
        source=source.describe(),
        rule_sets=[{"label": info.path, "version": info.version} for info in simulation.rule_sets],
        patients=len(simulation.evaluated),
        cards=[{"card": row["card"], "counts": row["counts"], "rates": row["rates"]}
               for row in simulation.card_rates()],
        changes=[{"source": c.source, "patientId": c.patient_id, "before": list(c.before), "after": list(c.after),
                  "reasons": list(c.reasons)} for c in changes[:RESULT_CHANGES_CAP]],
        changes_total=len(changes),
        not_evaluated=[{"source": r.source, "patientId": r.patient_id, "error": r.error or ""}
                       for r in simulation.errors[:RESULT_CHANGES_CAP]],
        seconds=round(seconds, 3),
    )


class _Reporter:
    """Counts patients; reports progress every ``HEARTBEAT_EVERY`` patients or each second."""

    def __init__(self, total: int, progress: Callable[[Progress], None]) -> None:
        self.total, self.done, self._progress = total, 0, progress
        self._last = time.monotonic()

    def __call__(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.done % HEARTBEAT_EVERY == 0 or self.done == self.total or now - self._last >= 1.0:
            self._last = now
            self._progress(Progress(self.done, self.total, "evaluating the patients"))


def run_dry_run(active: RuleText, draft: RuleText, source: Source, as_of: date, *,
                progress: Callable[[Progress], None] = lambda _p: None,
                should_stop: Callable[[], bool] = lambda: False, token: str | None = None,
                processes: int | None = None, allowed_output_prefixes: Iterable[str] = (),
                work_root: Path | None = None, sleep: Callable[[float], None] = time.sleep,
                allowed: tuple[Path, ...] | None = None) -> DryRunResult:
    """Run ``active`` and ``draft`` over ``source`` at ``as_of``. ``progress`` may raise ``DryRunStopped``
    (so may the run when ``should_stop`` says so while exporting). ``DryRunError`` when it cannot run.
    ``allowed``: the directories files may be read from (default: the bundled fixtures and, for a folder
    or NDJSON source, its own location: the caller has checked it with ``check_source``)."""
    started = time.perf_counter()
    try:
        rule_sets = [load_rule_source(active), load_rule_source(draft)]
    except RuleSetError as error:
        first = error.located[0] if error.located else (None, "", str(error))
        where = f"line {first[0]}: " if first[0] else ""
        raise DryRunError(f"{error.source}: invalid rule set ({where}{first[1]}: {first[2]})") from None
    loinc = sorted({code for _, code in rule_sets[0].observation_codes} |
                   {code for _, code in rule_sets[1].observation_codes})
    work_dir = Path(tempfile.mkdtemp(prefix="cramp-dry-run-", dir=work_root))
    try:
        tasks = read_source(source, loinc, token=token, work_dir=work_dir, should_stop=should_stop,
                            report=lambda text: progress(Progress(0, None, text)),
                            allowed_output_prefixes=allowed_output_prefixes, sleep=sleep,
                            allowed=allowed if allowed is not None else _default_allowed(source))
        if not tasks:
            raise DryRunError(f"no patients found in {source.describe()}")
        progress(Progress(0, len(tasks), "evaluating the patients"))
        reporter = _Reporter(len(tasks), progress)
        jobs = processes or (1 if len(tasks) < IN_PROCESS_BELOW else None)
        simulation = simulate([active, draft], rule_sets, tasks, as_of, jobs=jobs, progress=reporter)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # an export's files hold PHI: never left behind
    return result_of(simulation, source, time.perf_counter() - started)


# ---------------------------------------------------------------- CSV


CSV_COLUMNS = ("section", "card", "active_patients", "active_rate", "draft_patients", "draft_rate",
               "source", "patient_id", "before", "after", "why")


def render_csv(result: DryRunResult) -> str:
    """One row per card (patients and rate under each rule set), then one per changed patient."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in result.cards:
        counts, rates = row["counts"], row["rates"]
        writer.writerow(["card", row["card"], counts[0], f"{rates[0]:.4f}", counts[-1], f"{rates[-1]:.4f}",
                         "", "", "", "", ""])
    for change in result.changes:
        writer.writerow(["change", "", "", "", "", "", _safe(change["source"]), _safe(change["patientId"]),
                         " ".join(change["before"]) or "none", " ".join(change["after"]) or "none",
                         _safe(" | ".join(change["reasons"]))])
    return out.getvalue()


def _safe(value: str) -> str:
    """No spreadsheet formula out of a cell (=, +, -, @ at the start of a value from the data)."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


__all__ = ["DryRunError", "DryRunResult", "DryRunStopped", "Progress", "RuleText", "SOURCE_KINDS", "Source",
           "allowed_dirs", "check_source", "fixture_records", "render_csv", "result_of", "run_dry_run"]
