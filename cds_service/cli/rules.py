"""``cramp-cds rules``: start a rule-set file from the bundled one, validate it, simulate it over a population,
explain one patient.

    cramp-cds rules init [PATH] [--force]
    cramp-cds rules validate FILE
    cramp-cds rules simulate --rules FILE [--against OTHER_FILE] [--as-of DATE] [--jobs N]
                             [--format table|html|json] [--output PATH] SOURCE...
    cramp-cds rules explain --rules FILE [--as-of DATE] [--format text|html] [--output PATH] PATIENT

The explanation itself (model and renderings) is admin/explanation.py; the console's Try-it page shows the same.

Exits, each with a one-line message (``validate`` lists every problem) and no traceback:

    0  OK
    1  ``validate``: the rule set has problems (one ``FILE:LINE: path: message`` line each)
    2  usage or input error (InputError, click usage errors): a missing or unreadable file, bad JSON,
       an invalid rule set given to simulate/explain, an unreachable FHIR server
"""

from __future__ import annotations

import json
import sys
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
    """Rule-set files: start one (init), validate, simulate over a population, explain one patient."""


# ---------------------------------------------------------------- init

BUNDLED_RULES = "data/ruleset.yaml"  # in the cds_service package


def bundled_ruleset_text() -> str:
    from importlib import resources

    return resources.files("cds_service").joinpath(BUNDLED_RULES).read_text(encoding="utf-8")


def next_steps(path: Path) -> list[str]:
    """What to do with a rule-set file just written (``rules init``)."""
    shown = str(path)
    return [
        "Next:",
        f"  1. edit it, then check it:   cramp-cds rules validate {shown}",
        f"  2. try it on patients:       cramp-cds rules simulate --rules {shown} SOURCE...",
        "                               (SOURCE: bundles, NDJSON, a FHIR server; --rules BEFORE --against AFTER",
        "                               lists the patients whose card changes, and why)",
        f"     and on one patient:       cramp-cds rules explain --rules {shown} PATIENT",
        f"  3. use it:                   cramp-cds serve --rules {shown}   (or CRAMP_RULES_FILE={shown})",
        "     or paste it as a draft in the admin console (/admin/rules): validate, dry-run, deploy.",
    ]


@rules.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default=Path("ruleset.yaml"))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path: Path, force: bool) -> None:
    """Write the bundled rule set to PATH [default: ruleset.yaml] to start from (refuses to overwrite an
    existing file without --force)."""
    if path.exists() and not force:
        raise InputError(f"{path} exists: not overwritten (use --force to replace it)")
    text = bundled_ruleset_text()
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot be written ({exc.strerror})") from None
    version = load_default_ruleset().version
    click.echo(f"Wrote the bundled rule set (version {version}) to {path}.")
    for line in next_steps(path):
        click.echo(line)


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
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes, for reading bulk NDJSON and for evaluating [default: CPU count].")
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
        tasks = collect_tasks(sources, loinc, jobs)  # --jobs bounds the NDJSON scan too
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
    _write_or_echo(RENDERERS[fmt](simulation), output, "Report")


def _write_or_echo(text: str, output: Path | None, what: str) -> None:
    """``text`` to the ``--output`` file (saying so on standard error), else to standard output."""
    if output:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{output}: cannot be written ({exc.strerror})") from None
        click.echo(f"{what} written to {output}", err=True)
    else:
        click.echo(text, nl=False)


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
@click.option("--format", "fmt", type=click.Choice(["text", "html"]), default="text", show_default=True,
              help="text, or a standalone HTML page with the explanation and the cards a CDS client shows.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Write the explanation here instead of standard output.")
@click.argument("patient", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def explain(rules_file: Path, as_of: date | None, fmt: str, output: Path | None, patient: Path) -> None:
    """Every fact found for one PATIENT (a Bundle or hook-request JSON file) with its source record, how
    each medication record was mapped, and every evaluation's points and outcome."""
    from cds_service.admin.explanation import (explain as explain_result, render_explanation_page,
                                               render_explanation_text)
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
    explanation = explain_result(result, ruleset, patient_label=patient.name, rules_label=str(rules_file), day=day)
    if fmt == "html":
        report = render_explanation_page(explanation, result.response)
    else:
        report = render_explanation_text(explanation) + "\n"
    _write_or_echo(report, output, "Explanation")



from cds_service.cli.rule_versions import VERSION_COMMANDS  # noqa: E402  (versions, publish, deploy, rollback)
for _command in VERSION_COMMANDS: rules.add_command(_command)  # noqa: E701
