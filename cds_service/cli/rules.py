"""``cramp-cds rules``: validate a rule-set file, simulate it over a population, explain one patient.

    cramp-cds rules validate FILE
    cramp-cds rules simulate --rules FILE [--against OTHER_FILE] [--as-of DATE] [--jobs N]
                             [--format table|html|json] [--output PATH] SOURCE...
    cramp-cds rules explain --rules FILE [--as-of DATE] PATIENT

Exits, each with a one-line message (``validate`` lists every problem) and no traceback:

    0  OK
    1  ``validate``: the rule set has problems (one ``FILE:LINE: path: message`` line each)
    2  usage or input error (InputError, click usage errors): a missing or unreadable file, bad JSON,
       an invalid rule set given to simulate/explain, an unreachable FHIR server
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import click

from cds_service.errors import ServiceError
from cds_service.ruleset.loader import RuleSet, RuleSetError, load_default_ruleset, load_ruleset


class InputError(click.ClickException):
    """A file, source or option cannot be used; the message names it."""

    exit_code = 2


class RuleSetProblems(click.ClickException):
    """``rules validate`` found problems (already printed)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:  # the problems were printed one per line
        click.echo(self.format_message(), err=True)


def format_problems(error: RuleSetError) -> list[str]:
    """``FILE:LINE: path: message`` (``FILE: path: message`` when no line is known)."""
    return [f"{error.source}:{line}: {path}: {message}" if line else f"{error.source}: {path}: {message}"
            for line, path, message in error.located]


def _load_rules(path: Path | None) -> RuleSet:
    try:
        return load_ruleset(path) if path else load_default_ruleset()
    except RuleSetError as error:
        raise InputError("invalid rule set " + "; ".join(format_problems(error))) from None


def _as_of(value: date | None) -> date:
    return value or datetime.now(timezone.utc).date()


class _DateType(click.ParamType):
    name = "DATE"

    def convert(self, value: Any, param: Any, ctx: Any) -> date:
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date (expected YYYY-MM-DD)", param, ctx)


DATE = _DateType()
RULES_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.group()
def rules() -> None:
    """Rule-set files: validate, simulate over a population, explain one patient."""


# ---------------------------------------------------------------- validate

@rules.command()
@click.argument("file", type=RULES_FILE)
def validate(file: Path) -> None:
    """Check a rule-set FILE: print OK, or every problem as FILE:LINE: path: message (exit 1)."""
    try:
        ruleset = load_ruleset(file)
    except RuleSetError as error:
        for line in format_problems(error):
            click.echo(line)
        raise RuleSetProblems(f"{file}: {len(error.problems)} problem(s)") from None
    click.echo(f"OK: {file} (version {ruleset.version}, {len(ruleset.value_sets)} value sets)")


# ---------------------------------------------------------------- simulate

@rules.command()
@click.option("--rules", "rules_file", type=RULES_FILE, required=True, help="Rule-set file (before).")
@click.option("--against", type=RULES_FILE, default=None,
              help="A second rule-set file (after): report the patients whose card changes and why.")
@click.option("--as-of", type=DATE, default=None, help="Evaluation date for every patient [default: today, UTC].")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Worker processes [default: CPU count].")
@click.option("--cluster", default=None, metavar="tcp://HOST:PORT",
              help="Run on this Dask distributed scheduler instead of local processes (extra 'distributed').")
