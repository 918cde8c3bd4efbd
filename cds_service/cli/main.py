"""The ``cramp-cds`` command line.

A click group with a context object (``CliContext``: the environment to read settings from, and the
function that runs the server, both replaceable by tests). One function per command; add a command with
``@main.command()`` and ``@click.pass_obj``.

Exits, each a one-line message and no traceback:

    CliError (click.ClickException, exit 1)
    └── ConfigurationError (exit 2)   invalid configuration: a CRAMP_ variable or option (SettingsError),
                                      the rule-set file (RuleSetError) or the trusted-clients file
                                      (TrustedClientsError); the message names the variable or file

Click's own usage errors (unknown option, missing file) also exit 2.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import click

from cds_service import __version__
from cds_service.settings import Settings, SettingsError

if TYPE_CHECKING:  # the app is a WSGI callable to the CLI: only web/ imports Flask (ARCHITECTURE.md)
    from _typeshed.wsgi import WSGIApplication

AppFactory = Callable[[], "WSGIApplication"]
ServerRunner = Callable[[AppFactory, Mapping[str, Any]], None]

DEV_MODE_WARNING = """\
************************************************************************
*  WARNING: DEVELOPMENT MODE. CLIENT AUTHENTICATION IS OFF.            *
*  Anyone who can reach this port can call the CDS services.           *
*  Use only on your own machine, with synthetic data. Never in         *
*  production, never with real patient data.                          *
************************************************************************"""


class CliError(click.ClickException):
    """A command cannot go on; the message says why."""

    exit_code = 1


class ConfigurationError(CliError):
    """Invalid settings (a CRAMP_ variable or an option)."""

    exit_code = 2


def run_gunicorn(app_factory: AppFactory, options: Mapping[str, Any]) -> None:
    """Run gunicorn in this process with ``options``; each worker builds its app with ``app_factory``."""
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> "WSGIApplication":
            return app_factory()

    _Server(prog="cramp-cds serve").run()


@dataclass
class CliContext:
    """What every command gets through ``@click.pass_obj``."""

    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    run_server: ServerRunner = run_gunicorn

    def settings(self, **overrides: Any) -> Settings:
        """Settings from the environment with ``overrides``; ConfigurationError when invalid."""
        try:
            settings = Settings.from_env(self.env)
        except SettingsError as error:
            raise ConfigurationError(str(error)) from None
        changes = {key: value for key, value in overrides.items() if value is not None}
        return settings.with_changes(**changes) if changes else settings

    def server_options(self) -> dict[str, Any]:
        """Gunicorn settings (cds_service/serve/gunicorn_conf.py) from the environment."""
        try:
            from cds_service.serve import gunicorn_conf

            return gunicorn_conf.build(self.env)
        except SettingsError as error:
            raise ConfigurationError(str(error)) from None


def _build_app(settings: Settings) -> "WSGIApplication":
    from cds_service.auth.trusted_clients import TrustedClientsError
    from cds_service.ruleset.loader import RuleSetError
    from cds_service.web.app import create_app

    try:
        return create_app(settings)
    except (SettingsError, RuleSetError, TrustedClientsError) as error:
        raise ConfigurationError(str(error)) from None


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_bind_free(bind: str) -> None:
    """A busy port: one line naming --port / PORT= (not gunicorn's five retries and "Can't connect")."""
    from cds_service.serve.bind import check_bind_free

    try:
        check_bind_free(bind)
    except SettingsError as error:
        raise ConfigurationError(str(error)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cramp-cds")
@click.pass_context
def main(ctx: click.Context) -> None:
    """leg-cramp-cds: a CDS Hooks 2.0 service (leg-cramp risk, venous workup, DVT red flags)."""
    ctx.ensure_object(CliContext)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),  # = gunicorn_conf.WORKERS_RANGE (not imported here: it reads the environment)
    default=None,
    help="Worker processes. [default: CRAMP_WORKERS, else CPU cores + 1, at most 8]",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),  # = gunicorn_conf.THREADS_RANGE
    default=None,
    help="Threads per worker. [default: CRAMP_THREADS, else 8]",
)
@click.option(
    "--dev",
    is_flag=True,
    help="Development mode: NO client authentication (same as CRAMP_DEV_MODE=1). Never in production.",
)
@click.option(
    "--rules",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    default=None,
    help="Rule-set file to use instead of the bundled one (same as CRAMP_RULES_FILE).",
)
@click.option(
    "--no-worker",
    is_flag=True,
    help="Start no dry-run job worker beside the server (same as CRAMP_JOB_WORKER=0; run `cramp-cds worker`).",
)
@click.pass_obj
def serve(
    obj: CliContext,
    host: str,
    port: int,
    workers: int | None,
    threads: int | None,
    dev: bool,
    rules: Path | None,
    no_worker: bool = False,
) -> None:
    """Run the service under gunicorn, the production server.

    Settings come from the CRAMP_ environment variables (docs/configuration.md); --dev and --rules
    override them. Ctrl-C or SIGTERM stops it gracefully: in-flight requests finish first.
    """
    settings = obj.settings(development_mode=True if dev else None, rules_path=rules)
    options = obj.server_options()
    options["bind"] = [_bind_address(host, port)]
    if workers is not None:
        options["workers"] = workers
    if threads is not None:
        options["threads"] = threads

    if settings.development_mode:
        click.echo(DEV_MODE_WARNING, err=True)
        if not _is_loopback(host):
            click.echo(
                f"*  AND IT LISTENS ON {host}, NOT ONLY ON THIS MACHINE: other hosts can reach it.",
                err=True,
            )

    _check_bind_free(options["bind"][0])
    # Build the app once here so that an invalid rule set or setting stops the start with one clear line,
    # instead of every worker failing to boot. Each worker then builds its own (no state shared by fork).
    _build_app(settings)
    from cds_service.cli.worker import job_worker_process, worker_enabled

    # The admin console's dry runs run in a worker process beside gunicorn, never in a request worker.
    worker_env = {**obj.env, **({"CRAMP_DEV_MODE": "1"} if dev else {}),
                  **({"CRAMP_RULES_FILE": str(rules)} if rules else {})}
    with job_worker_process(worker_env, enabled=not no_worker and worker_enabled(obj.env)):
        obj.run_server(lambda: _build_app(settings), options)


