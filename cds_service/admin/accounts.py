"""Admin-console accounts: local users with argon2 password hashes, and the sign-in check
(docs/admin-console.md).

The console (web/admin) and the CLI (``cramp-cds admin``) both change accounts here, so every change is
validated the same way and leaves an audit entry. Users live in the AdminStore (storage/admin_store.py).

Sign-in never tells which part was wrong: an unknown user name, a disabled account and a wrong password
get the same answer and cost the same argon2 verification, so the response time does not reveal which user
names exist. Repeated failures for one user name from one address are throttled (admin/sign_in_throttle.py:
counted in the database, so across every worker and replica, from the moment each attempt begins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cds_service.admin.sign_in_throttle import AttemptStore, SignInThrottle, StoredAttempts

if TYPE_CHECKING:
    from cds_service.storage.admin_store import UserRecord

ROLES = ("viewer", "editor", "deployer")  # ordered: each role includes the ones before it
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 hashes anything, but a megabyte "password" is only a way to burn CPU
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]{1,63}")
USERNAME_RULE = ("2 to 64 characters: lower-case letters, digits and . _ @ -, starting with a letter or digit")
WRONG_CREDENTIALS = "Unknown user name or wrong password."
# A fixed password whose hash the unknown-user path verifies against (same cost as a real account).
_TIMING_DECOY = "leg-cramp-cds timing decoy password"


class AccountError(ValueError):
    """An account change was refused; the message says why and ``field`` names the input at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class UserStore(AttemptStore, Protocol):
    """The part of storage.admin_store.AdminStore that accounts use (with the sign-in throttle's counts)."""

    def create_user(self, username: str, password_hash: str, role: str, display_name: str | None = None) -> Any: ...
    def get_user(self, username: str) -> "UserRecord | None": ...
    def list_users(self) -> list["UserRecord"]: ...
    def set_password_hash(self, username: str, password_hash: str) -> None: ...
    def set_role(self, username: str, role: str) -> None: ...
    def set_disabled(self, username: str, disabled: bool) -> None: ...
    def touch_login(self, username: str) -> None: ...
    def record_audit(self, actor: str, action: str, summary: str) -> Any: ...


def normalize_username(raw: str) -> str:
    return (raw or "").strip().lower()


def check_username(raw: str) -> str:
    """The user name in its stored form (lower case); AccountError when it does not fit USERNAME_RULE."""
    username = normalize_username(raw)
    if not USERNAME_PATTERN.fullmatch(username):
        raise AccountError(f"User name: {USERNAME_RULE}.", field="username")
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"Password: at least {MIN_PASSWORD_LENGTH} characters.", field="password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"Password: at most {MAX_PASSWORD_LENGTH} characters.", field="password")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"Role: one of {', '.join(ROLES)} (got {role!r}).", field="role")
    return role


def role_at_least(role: str, needed: str) -> bool:
    """Whether ``role`` includes ``needed`` (an unknown role includes nothing)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in: ``user`` when it succeeded, else ``message`` (safe to show)."""

    user: "UserRecord | None" = None
    message: str | None = None
    throttled: bool = False

    @property
    def ok(self) -> bool:
        return self.user is not None


class Accounts:
    """Local admin accounts on a UserStore (every change audited; ``actor`` says who made it)."""

    def __init__(self, store: UserStore, *, hasher: PasswordHasher | None = None,
                 throttle: SignInThrottle | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self.throttle = throttle or SignInThrottle(attempts=StoredAttempts(store))
        self._decoy_hash: str | None = None

    # --- changes -------------------------------------------------------------------------------
    def create_user(self, username: str, password: str, role: str, *, actor: str,
                    display_name: str | None = None) -> "UserRecord":
        from cds_service.storage.admin_store import UserExists

        username, role = check_username(username), check_role(role)
        check_password(password)
        display_name = (display_name or "").strip() or None
        try:
            self.store.create_user(username, self.hasher.hash(password), role, display_name)
        except UserExists:
            raise AccountError(f"User name: {username!r} already exists.", field="username") from None
        self.store.record_audit(actor, "user-create", f"created admin user {username} with role {role}")
        return self._existing(username)

    def set_password(self, username: str, password: str, *, actor: str) -> None:
        username = self._existing(username).username
        check_password(password)
        self.store.set_password_hash(username, self.hasher.hash(password))
        self.store.record_audit(actor, "user-set-password", f"changed the password of {username}")

    def set_role(self, username: str, role: str, *, actor: str) -> None:
        user = self._existing(username)
        check_role(role)
        self.store.set_role(user.username, role)
        self.store.record_audit(actor, "user-set-role", f"changed the role of {user.username} from {user.role} to {role}")

    def set_disabled(self, username: str, disabled: bool, *, actor: str) -> None:
        user = self._existing(username)
        self.store.set_disabled(user.username, disabled)
        verb = "disabled" if disabled else "enabled"
        self.store.record_audit(actor, f"user-{'disable' if disabled else 'enable'}", f"{verb} admin user {user.username}")

    def list_users(self) -> list["UserRecord"]:
        return list(self.store.list_users())

    def get_user(self, username: str) -> "UserRecord | None":
        return self.store.get_user(normalize_username(username))

    # --- sign-in ---------------------------------------------------------------------------------
    def authenticate(self, username: str, password: str, address: str) -> SignIn:
        """Check a sign-in from ``address`` (the client IP). The same message for every kind of failure."""
        username = normalize_username(username)
        wait = self.throttle.begin(username, address)
        if wait > 0:
            minutes = max(1, round(wait / 60))
            return SignIn(message=f"Too many failed sign-ins for this user name from your address. "
                                  f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.", throttled=True)
        user = self.store.get_user(username) if USERNAME_PATTERN.fullmatch(username) else None
        if user is None or user.disabled or not user.password_hash or len(password) > MAX_PASSWORD_LENGTH:
            self._verify(self._decoy(), password[:MAX_PASSWORD_LENGTH])  # same cost as a real account
            return SignIn(message=WRONG_CREDENTIALS)  # the attempt stays counted
        if not self._verify(user.password_hash, password):
            return SignIn(message=WRONG_CREDENTIALS)  # the attempt stays counted
        if self.hasher.check_needs_rehash(user.password_hash):  # the hasher's parameters were raised
            self.store.set_password_hash(username, self.hasher.hash(password))
        self.store.touch_login(username)
        self.throttle.succeeded(username, address)
        return SignIn(user=user)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = self.hasher.hash(_TIMING_DECOY)
        return self._decoy_hash

    def _existing(self, username: str) -> "UserRecord":
        name = normalize_username(username)
        user = self.store.get_user(name)
        if user is None:
            raise AccountError(f"User name: no admin user {name!r}.", field="username")
        return user
