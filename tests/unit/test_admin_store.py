"""AdminStore (storage/admin_store.py): accounts, audit, rule-set versions and deployments, on SQLite and
PostgreSQL (127.0.0.1:5432; skipped when it does not answer unless CRAMP_REQUIRE_POSTGRES=1)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from support.feedback import fresh_postgres_database, postgres_url

from cds_service.storage.admin_store import (
    AdminStore, AdminStoreError, AdminStoreUnavailable, NothingToRollBack, UnknownUser, UnknownVersion, UserExists,
    VersionConflict,
)
from cds_service.storage.store import CardStore

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)  # every call a later instant: ordering by time is testable
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path, monkeypatch) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'admin.sqlite3'}"
        return
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        yield postgres_url(host, port, name)


@pytest.fixture
def card_store(database_url) -> Iterator[CardStore]:
    store = CardStore(database_url, "x" * 32)
    yield store
    store.close()


@pytest.fixture(params=["for_card_store", "engine"])
def store(request, card_store) -> AdminStore:
    """The app's way (through the card store's transactions) and the bare engine."""
    if request.param == "engine":
        return AdminStore(card_store.engine, clock=Clock())
    return AdminStore.for_card_store(card_store, clock=Clock())


def test_every_migration_downgrades_and_upgrades_again(tmp_path) -> None:
    """alembic downgrade to the first revision and upgrade to head again, on a database with rows: each
    downgrade() drops what its upgrade() made, and the cards-shown rows of revision 0001 survive."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from cds_service.storage.store import MIGRATIONS_DIR

    card_store = CardStore(f"sqlite:///{tmp_path / 'migrations.sqlite3'}", "secret")
    head_tables = set(inspect(card_store.engine).get_table_names())
    assert {"admin_sign_in_attempts", "jobs", "admin_users", "jwt_seen", "cards_shown"} <= head_tables
    card_store.engine.dispose()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{tmp_path / 'migrations.sqlite3'}")
    with card_store.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO cards_shown VALUES ('c1', 's', 'r', 'v', 'info', 'h', 'p', '2026-12-02 00:00:00.000000', '[]')")
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
        assert set(inspect(connection).get_table_names()) == {"alembic_version", "cards_shown", "feedback"}
        command.upgrade(config, "head")
        assert set(inspect(connection).get_table_names()) == head_tables
        assert connection.exec_driver_sql("SELECT card_uuid FROM cards_shown").scalars().all() == ["c1"]
    card_store.close()


def test_migration_0003_runs_when_the_card_store_opens(card_store) -> None:
    with card_store.engine.connect() as connection:
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        state = connection.exec_driver_sql("SELECT id, sequence, version FROM ruleset_active").all()
    assert revision >= "0003"
    assert [tuple(row) for row in state] == [(1, 0, None)]


# ---------------------------------------------------------------- users

def test_users_created_read_listed_and_changed(store) -> None:
    created = store.create_user("alice", "$argon2id$hash", "editor", "Alice A.")
    store.create_user("bob", None, "viewer")
    assert created.role == "editor" and created.disabled is False and created.last_login_at is None
    with pytest.raises(UserExists, match="alice"):
        store.create_user("alice", "other", "viewer")
    store.set_role("alice", "deployer")
    store.set_password_hash("alice", "$argon2id$new")
    store.set_disabled("bob", True)
    store.touch_login("alice")
    alice = store.get_user("alice")
    assert (alice.role, alice.password_hash, alice.display_name) == ("deployer", "$argon2id$new", "Alice A.")
    assert alice.last_login_at is not None and alice.last_login_at.tzinfo is not None
    assert [(u.username, u.disabled) for u in store.list_users()] == [("alice", False), ("bob", True)]
    assert store.get_user("carol") is None


def test_user_changes_refuse_unknown_users_and_roles(store) -> None:
    with pytest.raises(UnknownUser, match="carol"):
        store.set_role("carol", "viewer")
    with pytest.raises(AdminStoreError, match="unknown role 'root'"):
        store.create_user("root", None, "root")


# ---------------------------------------------------------------- audit

def test_audit_log_newest_first_with_paging_and_detail(store) -> None:
    store.record_audit("alice", "user-created", "created user bob")
    store.record_audit("alice", "deploy", "deployed 2", from_version="1", to_version="2", detail={"cards": 3})
    newest, oldest = store.audit_log()
    assert (newest.action, newest.from_version, newest.to_version, newest.detail) == ("deploy", "1", "2", {"cards": 3})
    assert oldest.summary == "created user bob" and oldest.detail is None
    assert newest.at > oldest.at
    assert [e.action for e in store.audit_log(limit=1, offset=1)] == ["user-created"]


# ---------------------------------------------------------------- versions

