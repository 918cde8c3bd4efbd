"""admin/accounts.py on a real AdminStore (SQLite in tmp_path): validation, argon2 with rehash, the same work
for an unknown user as for a wrong password, and the sign-in throttle on an injected clock."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from cds_service.admin.accounts import (
    MIN_PASSWORD_LENGTH, WRONG_CREDENTIALS, AccountError, Accounts, SignInThrottle, check_username,
)
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
        throttle.failed("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.1") == pytest.approx(600)
    assert throttle.retry_after("alice", "10.0.0.2") == 0 and throttle.retry_after("bob", "10.0.0.1") == 0
    clock.now += 599
    assert throttle.retry_after("alice", "10.0.0.1") == pytest.approx(1)
    clock.now += 2
    assert throttle.retry_after("alice", "10.0.0.1") == 0  # the oldest failure left the window


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
    throttle.failed("alice", "a")
    throttle.succeeded("alice", "a")
    throttle.failed("alice", "a")
    assert throttle.retry_after("alice", "a") == 0


def test_the_throttle_holds_a_bounded_number_of_keys() -> None:
    throttle = SignInThrottle(max_failures=1, window=600, clock=Clock(), max_keys=10)
    for number in range(50):
        throttle.failed(f"user{number}", "a")
    assert len(throttle._failures) == 10
    assert throttle.retry_after("user49", "a") > 0


def test_changes_are_audited_with_their_actor(store) -> None:
    accounts = Accounts(store)
    accounts.create_user("alice", PASSWORD, "viewer", actor="cli:root")
    accounts.set_role("alice", "deployer", actor="cli:root")
    entries = store.audit_log()
    assert [(e.actor, e.action) for e in entries] == [("cli:root", "user-set-role"), ("cli:root", "user-create")]
    assert "from viewer to deployer" in entries[0].summary
    assert all(PASSWORD not in e.summary and "$argon2" not in e.summary for e in entries)
