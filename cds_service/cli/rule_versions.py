"""``cramp-cds rules versions | publish | deploy | rollback``: the rule-set versions in the database, as the
admin console shows and changes them (docs/rule-versions.md). Registered on the ``rules`` group by
cli/rules.py.

    cramp-cds rules versions [--database-url URL]
    cramp-cds rules publish FILE [--database-url URL] [--actor NAME]     validate, save as a draft
    cramp-cds rules deploy VERSION [--database-url URL] [--actor NAME]   every replica switches within 2 s
    cramp-cds rules rollback [--database-url URL] [--actor NAME]

Exits, like the other ``rules`` commands, with one line and no traceback:

    0  done
    1  the rule set has problems (one ``FILE:LINE: field: message`` line each), its version number is
       taken by other content, the version does not validate, or there is nothing to roll back to
    2  usage or input error: an unreadable file, an unknown version, a database that cannot be opened or
       does not answer, CRAMP_RULES_SOURCE=file (the rules file is authoritative)
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any, Literal

import click

from cds_service.admin.rule_versions import (
    AdminStoreUnavailable, NothingToRollBack, RuleSetInvalid, RuleVersions, UnknownVersion, VersionConflict,
    deployed_message, draft_saved_message, file_mode_reason, rolled_back_message,
)
from cds_service.settings import Settings, SettingsError
from cds_service.storage.admin_store import AdminStore
from cds_service.storage.store import CardStore


class InputError(click.ClickException):
    exit_code = 2


class Refused(click.ClickException):
    """The change was refused (problems, conflict, nothing to roll back); the message says why."""

    exit_code = 1


class Problems(Refused):
    def show(self, file: Any = None) -> None:  # the problems were printed one per line
        click.echo(self.format_message(), err=True)


DATABASE_URL = click.option(
    "--database-url", default=None,
    help="Database holding the versions. [default: CRAMP_DATABASE_URL, else sqlite:///leg-cramp-cds.sqlite3]")
ACTOR = click.option("--actor", default=None, help="Name recorded in the audit log. [default: cli:<login name>]")


def _settings(obj: Any, database_url: str | None) -> Settings:
    try:
        settings = obj.settings(database_url=database_url) if hasattr(obj, "settings") else Settings.from_env()
    except SettingsError as error:
        raise InputError(str(error)) from None
    return settings.with_changes(database_url=database_url) if database_url else settings


class _Opened:
    """The versions of an existing database (never creates one), closed on leaving."""

    def __init__(self, settings: Settings, *, changing: bool) -> None:
        if changing and settings.rules_source == "file":
            raise InputError(file_mode_reason(settings.rules_path))
        try:
            self.card_store = CardStore(settings.database_url, None, must_exist=True)
        except SettingsError as error:  # StoreUnavailable: no such database, or it cannot be opened
            raise InputError(str(error)) from None
        self.versions = RuleVersions(AdminStore(self.card_store.engine),
                                     base_dir=settings.rules_path.parent if settings.rules_path else None)

    def __enter__(self) -> RuleVersions:
        return self.versions

    def __exit__(self, *exc: Any) -> None:
        self.card_store.close()


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


class _Refusals:
    """The refusals of RuleVersions as the lines and the exit code they call for."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> Literal[False]:  # never swallows: raises or re-raises
        if error is None:
            return False
        if isinstance(error, RuleSetInvalid):
            for problem in error.problems:
                where = f"{self.source}:{problem.line}" if problem.line else self.source
                click.echo(f"{where}: {problem.field}: {problem.message}")
            raise Problems(f"{self.source}: {len(error.problems)} problem(s); nothing was changed") from None
        if isinstance(error, (VersionConflict, NothingToRollBack)):
            raise Refused(str(error)) from None
        if isinstance(error, UnknownVersion):
            raise InputError(f"{error} (list them with: cramp-cds rules versions)") from None
        if isinstance(error, AdminStoreUnavailable):
            raise InputError(str(error)) from None
        return False


@click.command("versions")
@DATABASE_URL
@click.pass_obj
def versions_command(obj: Any, database_url: str | None) -> None:
    """List the rule-set versions in the database, newest first; * marks the active one."""
    with _Opened(_settings(obj, database_url), changing=False) as versions, _Refusals("database"):
        state = versions.deployment_state()
        rows = versions.list_versions()
        if not rows:
            click.echo("No rule-set versions in the database (the service seeds the first when it starts).")
            return
        click.echo(f"{'':1} {'version':<20} {'status':<8} {'created by':<20} {'created (UTC)':<17} deployed by")
        for row in rows:
            mark = "*" if row.version == state.version else " "
            created = row.created_at.strftime("%Y-%m-%d %H:%M")
            click.echo(f"{mark} {row.version:<20} {row.status:<8} {row.created_by:<20} {created:<17} "
                       f"{row.deployed_by or '-'}")
        click.echo(f"Active: {state.version or 'none'} (deployment {state.sequence})")


@click.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@DATABASE_URL
@ACTOR
@click.pass_obj
def publish_command(obj: Any, file: Path, database_url: str | None, actor: str | None) -> None:
    """Validate FILE and save it as a draft under its own `version:` (not deployed)."""
    try:
        content = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{file}: cannot be read ({error})") from None
    with _Opened(_settings(obj, database_url), changing=True) as versions, _Refusals(str(file)):
        saved = versions.save_draft_result(content, _actor(actor))
        click.echo(draft_saved_message(saved.version, saved.changed))
        if saved.version.status == "draft":
            click.echo(f"Deploy it with: cramp-cds rules deploy {saved.version.version}")


@click.command("deploy")
@click.argument("version")
@DATABASE_URL
@ACTOR
@click.pass_obj
def deploy_command(obj: Any, version: str, database_url: str | None, actor: str | None) -> None:
    """Make VERSION the active rule set of every replica."""
    with _Opened(_settings(obj, database_url), changing=True) as versions, _Refusals(f"version {version}"):
        previous = versions.deployment_state().version
        state = versions.deploy(version, _actor(actor))
        click.echo(deployed_message(state, previous))


@click.command("rollback")
@DATABASE_URL
@ACTOR
@click.pass_obj
def rollback_command(obj: Any, database_url: str | None, actor: str | None) -> None:
    """Return every replica to the version active before the current one was deployed."""
    with _Opened(_settings(obj, database_url), changing=True) as versions, _Refusals("rollback"):
        previous = versions.deployment_state().version
        state = versions.rollback(_actor(actor))
        click.echo(rolled_back_message(state, previous))


VERSION_COMMANDS = (versions_command, publish_command, deploy_command, rollback_command)