def test_seed_once_then_drafts_deploy_and_rollback_walk_back_like_a_stack(store) -> None:
    assert store.deployment_state() == (0, None)
    assert store.seed("1", "version: '1'\n") is True
    assert store.seed("9", "version: '9'\n") is False  # a second replica starting: seeded already
    assert tuple(store.deployment_state()) == (1, "1")
    store.save_draft("2", "version: '2'\n", "alice")
    store.save_draft("3", "version: '3'\n", "alice")
    assert store.deploy("2", "dora") == (2, "2")
    assert store.deploy("2", "dora") == (2, "2")  # already active: nothing changes
    assert store.deploy("3", "dora") == (3, "3")
    assert {v.version: v.status for v in store.list_versions()} == {"1": "retired", "2": "retired", "3": "active"}
    assert store.rollback("dora") == (4, "2")
    assert store.rollback("dora") == (5, "1")
    with pytest.raises(NothingToRollBack, match="version 1 is the first deployed"):
        store.rollback("dora")
    assert store.active_version().version == "1"
    assert store.get_version("1").deployed_by == "dora"
    assert [d.action for d in store.deployments()] == ["rollback", "rollback", "deploy", "deploy", "seed"]
    actions = [(e.action, e.from_version, e.to_version) for e in store.audit_log()]
    assert actions == [
        ("rollback", "2", "1"), ("rollback", "3", "2"), ("deploy", "2", "3"), ("deploy", "1", "2"),
        ("draft-saved", "1", "3"), ("draft-saved", "1", "2"), ("seed", None, "1"),
    ]


def test_save_draft_refuses_a_deployed_number_with_other_content(store) -> None:
    store.seed("1", "a: 1\n")
    with pytest.raises(VersionConflict, match="version 1 is already used: it was deployed with other content"):
        store.save_draft("1", "a: 2\n", "alice")
    same = store.save_draft("1", "a: 1\n", "alice")
    assert (same.created, same.changed, same.version.status) == (False, False, "active")


def test_a_draft_is_replaced_by_a_new_save_and_identical_saves_write_nothing(store) -> None:
    first = store.save_draft("2", "a: 1\n", "alice")
    again = store.save_draft("2", "a: 1\n", "alice")
    replaced = store.save_draft("2", "a: 2\n", "bob")
    assert (first.created, first.changed, again.changed, replaced.created, replaced.changed) == (
        True, True, False, False, True)
    version = store.get_version("2")
    assert (version.content, version.created_by, version.status) == ("a: 2\n", "alice", "draft")
    assert version.updated_at > version.created_at
    assert [e.action for e in store.audit_log()] == ["draft-updated", "draft-saved"]


def test_offer_version_adds_a_new_number_once_and_never_deploys_it(store) -> None:
    store.seed("1", "a: 1\n")
    assert store.offer_version("2", "a: 2\n").status == "draft"
    assert store.offer_version("2", "a: 3\n") is None
    assert store.offer_version("1", "other\n") is None
    assert store.deployment_state() == (1, "1") and store.get_version("2").content == "a: 2\n"


def test_deploy_refuses_an_unknown_version(store) -> None:
    with pytest.raises(UnknownVersion, match="no rule-set version 7"):
        store.deploy("7", "dora")
    with pytest.raises(NothingToRollBack, match="no version is deployed"):
        store.rollback("dora")


def test_concurrent_deploys_from_two_stores_end_with_one_consistent_state(database_url, card_store) -> None:
    """Two replicas (two engines on one database) deploying different versions at once: each deploy runs
    under the lock, the sequence counts both, and the active version is the one deployed last."""
    first = AdminStore.for_card_store(card_store)
    other = CardStore(database_url, "x" * 32)
    second = AdminStore(other.engine)
    first.seed("1", "a: 1\n")
    for number in range(2, 8):
        first.save_draft(str(number), f"a: {number}\n", "alice")
    errors: list[Exception] = []
    barrier = threading.Barrier(2, timeout=10)

    def deploy(store: AdminStore, versions: list[str]) -> None:
        barrier.wait()
        for version in versions:
            try:
                store.deploy(version, "dora")
            except AdminStoreUnavailable as error:  # lock wait beyond the short timeout: refused cleanly
                errors.append(error)

    threads = [threading.Thread(target=deploy, args=(first, ["2", "4", "6"])),
               threading.Thread(target=deploy, args=(second, ["3", "5", "7"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    other.close()
    sequence, version = first.deployment_state()
    history = first.deployments()
    assert sequence == 1 + 6 - len(errors)
    assert [d.sequence for d in history] == list(range(sequence, 0, -1))
    assert history[0].version == version
    statuses = {v.version: v.status for v in first.list_versions()}
    assert [v for v, status in statuses.items() if status == "active"] == [version]


def test_a_database_that_does_not_answer_raises_admin_store_unavailable(tmp_path) -> None:
    card_store = CardStore(f"sqlite:///{tmp_path / 'gone.sqlite3'}", "x" * 32)
    store = AdminStore(card_store.engine)
    card_store.engine.dispose()
    (tmp_path / "gone.sqlite3").unlink()
    (tmp_path / "gone.sqlite3").mkdir()  # a directory where the file was: every connection fails
    with pytest.raises(AdminStoreUnavailable, match="did not answer"):
        store.deployment_state()
