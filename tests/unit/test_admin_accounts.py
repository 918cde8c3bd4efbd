"""admin/accounts.py on a real AdminStore (SQLite in tmp_path): validation, argon2 with rehash, the same work
for an unknown user as for a wrong password, and the sign-in throttle on an injected clock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable

import pytest
from argon2 import PasswordHasher
from support.feedback import fresh_postgres_database, postgres_url

from cds_service.admin.accounts import MIN_PASSWORD_LENGTH, WRONG_CREDENTIALS, AccountError, Accounts, check_username
from cds_service.admin.sign_in_throttle import MemoryAttempts, SignInThrottle, StoredAttempts
from cds_service.storage.admin_store import AdminStore
from cds_service.storage.store import CardStore

PASSWORD = "twelve chars or more"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingHasher(PasswordHasher):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.verified = 0

    def verify(self, hash, password):  # noqa: A002  (argon2's own parameter name)
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def store(tmp_path):
    card_store = CardStore(f"sqlite:///{tmp_path / 'accounts.sqlite3'}", None)
    yield AdminStore(card_store.engine)
    card_store.close()


@pytest.mark.parametrize("raw,stored", [("alice", "alice"), (" Alice ", "alice"), ("a.b-c_d@h.org", "a.b-c_d@h.org"),
                                        ("x9", "x9")])
def test_user_names_that_fit(raw: str, stored: str) -> None:
    assert check_username(raw) == stored


@pytest.mark.parametrize("raw", ["", "a", "-alice", "alice smith", "ali/ce", "é" * 3, "a" * 65, "<script>"])
def test_user_names_that_do_not(raw: str) -> None:
    with pytest.raises(AccountError) as caught:
        check_username(raw)
    assert caught.value.field == "username"


def test_password_length_is_checked_before_anything_is_stored(store) -> None:
    accounts = Accounts(store)
    with pytest.raises(AccountError, match=f"at least {MIN_PASSWORD_LENGTH}") as caught:
        accounts.create_user("alice", "x" * (MIN_PASSWORD_LENGTH - 1), "viewer", actor="test")
    assert caught.value.field == "password"
    with pytest.raises(AccountError, match="at most"):
        accounts.create_user("alice", "x" * 5000, "viewer", actor="test")
    assert store.get_user("alice") is None and store.audit_log() == []


def test_the_hash_is_argon2id_and_a_weaker_one_is_upgraded_at_sign_in(store) -> None:
    weak = Accounts(store, hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    weak.create_user("alice", PASSWORD, "editor", actor="test")
    old_hash = store.get_user("alice").password_hash
    assert old_hash.startswith("$argon2id$") and "m=8192,t=1" in old_hash
    result = Accounts(store).authenticate("alice", PASSWORD, "10.0.0.1")
    assert result.ok
    new_hash = store.get_user("alice").password_hash
    assert new_hash != old_hash and "m=8192,t=1" not in new_hash
    assert Accounts(store).authenticate("alice", PASSWORD, "10.0.0.1").ok  # the new hash verifies


def test_an_unknown_user_costs_one_verification_like_a_wrong_password(store) -> None:
    hasher = CountingHasher()
    accounts = Accounts(store, hasher=hasher)
    accounts.create_user("alice", PASSWORD, "viewer", actor="test")
    hasher.verified = 0
    wrong = accounts.authenticate("alice", "not the password", "10.0.0.1")
    assert hasher.verified == 1
    unknown = accounts.authenticate("nobody", "not the password", "10.0.0.1")
    invalid = accounts.authenticate("not a valid name!", "not the password", "10.0.0.1")
    assert hasher.verified == 3
    assert wrong.message == unknown.message == invalid.message == WRONG_CREDENTIALS
    assert not (wrong.ok or unknown.ok or invalid.ok)


def test_a_disabled_account_answers_like_an_unknown_one(store) -> None:
    accounts = Accounts(store)
    accounts.create_user("alice", PASSWORD, "viewer", actor="test")
    accounts.set_disabled("alice", True, actor="test")
    result = accounts.authenticate("alice", PASSWORD, "10.0.0.1")
    assert not result.ok and result.message == WRONG_CREDENTIALS


def test_throttle_per_user_name_and_address_and_its_window() -> None:
    clock = Clock()
    throttle = SignInThrottle(max_failures=3, window=600, clock=clock)
    for _ in range(3):
        assert throttle.begin("alice", "10.0.0.1") == 0  # each attempt counts from its start
    assert throttle.begin("alice", "10.0.0.1") == pytest.approx(600)  # the fourth: refused, not counted
    assert throttle.begin("alice", "10.0.0.2") == 0 and throttle.begin("bob", "10.0.0.1") == 0
    clock.now += 599
    assert throttle.begin("alice", "10.0.0.1") == pytest.approx(1)  # refusals did not extend the wait
    clock.now += 2
    assert throttle.begin("alice", "10.0.0.1") == 0  # the oldest attempt left the window


def test_a_throttled_sign_in_does_not_even_check_the_password(store) -> None:
    hasher = CountingHasher()
    clock = Clock()
    accounts = Accounts(store, hasher=hasher, throttle=SignInThrottle(max_failures=2, window=900, clock=clock))
    accounts.create_user("alice", PASSWORD, "viewer", actor="test")
    accounts.authenticate("alice", "wrong one", "10.0.0.1")
    accounts.authenticate("alice", "wrong two", "10.0.0.1")
    hasher.verified = 0
    throttled = accounts.authenticate("alice", PASSWORD, "10.0.0.1")
    assert throttled.throttled and not throttled.ok and "Try again in 15 minutes" in throttled.message
    assert hasher.verified == 0
    clock.now += 901
    assert accounts.authenticate("alice", PASSWORD, "10.0.0.1").ok


def test_a_success_clears_the_failures() -> None:
    throttle = SignInThrottle(max_failures=2, window=600, clock=Clock())
    assert throttle.begin("alice", "a") == 0
    throttle.succeeded("alice", "a")
    assert throttle.begin("alice", "a") == 0 and throttle.begin("alice", "a") == 0  # two allowed again
    assert throttle.begin("alice", "a") > 0


def test_the_memory_counts_hold_a_bounded_number_of_keys() -> None:
    attempts = MemoryAttempts(max_keys=10)
    throttle = SignInThrottle(max_failures=1, window=600, clock=Clock(), attempts=attempts)
    for number in range(50):
        throttle.begin(f"user{number}", "a")
    assert len(attempts) == 10
    assert throttle.begin("user49", "a") > 0


# --- the counts in the database: every worker and replica, and attempts racing each other -------------------
def _two_workers(url: str, clock: Callable[[], float], hasher: PasswordHasher) -> list[Accounts]:
    """Two processes' Accounts on one database (each its own CardStore, engine and throttle object)."""
    stores = [AdminStore(CardStore(url, None).engine) for _ in range(2)]
    return [Accounts(store, hasher=hasher, throttle=SignInThrottle(max_failures=3, window=900, clock=clock,
                                                                   attempts=StoredAttempts(store)))
            for store in stores]