@main.group()
def feedback() -> None:
    """Feedback received on the cards (docs/feedback.md)."""


@feedback.command("report")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Only cards issued at or after this date (UTC), e.g. 2026-01-01.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "html"]), default="table", show_default=True,
    help="Plain-text table, CSV, or a self-contained HTML page with charts.",
)
@click.option(
    "--database-url",
    default=None,
    help="Database to read. [default: CRAMP_DATABASE_URL, else sqlite:///leg-cramp-cds.sqlite3]",
)
@click.pass_obj
def feedback_report(obj: CliContext, since: Any, fmt: str, database_url: str | None) -> None:
    """Per card and rule-set version: shown, accepted, overridden, rates, top 3 override reasons."""
    from datetime import timezone

    from cds_service.admin.feedback_report import build_report, render

    settings = obj.settings(database_url=database_url)
    since = since.replace(tzinfo=timezone.utc) if since else None
    try:
        rows = build_report(settings.database_url, since)
    except SettingsError as error:  # store.StoreUnavailable: no such database, or it can't be opened
        raise CliError(str(error)) from None
    click.echo(render(rows, fmt, since=since), nl=False)


from cds_service.cli.rules import rules  # noqa: E402  (the `rules` group: validate, simulate, explain)

main.add_command(rules)

from cds_service.cli.keys import keys  # noqa: E402  (the `keys` group: new, jwks, kid, trusted-client, token)

main.add_command(keys)

from cds_service.cli.integration import COMMANDS as INTEGRATION_COMMANDS  # noqa: E402  (invoke, check-server, load-fixtures)

for _command in INTEGRATION_COMMANDS:
    main.add_command(_command)

from cds_service.cli.admin import admin  # noqa: E402  (the `admin` group: console accounts)

main.add_command(admin)

from cds_service.cli.worker import worker  # noqa: E402  (`worker`: the admin console's dry-run jobs)

main.add_command(worker)


if __name__ == "__main__":  # pragma: no cover
    main()