@click.option("--format", "fmt", type=click.Choice(["table", "html", "json"]), default="table", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Write the report here instead of standard output.")
@click.argument("sources", nargs=-1, required=True)
def simulate(rules_file: Path, against: Path | None, as_of: date | None, jobs: int | None, cluster: str | None,
             fmt: str, output: Path | None, sources: tuple[str, ...]) -> None:
    """Run the rule set over a population: SOURCE is a folder or file of FHIR Bundles, bulk NDJSON files,
    or a FHIR server base URL. Reports per card the patients shown it and the rate."""
    from cds_service.admin.cluster import ClusterError
    from cds_service.admin.simulation import SourceError, collect_tasks, simulate as run_simulation
    from cds_service.admin.simulation_report import RENDERERS
    from cds_service.fhir.crawler import ServerSourceError

    paths = [rules_file, *([against] if against else [])]
    rule_sets = [_load_rules(p) for p in paths]
    loinc = sorted({code for _, code in rule_sets[0].observation_codes})
    try:
        tasks = collect_tasks(sources, loinc)
    except (SourceError, ServerSourceError) as exc:
        raise InputError(str(exc)) from None
    if not tasks:
        raise InputError(f"no patients found in {', '.join(sources)}")
    day = _as_of(as_of)
    with click.progressbar(length=len(tasks), label="Simulating", file=sys.stderr) as bar:
        try:
            simulation = run_simulation([str(p) for p in paths], rule_sets, tasks, day, jobs, progress=bar.update,
                                        cluster=cluster)
        except ClusterError as exc:
            raise InputError(str(exc)) from None
    report = RENDERERS[fmt](simulation)
    if output:
        try:
            output.write_text(report, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{output}: cannot be written ({exc.strerror})") from None
        click.echo(f"Report written to {output}", err=True)
    else:
        click.echo(report, nl=False)


# ---------------------------------------------------------------- explain

def read_patient_request(path: Path) -> dict[str, Any]:
    """A hook-request JSON file (with prefetch), or a FHIR Bundle holding one patient (made into one)."""
    from cds_service.admin.population import BundleError, record_from_bundle

    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        try:
            return record_from_bundle(body, str(path)).hook_request()
        except BundleError as exc:
            raise InputError(str(exc)) from None
    if not isinstance(body, dict) or "hook" not in body:
        raise InputError(f"{path}: expected a FHIR Bundle or a CDS Hooks request (field 'hook' is missing)")
    if body.get("hook") != "patient-view":
        raise InputError(f"{path}: field 'hook' is {body.get('hook')!r}; explain reads patient-view requests")
    return body


@rules.command()
@click.option("--rules", "rules_file", type=RULES_FILE, required=True, help="Rule-set file.")
@click.option("--as-of", type=DATE, default=None, help="Evaluation date [default: today, UTC].")
@click.argument("patient", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def explain(rules_file: Path, as_of: date | None, patient: Path) -> None:
    """Every fact found for one PATIENT (a Bundle or hook-request JSON file) with its source record, how
    each medication record was mapped, and every evaluation's points and outcome."""
    from cds_service.admin.simulation import build_engines
    from cds_service.engine.registry import PATIENT_VIEW_SERVICE
    from cds_service.hooks.request import parse_hook_request

    ruleset = _load_rules(rules_file)
    body = read_patient_request(patient)
    day = _as_of(as_of)
    engine = build_engines([ruleset], day)[0]
    try:
        result = engine.run(engine.registry.get(PATIENT_VIEW_SERVICE), parse_hook_request(body))
    except ServiceError as exc:
        field = f" (field {exc.expression})" if exc.expression else ""
        raise InputError(f"{patient}: {exc.message}{field}") from None
    click.echo(render_explanation(result, ruleset, patient, rules_file, day))


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def render_explanation(result: Any, ruleset: RuleSet, patient: Path, rules_file: Path, day: date) -> str:
    facts, evaluation = result.facts, result.evaluation
    out = [f"Patient/{facts.patient.resource_id} from {patient.name}",
           f"Rule set {rules_file} (version {ruleset.version}); as of {day.isoformat()} (12:00 UTC)",
           f"Age: {facts.age_years if facts.age_years is not None else 'unknown'}", "", "Facts found:"]
    for name, fact in sorted(facts.facts.items()):
        note = f" ({fact.note})" if fact.note else ""
        out.append(f"  {name}{note}")
        out += [f"      {source.describe()}" for source in fact.sources]
    if not facts.facts:
        out.append("  (none)")
    by_method = Counter("text" if r.method == "text" else "code" if r.concepts else "none" for r in facts.conditions)
    out += ["", f"Conditions: {len(facts.conditions)} (recognised by code {by_method['code']}, by text "
                f"{by_method['text']}, not recognised {by_method['none']})"]
    out += ["", "Latest usable observations:"]
    for kind, value in sorted(facts.observations.items()):
        shown = value.answer or (f"{value.value} {value.unit}" if value.value is not None else "flagged")
        low = " (low)" if value.is_low else ""
        out.append(f"  {kind}: {shown}{low} - {value.provenance.describe()}")
    if not facts.observations:
        out.append("  (none)")
    mapping = facts.medication_mapping
    out += ["", f"Medication records: {len(facts.medications)} (by code {mapping.get('code', 0)}, "
                f"by text {mapping.get('text', 0)}, not mapped {mapping.get('unmapped', 0)})"]
    for med in facts.medications:
        how = {"code": "mapped by code", "text": "mapped by text"}.get(med.method or "", "not mapped")
        classes = f"; classes {', '.join(sorted(med.classes))}" if med.classes else ""
        ingredients = f"; {', '.join(sorted(med.ingredients))}" if med.ingredients else ""
        counted = "" if med.counted else "; not current (status/intent/period): not counted"
        out.append(f"  {med.provenance.describe()}: {how}{ingredients}{classes}{counted}")
    out += ["", "Evaluations:"]
    labels = {"red_flag": "A DVT (A.1 untreated, A.2/A.3 possible)", "venous": "B venous duplex workup",
              "contributors": "C contributors"}
    for key, outcome in zip(("red_flag", "venous", "contributors"), evaluation.outcomes):
        verdict = "FIRED" if outcome.fired else "not fired"
        score = ""
        if outcome.score is not None:
            score = f", score {_points(outcome.score)}"
            score += f" vs threshold {_points(outcome.threshold)}" if outcome.threshold is not None else \
                " (documented cramps: no threshold)"
        out.append(f"  {labels[key]} -> {outcome.card_id}: {verdict}{score}")
        if outcome.pathways:
            out.append(f"    pathways: {', '.join(outcome.pathways)}; side: {outcome.side or 'bilateral/unknown'}")
        for item in outcome.findings:
            note = f" ({item.note})" if item.note else ""
            out.append(f"    finding {item.item}{note}")
            out += [f"        {s.describe()}" for s in item.sources]
        for item in outcome.items:
            note = f" ({item.note})" if item.note else ""
            out.append(f"    {item.item}: {_points(item.points)} point(s){note}")
            out += [f"        {s.describe()}" for s in item.sources]
        if outcome.missing_labs:
            out.append(f"    no usable result in the lookback for: {', '.join(outcome.missing_labs)}")
        if outcome.labs_not_checked:
            out.append("    lab results could not be checked (observations not available)")
        out += [f"    note: {note}" for note in outcome.notes]
        out += [f"    medication record read: {s.describe()}" for s in outcome.medications_read if outcome.fired]
        if outcome.anticoagulant_not_checked:
            out.append(f"    anticoagulant not checked in: {', '.join(outcome.anticoagulant_not_checked)}")
        out += [f"    venous duplex on record: {s.describe()}" for s in outcome.duplex_on_record]
        if outcome.not_checked:
            out.append(f"    keys this rule reads that could not be checked: {', '.join(outcome.not_checked)}")
        for missing in outcome.missing:
            adds = f", would add {_points(missing.points)}" if missing.points is not None else ""
            what = missing.item or missing.test or ", ".join(missing.keys)
            out.append(f"    missing ({missing.card_id}): {missing.reason} {what}{adds}")
    shown = [o.card_id for o in evaluation.shown]
    out += ["", f"Card shown after precedence: {', '.join(shown) if shown else 'none'}"
                " (suppression after overrides is not applied here)"]
    out.append(f"Could not be checked: {', '.join(facts.not_checked) or 'nothing'}")
    if facts.incomplete:
        out.append(f"Incomplete (more pages not read): {', '.join(facts.incomplete)}")
    out.append(f"Skipped records: {len(facts.skipped)}")
    out += [f"  {s.resource_type}/{s.resource_id}: {s.reason}" for s in facts.skipped]
    if facts.passed_over:
        out.append("Passed over (unknown unit or unusable value):")
        out += [f"  {entry}" for entry in facts.passed_over]
    return "\n".join(out)