def _shared_counts(url: str) -> None:
    clock, hasher = Clock(), CountingHasher(time_cost=1, memory_cost=8, parallelism=1)
    clock.now = datetime.now(timezone.utc).timestamp()  # stored counts are on wall-clock seconds
    first, second = _two_workers(url, clock, hasher)
    first.create_user("alice", PASSWORD, "viewer", actor="test")
    assert [worker.authenticate("alice", "wrong", "10.0.0.1").throttled for worker in (first, second, first)] == \
        [False, False, False]
    refused = second.authenticate("alice", PASSWORD, "10.0.0.1")  # the other worker counted them too
    assert refused.throttled and "Try again in 15 minutes" in refused.message
    assert first.authenticate("alice", PASSWORD, "10.0.0.2").ok  # per address
    clock.now += 901
    assert second.authenticate("alice", PASSWORD, "10.0.0.1").ok
    assert not first.authenticate("alice", "wrong", "10.0.0.1").throttled  # the success cleared the pair
    with first.store.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT throttle_key FROM admin_sign_in_attempts").scalars().all()
    assert rows and all(len(key) == 64 and "alice" not in key and "10.0.0" not in key for key in rows)


def test_the_throttle_counts_every_worker_on_a_shared_sqlite_file(tmp_path) -> None:
    _shared_counts(f"sqlite:///{tmp_path / 'accounts.sqlite3'}")


@pytest.mark.postgres
def test_the_throttle_counts_every_replica_on_postgres(monkeypatch) -> None:
    with fresh_postgres_database(monkeypatch) as (host, port, name):
        _shared_counts(postgres_url(host, port, name))


def test_parallel_wrong_passwords_get_no_more_checks_than_the_limit(tmp_path) -> None:
    """Attempts in flight count: 12 threads of 2 workers at once get at most max_failures password checks."""
    hasher = CountingHasher()  # the default cost: each check takes long enough for the others to pile up
    workers = _two_workers(f"sqlite:///{tmp_path / 'accounts.sqlite3'}", time.time, hasher)
    workers[0].create_user("alice", PASSWORD, "viewer", actor="test")
    hasher.verified = 0
    start = threading.Barrier(12)

    def attempt(n: int) -> bool:
        start.wait()
        return workers[n % 2].authenticate("alice", f"wrong {n}", "10.0.0.1").throttled

    with ThreadPoolExecutor(max_workers=12) as pool:
        throttled = list(pool.map(attempt, range(12)))
    assert throttled.count(False) == 3 and hasher.verified == 3


def test_changes_are_audited_with_their_actor(store) -> None:
    accounts = Accounts(store)
    accounts.create_user("alice", PASSWORD, "viewer", actor="cli:root")
    accounts.set_role("alice", "deployer", actor="cli:root")
    entries = store.audit_log()
    assert [(e.actor, e.action) for e in entries] == [("cli:root", "user-set-role"), ("cli:root", "user-create")]
    assert "from viewer to deployer" in entries[0].summary
    assert all(PASSWORD not in e.summary and "$argon2" not in e.summary for e in entries)
