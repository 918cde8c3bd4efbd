"""``cramp-cds admin``: admin-console accounts (docs/admin-console.md).

    create-user USERNAME --role R   a local account; the password from a prompt (asked twice) or
                                    --password-stdin (one line, for scripts)
    set-password USERNAME           the same two ways
    set-role USERNAME ROLE
    disable USERNAME / enable USERNAME
    list-users

Every change is written to the console's audit log with the actor ``cli:<operating-system user>``. The
database is CRAMP_DATABASE_URL or --database-url (the same one the service uses).
"""

from __future__ import annotations

import contextlib
import getpass
import sys
from typing import Any, Callable, Iterator

import click

from cds_service.admin.accounts import MIN_PASSWORD_LENGTH, ROLES, AccountError, Accounts
from cds_service.settings import SettingsError

DATABASE_OPTION_HELP = "Database of the service. [default: CRAMP_DATABASE_URL, else sqlite:///leg-cramp-cds.sqlite3]"


class AccountRefused(click.ClickException):
    """The account change was refused (bad user name, short password, unknown user): exit 2."""

    exit_code = 2


class DatabaseUnavailable(click.ClickException):
    exit_code = 1


def _database_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--database-url", default=None, help=DATABASE_OPTION_HELP)(function)


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  (no login name in a container: still audited)
        user = "unknown"
    return f"cli:{user}"


class _Session:
    """The store behind one command, closed when it ends."""

    def __init__(self, obj: Any, database_url: str | None) -> None:
        from cds_service.storage.admin_store import AdminStore
        from cds_service.storage.store import CardStore

        settings = obj.settings(database_url=database_url)  # ConfigurationError (exit 2) for a bad variable
        try:
            self._card_store = CardStore(settings.database_url, None)  # migrates: the users table exists after
        except SettingsError as error:  # StoreUnavailable
            raise DatabaseUnavailable(str(error)) from None
        self.accounts = Accounts(AdminStore(self._card_store.engine))

    def close(self) -> None:
        self._card_store.close()


@contextlib.contextmanager
def _accounts(obj: Any, database_url: str | None) -> Iterator[Accounts]:
    session = _Session(obj, database_url)
    try:
        yield session.accounts
    except AccountError as error:
        raise AccountRefused(error.message) from None
    except Exception as error:
        from cds_service.storage.admin_store import AdminStoreError

        if isinstance(error, AdminStoreError):
            raise DatabaseUnavailable(str(error)) from None
        raise
    finally:
        session.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise AccountRefused("--password-stdin: no password on standard input.")
        return password
    return click.prompt(f"Password (at least {MIN_PASSWORD_LENGTH} characters)", hide_input=True,
                        confirmation_prompt="Repeat the password", err=True)


@click.group()
def admin() -> None:
    """Admin-console accounts: create-user, set-password, set-role, disable, enable, list-users."""


@admin.command("create-user")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="viewer: reads; editor: + drafts, try it, dry runs; deployer: + deploy, roll back.")
@click.option("--display-name", default=None, help="The person's name as the console shows it.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@_database_option
@click.pass_obj
def create_user(obj: Any, username: str, role: str, display_name: str | None, password_stdin: bool,
                database_url: str | None) -> None:
    """Create a local console account USERNAME with ROLE."""
    password = _read_password(password_stdin)
    with _accounts(obj, database_url) as accounts:
        user = accounts.create_user(username, password, role, actor=_actor(), display_name=display_name)
        click.echo(f"created {user.username} ({user.role})")


@admin.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@_database_option
@click.pass_obj
def set_password(obj: Any, username: str, password_stdin: bool, database_url: str | None) -> None:
    """Give USERNAME a new password (their open console sessions end)."""
    password = _read_password(password_stdin)
    with _accounts(obj, database_url) as accounts:
        accounts.set_password(username, password, actor=_actor())
        click.echo(f"password of {username.strip().lower()} changed")


@admin.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(ROLES))
@_database_option
@click.pass_obj
def set_role(obj: Any, username: str, role: str, database_url: str | None) -> None:
    """Give USERNAME the console role ROLE (takes effect at their next request)."""
    with _accounts(obj, database_url) as accounts:
        accounts.set_role(username, role, actor=_actor())
        click.echo(f"{username.strip().lower()} is now {role}")


@admin.command("disable")
@click.argument("username")
@_database_option
@click.pass_obj
def disable(obj: Any, username: str, database_url: str | None) -> None:
    """Disable USERNAME: no sign-in, and their open sessions end at their next request."""
    with _accounts(obj, database_url) as accounts:
        accounts.set_disabled(username, True, actor=_actor())
        click.echo(f"{username.strip().lower()} disabled")


@admin.command("enable")
@click.argument("username")
@_database_option
@click.pass_obj
def enable(obj: Any, username: str, database_url: str | None) -> None:
    """Enable a disabled USERNAME again."""
    with _accounts(obj, database_url) as accounts:
        accounts.set_disabled(username, False, actor=_actor())
        click.echo(f"{username.strip().lower()} enabled")


@admin.command("list-users")
@_database_option
@click.pass_obj
def list_users(obj: Any, database_url: str | None) -> None:
    """The console's local accounts: user name, role, status, last sign-in."""
    with _accounts(obj, database_url) as accounts:
        users = accounts.list_users()
        if not users:
            click.echo("no admin users yet (cramp-cds admin create-user NAME --role deployer)")
            return
        rows = [("user", "role", "status", "name", "last sign-in")] + [
            (u.username, u.role, "disabled" if u.disabled else "active", u.display_name or "-",
             u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never") for u in users]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
