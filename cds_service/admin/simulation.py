"""Dry run of rule sets over a population (``rules simulate``): which card each patient would be shown,
with one clock for all, in parallel over processes; and, for two rule sets, which patients' cards change
and why.

Sources (``collect_tasks``): Bundle files or folders of them (one patient per file, e.g. Synthea), bulk
NDJSON files, or a FHIR server base URL (``fhir_population``). Bundle files are read by the workers; so
are NDJSON patients, located here first (``bulk.locate_patients``, itself in parallel: a few integers per
patient) and each read from its byte ranges by the worker that evaluates it (docs/perf-dry-run.md). A
server's patients are read here and their records sent to the workers.

Rule sets are files, or texts (``RuleText``: a version from the database, for the console's dry runs,
``admin/dry_run.py``); each worker process loads them again from that source.

Each worker has its engines once (``_init_worker``: inherited from this process when workers are forked,
else built from the rule sources) and returns a compact ``PatientResult`` per patient. Suppression is not simulated (no card ledger): the counts are what the rules would show.

The unit of work is a shard of patients (``run_shard``): on the embedded process pool (the default) or,
given a cluster address, on Dask distributed (``admin/cluster.py``; Bundle and NDJSON files are then read
by the Dask workers, so their paths must be on a filesystem the workers share; a server is read here).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Generator, Iterable

from cds_service.admin.bulk import LocatedPatient, is_ndjson, locate_patients, read_located
from cds_service.admin.population import BundleError, PatientRecord, read_bundle_file, record_from_bundle
from cds_service.clock import fixed_clock
from cds_service.engine.drugs import DrugTable
from cds_service.engine.pipeline import Engine
from cds_service.engine.registry import PATIENT_VIEW_SERVICE
from cds_service.errors import ServiceError
from cds_service.fhir.crawler import ServerPopulation, is_server_url
from cds_service.hooks.request import parse_hook_request
from cds_service.ruleset.loader import CARD_IDS, RuleSet, load_default_ruleset, load_ruleset, parse_ruleset

EVALUATIONS = ("red_flag", "venous", "contributors")


class SourceError(ValueError):
    """A source cannot be used (missing path, unreadable file, unreachable server); names it."""


# ---------------------------------------------------------------- rule sets


@dataclass(frozen=True)
class RuleText:
    """A rule set given as its YAML text (a version kept in the database), not as a file; ``label`` names
    it in reports (e.g. ``draft 2026.12.2``)."""

    text: str
    label: str


RuleSource = str | RuleText | None  # a file path, a text, or None for the bundled rule set


def _bundled_data_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "data"


def load_rule_source(source: RuleSource) -> RuleSet:
    """The rule set of ``source``; ``value_sets.*.file`` of a text are relative to the bundled data folder.
    Raises ``RuleSetError``."""
    if isinstance(source, RuleText):
        return parse_ruleset(source.text, source.label, base_dir=_bundled_data_dir())
    return load_ruleset(source) if source else load_default_ruleset()


def source_label(source: RuleSource) -> str:
    if isinstance(source, RuleText):
        return source.label
    return source or "(bundled rule set)"


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class RuleOutcome:
    card_id: str
    fired: bool
    score: float | None
    threshold: float | None
    items: tuple[tuple[str, float], ...]
    pathways: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatientRun:
    shown: tuple[str, ...]
    outcomes: dict[str, RuleOutcome]


@dataclass(frozen=True)
class PatientResult:
    source: str  # file name (or server URL)
    patient_id: str
    runs: tuple[PatientRun, ...] = ()  # one per rule set, in order
    error: str | None = None


@dataclass(frozen=True)
class RuleSetInfo:
    path: str
    version: str


@dataclass(frozen=True)
class Change:
    source: str
    patient_id: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass
class Simulation:
    as_of: date
    rule_sets: list[RuleSetInfo]
    results: list[PatientResult] = field(default_factory=list)

    @property
    def evaluated(self) -> list[PatientResult]:
        return [r for r in self.results if r.error is None]

    @property
    def errors(self) -> list[PatientResult]:
        return [r for r in self.results if r.error is not None]

    def shown_counts(self, run: int = 0) -> dict[str, int]:
        counts = {card: 0 for card in CARD_IDS}
        for result in self.evaluated:
            for card in result.runs[run].shown:
                counts[card] += 1
        return counts

    def card_rates(self) -> list[dict[str, Any]]:
        """Per card: the patients shown it under each rule set, and the rate."""
        total = len(self.evaluated)
        rows = []
        per_run = [self.shown_counts(i) for i in range(len(self.rule_sets))]
        for card in CARD_IDS:
            counts = [counts[card] for counts in per_run]
            rows.append({
                "card": card,
                "counts": counts,
                "rates": [count / total if total else 0.0 for count in counts],
                "patients": [
                    [f"{r.source}#{r.patient_id}" for r in self.evaluated if card in r.runs[i].shown]
                    for i in range(len(per_run))
                ],
            })
        return rows

    def changes(self) -> list[Change]:
        if len(self.rule_sets) < 2:
            return []
        found = []
        for result in self.evaluated:
            before, after = result.runs[0], result.runs[1]
            if before.shown != after.shown:
                found.append(Change(result.source, result.patient_id, before.shown, after.shown,
                                    tuple(explain_change(before, after))))
        return found


def explain_change(before: PatientRun, after: PatientRun) -> list[str]:
    """Why the cards differ: each evaluation whose outcome, score, threshold or items differ."""
    reasons = []
    for key in EVALUATIONS:
        old, new = before.outcomes[key], after.outcomes[key]
        if old == new:
            continue
        parts = [f"{key}: {_describe(old)} -> {_describe(new)}"]
        old_items, new_items = dict(old.items), dict(new.items)
        diffs = []
        for item in sorted(set(old_items) | set(new_items)):
            if item not in new_items:
                diffs.append(f"-{item} {old_items[item]:g}")
            elif item not in old_items:
                diffs.append(f"+{item} {new_items[item]:g}")
            elif old_items[item] != new_items[item]:
                diffs.append(f"{item} {old_items[item]:g}->{new_items[item]:g}")
        if diffs:
            parts.append("items changed: " + ", ".join(diffs))
        elif new.items:
            parts.append("items: " + ", ".join(f"{item} {points:g}" for item, points in new.items))
        reasons.append("; ".join(parts))
    if not reasons:
        reasons.append("same outcomes; the card's enabled flag differs")
    return reasons


def _describe(outcome: RuleOutcome) -> str:
    verdict = "fires" if outcome.fired else "does not fire"
    if outcome.score is None:
        pathways = f" ({', '.join(outcome.pathways)})" if outcome.pathways else ""
        return f"{outcome.card_id} {verdict}{pathways}"
    threshold = f" vs threshold {outcome.threshold:g}" if outcome.threshold is not None else ""
    return f"{outcome.card_id} score {outcome.score:g}{threshold}, {verdict}"


# ---------------------------------------------------------------- sources

@dataclass(frozen=True, slots=True)
class Task:
    path: Path | None = None  # a Bundle file, read by the worker
    record: PatientRecord | None = None
    located: LocatedPatient | None = None  # an NDJSON patient, read from its byte ranges by the worker


def collect_tasks(sources: Iterable[str], loinc_codes: list[str], jobs: int | None = None) -> list[Task]:
    """The patients of ``sources``; NDJSON files are scanned on ``jobs`` processes (default: CPU count)."""
    tasks: list[Task] = []
    ndjson: list[Path] = []
    for source in sources:
        if is_server_url(source):
            tasks += [Task(record=record_from_bundle(bundle, source.rstrip("/")))
                      for bundle in ServerPopulation(source, loinc_codes).patient_bundles()]
            continue
        path = Path(source)
        if path.is_dir():
            tasks += [Task(path=p) for p in sorted(path.glob("*.json"))]
            ndjson += sorted(p for p in path.iterdir() if is_ndjson(p))
        elif path.is_file():
            if is_ndjson(path):
                ndjson.append(path)
            else:
                tasks.append(Task(path=path))
        else:
            raise SourceError(f"{source}: no such file, folder or server URL")
    if ndjson:
        try:
            tasks += [Task(located=located) for located in locate_patients(ndjson, jobs)]
        except BundleError as exc:
            raise SourceError(str(exc)) from None
    return tasks


# ---------------------------------------------------------------- workers

_ENGINES: list[Engine] = []  # per worker process, built once by _init_worker
POOL_START_METHOD: str | None = None  # how the pool starts its workers; None: the platform's default


def build_engines(rule_sets: list[RuleSet], as_of: date) -> list[Engine]:
    clock = fixed_clock(f"{as_of.isoformat()}T12:00:00Z")
    drugs = DrugTable.load_default()
    return [Engine(ruleset, drugs, clock=clock) for ruleset in rule_sets]


def _init_worker(rule_paths: list[RuleSource], as_of: date, engines: list[Engine] | None = None) -> None:
    """``engines``: built in the parent and inherited by a forked worker (not pickled: fork copies the
    arguments); else the worker parses the rule sets and card texts again (~0.1 s a worker)."""
    _ENGINES[:] = engines if engines is not None else build_engines([load_rule_source(p) for p in rule_paths], as_of)
    gc.freeze()  # the engines live as long as the worker: keep them out of every later collection


def _summarise(outcome: Any) -> RuleOutcome:
    return RuleOutcome(outcome.card_id, outcome.fired, outcome.score, outcome.threshold,
                       tuple((item.item, item.points) for item in outcome.items), tuple(outcome.pathways))


def evaluate_record(record: PatientRecord, engines: list[Engine]) -> PatientResult:
    source = Path(record.source).name if "://" not in record.source else record.source
    runs = []
    try:
        request = parse_hook_request(record.hook_request())
        for engine in engines:
            result = engine.run(engine.registry.get(PATIENT_VIEW_SERVICE), request)
            evaluation = result.evaluation
            runs.append(PatientRun(
                shown=tuple(o.card_id for o in evaluation.shown),
                outcomes={key: _summarise(getattr(evaluation, key)) for key in EVALUATIONS},
            ))
    except ServiceError as exc:
        return PatientResult(source, record.patient_id, error=exc.message)
    return PatientResult(source, record.patient_id, tuple(runs))


def _run_task(task: Task, engines: list[Engine] | None = None) -> PatientResult:
    engines = engines if engines is not None else _ENGINES
    if task.path is not None:
        try:
            record = read_bundle_file(task.path)
        except BundleError as exc:
            return PatientResult(task.path.name, "?", error=str(exc))
        return evaluate_record(record, engines)
    if task.located is not None:
        try:
            record = read_located(task.located)
        except BundleError as exc:
            return PatientResult(task.located.source, task.located.patient_id, error=str(exc))
        return evaluate_record(record, engines)
    assert task.record is not None
    return evaluate_record(task.record, engines)


_SHARD_ENGINES: dict[str, list[Engine]] = {}  # per process: the engines of the current run, by run key


def run_shard(tasks: list[Task], rule_sets: list[RuleSet], as_of: date, run_key: str) -> list[PatientResult]:
    """The unit of work: a shard of patients, evaluated in this process under every rule set. The engines
    are built once per process and run (``run_key``), so later shards of the run reuse them."""
    engines = _SHARD_ENGINES.get(run_key)
    if engines is None:
        _SHARD_ENGINES.clear()
        engines = _SHARD_ENGINES[run_key] = build_engines(rule_sets, as_of)
    return [_run_task(task, engines) for task in tasks]


def run_tasks(tasks: list[Task], rule_paths: list[RuleSource], rule_sets: list[RuleSet], as_of: date,
              jobs: int | None = None, cluster: str | None = None
              ) -> Generator[PatientResult, None, None]:
    """Evaluate every task under every rule set: on the Dask cluster at ``cluster`` when given, else on
    ``jobs`` processes (default: CPU count; 1 = in process). Closing the iterator early (a cancelled dry
    run) drops the patients not yet started."""
    if cluster:
        from cds_service.admin.cluster import map_shards

        yield from map_shards(cluster, run_shard, tasks, rule_sets=rule_sets, as_of=as_of, run_key=str(uuid.uuid4()))
        return
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or len(tasks) <= 1:
        engines = build_engines(rule_sets, as_of)
        gc.freeze()  # as in a worker: the engines and the tasks outlive the run, no collection rescans them
        try:
            for task in tasks:
                yield _run_task(task, engines)
        finally:
            gc.unfreeze()
        return
    chunk = max(1, min(32, len(tasks) // (jobs * 8)))
    context = multiprocessing.get_context(POOL_START_METHOD)
    inherited = build_engines(rule_sets, as_of) if context.get_start_method() == "fork" else None
    gc.freeze()  # the tasks (all their records) live through the run: no collection need rescan them
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                               initargs=(rule_paths, as_of, inherited))
    try:
        yield from pool.map(_run_task, tasks, chunksize=chunk)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # stopped early: the chunks not started are dropped
        gc.unfreeze()


def simulate(rule_paths: list[RuleSource], rule_sets: list[RuleSet], tasks: list[Task], as_of: date,
             jobs: int | None = None, progress: Callable[[int], None] | None = None,
             cluster: str | None = None) -> Simulation:
    """``rule_paths``: where each rule set came from (a file, a ``RuleText``, None: bundled), for the
    worker processes to load them again. ``progress(1)`` after each patient; an exception it raises stops
    the run (the patients not started are dropped) and propagates."""
    simulation = Simulation(as_of, [RuleSetInfo(source_label(p), rs.version)
                                    for p, rs in zip(rule_paths, rule_sets)])
    results = run_tasks(tasks, rule_paths, rule_sets, as_of, jobs, cluster)
    try:
        for result in results:
            simulation.results.append(result)
            if progress:
                progress(1)
    finally:
        results.close()
    return simulation
