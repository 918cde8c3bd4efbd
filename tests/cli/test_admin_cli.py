"""``cramp-cds admin``: console accounts from the command line (docs/admin-console.md), on a real SQLite file;
each change audited as cli:<os user>, and an account created here signs in to the console."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.admin.accounts import Accounts
from cds_service.cli.main import CliContext, main
from cds_service.storage.admin_store import AdminStore
from cds_service.storage.store import CardStore
from support.admin_console import console_app, sign_in

PASSWORD = "a long enough passphrase"


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'service.sqlite3'}"


def run(database: str, *args: str, input: str | None = None, env_database: bool = True):
    env = {"CRAMP_DATABASE_URL": database} if env_database else {}
    return CliRunner().invoke(main, ["admin", *args], obj=CliContext(env=env), input=input)


def store_of(database: str) -> tuple[AdminStore, CardStore]:
    card_store = CardStore(database, None)
    return AdminStore(card_store.engine), card_store


def test_create_user_asks_for_the_password_twice_and_the_account_signs_in(database: str, tmp_path: Path) -> None:
    result = run(database, "create-user", "Alice", "--role", "editor", "--display-name", "Alice Admin",
                 input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "created alice (editor)" in result.output
    assert PASSWORD not in result.output  # the prompt does not echo it
    store, card_store = store_of(database)
    try:
        user = store.get_user("alice")
        assert user is not None and user.role == "editor" and user.display_name == "Alice Admin"
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
        entry = store.audit_log()[0]
        assert (entry.actor, entry.action) == (f"cli:{getpass.getuser()}", "user-create")
    finally:
        card_store.close()
    app = console_app(tmp_path, database_url=database)
    assert sign_in(app.test_client(), "alice", PASSWORD).status_code == 302


def test_the_two_passwords_must_match(database: str) -> None:
    result = run(database, "create-user", "bob", "--role", "viewer",
                 input=f"{PASSWORD}\nsomething else entirely\n{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output.lower()  # asked again, then accepted


def test_password_from_stdin_for_scripts(database: str) -> None:
    result = run(database, "create-user", "carol", "--role", "deployer", "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    store, card_store = store_of(database)
    try:
        assert Accounts(store).authenticate("carol", PASSWORD, "127.0.0.1").ok
    finally:
        card_store.close()


@pytest.mark.parametrize("args,stdin,message", [
    (["create-user", "dave", "--role", "viewer", "--password-stdin"], "too short\n", "at least 12 characters"),
    (["create-user", "no spaces allowed", "--role", "viewer", "--password-stdin"], PASSWORD + "\n", "User name:"),
    (["create-user", "-x", "--role", "viewer", "--password-stdin"], PASSWORD + "\n", ""),
    (["create-user", "dave", "--role", "superuser", "--password-stdin"], PASSWORD + "\n", "superuser"),
    (["create-user", "dave", "--role", "viewer", "--password-stdin"], "\n", "no password on standard input"),
    (["set-role", "nobody", "viewer"], None, "no admin user 'nobody'"),
    (["disable", "nobody"], None, "no admin user 'nobody'"),
])
def test_refusals_say_why_and_exit_2(database: str, args: list[str], stdin: str | None, message: str) -> None:
    result = run(database, *args, input=stdin)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_user_name_is_created_once(database: str) -> None:
    assert run(database, "create-user", "erin", "--role", "viewer", "--password-stdin", input=PASSWORD).exit_code == 0
    again = run(database, "create-user", "ERIN", "--role", "editor", "--password-stdin", input=PASSWORD)
    assert again.exit_code == 2 and "'erin' already exists" in again.output


def test_set_password_set_role_disable_enable_and_list(database: str) -> None:
    run(database, "create-user", "frank", "--role", "viewer", "--password-stdin", input=PASSWORD)
    new_password = "another long passphrase"
    assert run(database, "set-password", "frank", "--password-stdin", input=new_password).exit_code == 0
    assert run(database, "set-role", "frank", "deployer").exit_code == 0
    assert run(database, "disable", "frank").exit_code == 0
    listed = run(database, "list-users")
    assert listed.exit_code == 0
    assert [line.split()[:3] for line in listed.output.splitlines()[1:]] == [["frank", "deployer", "disabled"]]
    store, card_store = store_of(database)
    try:
        accounts = Accounts(store)
        assert not accounts.authenticate("frank", new_password, "127.0.0.1").ok  # disabled
        assert run(database, "enable", "frank").exit_code == 0
        assert accounts.authenticate("frank", new_password, "127.0.0.2").ok
        assert not accounts.authenticate("frank", PASSWORD, "127.0.0.3").ok  # the old one no longer works
        actions = [entry.action for entry in store.audit_log()]
        assert actions[:5] == ["user-enable", "user-disable", "user-set-role", "user-set-password", "user-create"]
        assert {entry.actor for entry in store.audit_log()} == {f"cli:{getpass.getuser()}"}
    finally:
        card_store.close()


def test_list_users_on_an_empty_database_says_how_to_start(database: str) -> None:
    result = run(database, "list-users")
    assert result.exit_code == 0 and "cramp-cds admin create-user" in result.output


def test_database_url_option_wins_over_the_environment(tmp_path: Path, database: str) -> None:
    other = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    result = run(database, "create-user", "gina", "--role", "viewer", "--password-stdin", "--database-url", other,
                 input=PASSWORD)
    assert result.exit_code == 0, result.output
    assert "gina" in run(other, "list-users").output
    assert "gina" not in run(database, "list-users").output


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'no-such-dir' / 'db.sqlite3'}"
    result = run(missing, "list-users")
    assert result.exit_code == 1
    assert "cannot open the database" in result.output and "Traceback" not in result.output
