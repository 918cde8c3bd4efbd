"""The admin console's tables: accounts, the audit log, rule-set versions and which one is deployed.

Built on the card store's SQLAlchemy engine (``AdminStore.for_card_store(card_store)``, or
``AdminStore(card_store.engine)``): same database, same short timeouts, and (for_card_store) the same
guard: after a call that waited its whole timeout, neither store asks the database again for a moment. The
schema is migration 0003, run when the CardStore opens.

    users      create_user, get_user, list_users, set_password_hash, set_role, set_disabled, touch_login
    sign-ins   record_sign_in_attempt, discard_sign_in_attempt, clear_sign_in_attempts (the throttle's
               counts, shared by every worker and replica: admin/sign_in_throttle.py)
    audit      record_audit, audit_log (newest first)
    versions   list_versions, get_version, save_draft, offer_version, seed, active_version,
               deploy, rollback, rollback_target, deployment_state, deployments

Every change of the rule-set versions (save_draft, seed, offer_version, deploy, rollback) writes its own
audit entry in the same transaction, so the log can never miss a deploy; callers do not audit those again.
Account changes are audited by their caller (record_audit).

Concurrency: every change of the versions first locks the one ``ruleset_active`` row (PostgreSQL
``SELECT ... FOR UPDATE``; SQLite takes the database's write lock at ``BEGIN IMMEDIATE``), so two replicas
deploying at once run one after the other and the sequence number grows by one per change. Replicas poll
``deployment_state()`` (one primary-key read) and switch engines when the sequence changes.

A database that does not answer raises ``AdminStoreUnavailable`` (never SQLAlchemy's errors: the layers
above do not import SQLAlchemy).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, ContextManager, Iterator, NamedTuple

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, ForeignKey, Integer, MetaData, String, Table, Text, delete, select, update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from cds_service.clock import system_clock
from cds_service.storage.store import UNAVAILABLE, CardStore, UtcDateTime, _error_type, _insert_ignore

log = logging.getLogger(__name__)

ROLES = ("viewer", "editor", "deployer")  # = web/admin/access.ROLES (ordered: each includes the previous)
STATUSES = ("draft", "active", "retired")
SYSTEM_ACTOR = "system"

_id = BigInteger().with_variant(Integer(), "sqlite")
metadata = MetaData()
admin_users = Table(
    "admin_users", metadata,
    Column("username", String(200), primary_key=True),
    Column("password_hash", Text()),
    Column("role", String(16), nullable=False),
    Column("display_name", Text()),
    Column("disabled", Boolean(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_login_at", UtcDateTime()),
)
admin_audit = Table(
    "admin_audit", metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("summary", Text(), nullable=False),
    Column("from_version", String(100)),
    Column("to_version", String(100)),
    Column("detail", JSON()),
)
ruleset_versions = Table(
    "ruleset_versions", metadata,
    Column("version", String(100), primary_key=True),
    Column("content", Text(), nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("deployed_by", String(200)),
    Column("deployed_at", UtcDateTime()),
)
ruleset_deployments = Table(
    "ruleset_deployments", metadata,
    Column("sequence", _id, primary_key=True, autoincrement=False),
    Column("version", String(100), ForeignKey("ruleset_versions.version"), nullable=False),
    Column("action", String(16), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("prior_sequence", _id),
)
admin_sign_in_attempts = Table(
    "admin_sign_in_attempts", metadata,
    Column("id", _id, primary_key=True, autoincrement=True),
    Column("throttle_key", String(64), nullable=False),  # a hash of (user name, address): migration 0005
    Column("attempted_at", UtcDateTime(), nullable=False),
)
ruleset_active = Table(
    "ruleset_active", metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    Column("sequence", _id, nullable=False),
    Column("version", String(100), ForeignKey("ruleset_versions.version")),
)


# ---------------------------------------------------------------- errors

class AdminStoreError(Exception):
    """A change the store refuses; the message says why, for a person."""


class AdminStoreUnavailable(AdminStoreError):
    """The database did not answer (down, locked, timed out); nothing was changed."""


class UserExists(AdminStoreError):
    pass


class UnknownUser(AdminStoreError, LookupError):
    pass


class VersionConflict(AdminStoreError):
    """The version number is taken: deployed before, or held by other content."""


class UnknownVersion(AdminStoreError, LookupError):
    pass


class NothingToRollBack(AdminStoreError):
    pass


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class UserRecord:
    username: str
    password_hash: str | None
    role: str
    display_name: str | None
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    summary: str
    from_version: str | None
    to_version: str | None
    detail: Any  # JSON: a string, a mapping or a list, as recorded


@dataclass(frozen=True)
class RuleSetVersion:
    version: str
    content: str  # the YAML text
    content_sha256: str
    status: str  # draft | active | retired
    created_by: str
    created_at: datetime
    updated_at: datetime
    deployed_by: str | None
    deployed_at: datetime | None


class DeploymentState(NamedTuple):
    """What every replica compares: the sequence grows by one with each seed, deploy and rollback."""

    sequence: int
    version: str | None  # None: nothing deployed yet (an empty database)


@dataclass(frozen=True)
class Deployment:
    sequence: int
    version: str
    action: str  # seed | deploy | rollback
    actor: str
    at: datetime
    prior_sequence: int | None


@dataclass(frozen=True)
class DraftSaved:
    version: RuleSetVersion
    created: bool  # False: the draft existed; its content was replaced (or was already this content)
    changed: bool  # False: the same content was saved again (nothing written, nothing audited)


def content_sha256(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- the store

class AdminStore:
    """See the module docstring. ``engine`` is the card store's (``CardStore.engine``)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = system_clock,
                 card_store: CardStore | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self._card_store = card_store  # for_card_store: its transactions (guard, SQLite write turn) are used

    @classmethod
    def for_card_store(cls, card_store: CardStore, *, clock: Callable[[], datetime] | None = None) -> "AdminStore":
        """On the card store's engine and through its transactions: the same guard against a database that
        does not answer (after one call waited its timeout, neither store asks again for a moment) and, on
        SQLite, the same turn among this process's writers (a deploy never loses a busy timeout to them)."""
        return cls(card_store.engine, clock=clock or card_store.clock, card_store=card_store)

    # --- users -----------------------------------------------------------------------------------
    def create_user(self, username: str, password_hash: str | None, role: str,
                    display_name: str | None = None) -> UserRecord:
        _check_role(role)
        row = {"username": username, "password_hash": password_hash, "role": role, "display_name": display_name,
               "disabled": False, "created_at": self.clock(), "last_login_at": None}
        with self._writing() as connection:
            if not connection.execute(_insert_ignore(connection, admin_users, ["username"]), row).first():
                raise UserExists(f"user {username!r} exists already")
        return _user(row)

    def get_user(self, username: str) -> UserRecord | None:
        with self._reading() as connection:
            row = connection.execute(select(admin_users).where(admin_users.c.username == username)).first()
        return _user(row._mapping) if row else None

    def list_users(self) -> list[UserRecord]:
        with self._reading() as connection:
            rows = connection.execute(select(admin_users).order_by(admin_users.c.username)).all()
        return [_user(row._mapping) for row in rows]

    def set_password_hash(self, username: str, password_hash: str | None) -> None:
        self._update_user(username, password_hash=password_hash)

    def set_role(self, username: str, role: str) -> None:
        _check_role(role)
        self._update_user(username, role=role)

    def set_disabled(self, username: str, disabled: bool = True) -> None:
        self._update_user(username, disabled=bool(disabled))

    def touch_login(self, username: str) -> None:
        self._update_user(username, last_login_at=self.clock())

    def _update_user(self, username: str, **values: Any) -> None:
        statement = (update(admin_users).where(admin_users.c.username == username).values(**values)
                     .returning(admin_users.c.username))
        with self._writing() as connection:
            if connection.execute(statement).first() is None:
                raise UnknownUser(f"no user {username!r}")

    # --- sign-in attempts (the throttle) ----------------------------------------------------------
    def record_sign_in_attempt(self, throttle_key: str, at: datetime,
                               window_start: datetime) -> tuple[int, list[datetime]]:
        """Record an attempt; its id and the times of the key's attempts at or after ``window_start``, oldest
        first, this one included. In the same transaction, attempts of every key older than the window are
        deleted (the table holds one window's attempts). Counted after the insert, so two attempts racing
        each other both see both: neither slips past a limit."""
        table = admin_sign_in_attempts
        with self._writing() as connection:
            connection.execute(delete(table).where(table.c.attempted_at < window_start))
            attempt_id = connection.execute(
                table.insert().values(throttle_key=throttle_key, attempted_at=at).returning(table.c.id)).scalar_one()
            times = connection.execute(
                select(table.c.attempted_at)
                .where(table.c.throttle_key == throttle_key, table.c.attempted_at >= window_start)
                .order_by(table.c.attempted_at, table.c.id)).scalars().all()
        return attempt_id, list(times)

    def discard_sign_in_attempt(self, attempt_id: int) -> None:
        with self._writing() as connection:
            connection.execute(delete(admin_sign_in_attempts).where(admin_sign_in_attempts.c.id == attempt_id))

    def clear_sign_in_attempts(self, throttle_key: str) -> None:
        with self._writing() as connection:
            connection.execute(
                delete(admin_sign_in_attempts).where(admin_sign_in_attempts.c.throttle_key == throttle_key))

    # --- audit -----------------------------------------------------------------------------------
    def record_audit(self, actor: str, action: str, summary: str, *, from_version: str | None = None,
                     to_version: str | None = None, detail: Any = None) -> None:
        with self._writing() as connection:
            self._audit(connection, actor, action, summary, from_version, to_version, detail)

    def audit_log(self, limit: int = 200, offset: int = 0) -> list[AuditEntry]:
        query = (select(admin_audit).order_by(admin_audit.c.at.desc(), admin_audit.c.id.desc())
                 .limit(limit).offset(offset))
        with self._reading() as connection:
            return [AuditEntry(**row._mapping) for row in connection.execute(query)]

    def _audit(self, connection: Connection, actor: str, action: str, summary: str, from_version: str | None,
               to_version: str | None, detail: Any) -> None:
        connection.execute(admin_audit.insert().values(
            at=self.clock(), actor=actor, action=action, summary=summary, from_version=from_version,
            to_version=to_version, detail=detail))

    # --- versions --------------------------------------------------------------------------------
    def list_versions(self) -> list[RuleSetVersion]:
        """Newest first (by creation)."""
        query = select(ruleset_versions).order_by(ruleset_versions.c.created_at.desc(),
                                                  ruleset_versions.c.version.desc())
        with self._reading() as connection:
            return [RuleSetVersion(**row._mapping) for row in connection.execute(query)]

    def get_version(self, version: str) -> RuleSetVersion | None:
        with self._reading() as connection:
            return _version(connection, version)

    def active_version(self) -> RuleSetVersion | None:
        with self._reading() as connection:
            active = connection.execute(select(ruleset_active.c.version).where(ruleset_active.c.id == 1)).scalar()
            return _version(connection, active) if active else None

    def deployment_state(self) -> DeploymentState:
        """(sequence, active version): one primary-key read, what each replica polls."""
        with self._reading() as connection:
            row = connection.execute(
                select(ruleset_active.c.sequence, ruleset_active.c.version).where(ruleset_active.c.id == 1)).first()
        return DeploymentState(row.sequence, row.version) if row else DeploymentState(0, None)

    def deployments(self, limit: int = 50) -> list[Deployment]:
        """The history of the active version, newest first."""
        query = select(ruleset_deployments).order_by(ruleset_deployments.c.sequence.desc()).limit(limit)
        with self._reading() as connection:
            return [Deployment(**row._mapping) for row in connection.execute(query)]

    def rollback_target(self) -> Deployment | None:
        """The deployment a ``rollback()`` now would return to (None: nothing to roll back to)."""
        with self._reading() as connection:
            return _rollback_target(connection, _active(connection))

    def save_draft(self, version: str, content: str, actor: str, *, summary: str | None = None,
                   detail: Any = None) -> DraftSaved:
        """Store ``content`` as draft ``version`` (a draft of that number is replaced; audited).

        ``VersionConflict`` when the number belongs to a version that was deployed (active or retired: the
        cards it served carry that number, so it must never mean other content).
        """
        digest = content_sha256(content)
        with self._changing() as connection:
            existing = _version(connection, version)
            now = self.clock()
            if existing is not None and existing.status != "draft":
                if existing.content_sha256 == digest:
                    return DraftSaved(existing, created=False, changed=False)
                raise VersionConflict(
                    f"version {version} is already used: it was deployed with other content "
                    f"({existing.status}, by {existing.deployed_by or existing.created_by}). Give the draft "
                    "a new version number.")
            if existing is not None and existing.content_sha256 == digest:
                return DraftSaved(existing, created=False, changed=False)
            if existing is None:
                connection.execute(ruleset_versions.insert().values(
                    version=version, content=content, content_sha256=digest, status="draft", created_by=actor,
                    created_at=now, updated_at=now, deployed_by=None, deployed_at=None))
            else:
                connection.execute(update(ruleset_versions).where(ruleset_versions.c.version == version)
                                   .values(content=content, content_sha256=digest, updated_at=now))
            action = "draft-saved" if existing is None else "draft-updated"
            self._audit(connection, actor, action,
                        summary or f"{'saved' if existing is None else 'updated'} draft {version}",
                        _active(connection).version, version, detail)
            saved = _version(connection, version)
        assert saved is not None
        return DraftSaved(saved, created=existing is None, changed=True)

    def offer_version(self, version: str, content: str, actor: str = SYSTEM_ACTOR, *,
                      summary: str | None = None) -> RuleSetVersion | None:
        """Add ``content`` as a draft unless the number exists (any status, any content): the version
        added, or None. For a new bundled or configured rule set at start-up: offered, never deployed."""
        with self._changing() as connection:
            if _version(connection, version) is not None:
                return None
            now = self.clock()
            connection.execute(ruleset_versions.insert().values(
                version=version, content=content, content_sha256=content_sha256(content), status="draft",
                created_by=actor, created_at=now, updated_at=now, deployed_by=None, deployed_at=None))
            self._audit(connection, actor, "draft-offered", summary or f"offered draft {version}",
                        _active(connection).version, version, None)
            return _version(connection, version)

    def seed(self, version: str, content: str, actor: str = SYSTEM_ACTOR, *,
             summary: str | None = None) -> bool:
        """When nothing is deployed yet: store ``content`` as ``version`` and make it active (audited).
        False (nothing changed) when a version is active already: replicas starting together seed once."""
        with self._changing() as connection:
            state = _active(connection)
            if state.version is not None:
                return False
            now = self.clock()
            existing = _version(connection, version)
            if existing is not None and existing.content_sha256 != content_sha256(content):
                raise VersionConflict(f"version {version} is already stored with other content")
            if existing is None:
                connection.execute(ruleset_versions.insert().values(
                    version=version, content=content, content_sha256=content_sha256(content), status="draft",
                    created_by=actor, created_at=now, updated_at=now, deployed_by=None, deployed_at=None))
            self._make_active(connection, state, version, "seed", actor, prior_sequence=None)
            self._audit(connection, actor, "seed", summary or f"seeded and activated version {version}",
                        None, version, None)
        return True

    def deploy(self, version: str, actor: str, *, summary: str | None = None,
               detail: Any = None) -> DeploymentState:
        """Make ``version`` the active one (audited); every replica switches at its next poll. Deploying
        the active version again changes nothing. ``UnknownVersion`` when there is no such version."""
        with self._changing() as connection:
            state = _active(connection)
            if _version(connection, version) is None:
                raise UnknownVersion(f"no rule-set version {version}")
            if state.version == version:
                return state
            new = self._make_active(connection, state, version, "deploy", actor,
                                    prior_sequence=state.sequence if state.version else None)
            self._audit(connection, actor, "deploy",
                        summary or f"deployed version {version}" + (f" (was {state.version})" if state.version else ""),
                        state.version, version, detail)
        return new

    def rollback(self, actor: str, *, summary: str | None = None, detail: Any = None) -> DeploymentState:
        """Return to the version that was active before the current one was deployed (audited); rollbacks
        walk back through the deploys like a stack. ``NothingToRollBack`` at the first version."""
        with self._changing() as connection:
            state = _active(connection)
            target = _rollback_target(connection, state)
            if target is None:
                raise NothingToRollBack(
                    f"nothing to roll back to: version {state.version} is the first deployed" if state.version
                    else "nothing to roll back to: no version is deployed")
            new = self._make_active(connection, state, target.version, "rollback", actor,
                                    prior_sequence=target.prior_sequence)
            self._audit(connection, actor, "rollback",
                        summary or f"rolled back from version {state.version} to {target.version}",
                        state.version, target.version, detail)
        return new

    def _make_active(self, connection: Connection, state: DeploymentState, version: str, action: str, actor: str,
                     *, prior_sequence: int | None) -> DeploymentState:
        now = self.clock()
        sequence = state.sequence + 1
        if state.version and state.version != version:
            connection.execute(update(ruleset_versions).where(ruleset_versions.c.version == state.version)
                               .values(status="retired", updated_at=now))
        connection.execute(update(ruleset_versions).where(ruleset_versions.c.version == version)
                           .values(status="active", updated_at=now, deployed_by=actor, deployed_at=now))
        connection.execute(ruleset_deployments.insert().values(
            sequence=sequence, version=version, action=action, actor=actor, at=now, prior_sequence=prior_sequence))
        connection.execute(update(ruleset_active).where(ruleset_active.c.id == 1)
                           .values(sequence=sequence, version=version))
        return DeploymentState(sequence, version)

    # --- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[Connection]:
        """A write transaction holding the ``ruleset_active`` lock: changes of versions run one at a time."""
        with self._writing() as connection:
            _lock_active(connection)
            yield connection

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, store._begin_sqlite), committed on leaving."""
        try:
            with self._transaction(write=True) as connection:
                yield connection
        except UNAVAILABLE as exc:
            raise AdminStoreUnavailable(_unavailable_message(exc)) from None
        except IntegrityError as exc:  # a race the lock did not cover (e.g. two create_user calls)
            raise AdminStoreError(f"the change conflicts with another one made at the same time ({_error_type(exc)})") \
                from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self._transaction(write=False) as connection:
                yield connection
        except UNAVAILABLE as exc:
            raise AdminStoreUnavailable(_unavailable_message(exc)) from None

    def _transaction(self, *, write: bool) -> ContextManager[Connection]:
        if self._card_store is not None:
            return self._card_store._writing() if write else self._card_store._reading()
        if write:
            return self.engine.begin()
        return self.engine.connect().execution_options(cramp_read_only=True)


def _unavailable_message(exc: Exception) -> str:
    return f"the database did not answer ({_error_type(exc)}); nothing was changed, try again"


def _lock_active(connection: Connection) -> None:
    query = select(ruleset_active.c.sequence).where(ruleset_active.c.id == 1)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    if connection.execute(query).first() is None:  # (the migration inserts it; a hand-made schema may not)
        connection.execute(_insert_ignore(connection, ruleset_active, ["id"]),
                           {"id": 1, "sequence": 0, "version": None})
        connection.execute(query).first()


def _active(connection: Connection) -> DeploymentState:
    row = connection.execute(
        select(ruleset_active.c.sequence, ruleset_active.c.version).where(ruleset_active.c.id == 1)).first()
    return DeploymentState(row.sequence, row.version) if row else DeploymentState(0, None)


def _version(connection: Connection, version: str) -> RuleSetVersion | None:
    row = connection.execute(select(ruleset_versions).where(ruleset_versions.c.version == version)).first()
    return RuleSetVersion(**row._mapping) if row else None


def _deployment(connection: Connection, sequence: int) -> Deployment | None:
    row = connection.execute(select(ruleset_deployments).where(ruleset_deployments.c.sequence == sequence)).first()
    return Deployment(**row._mapping) if row else None


def _rollback_target(connection: Connection, state: DeploymentState) -> Deployment | None:
    current = _deployment(connection, state.sequence)
    return _deployment(connection, current.prior_sequence) if current and current.prior_sequence else None


def _user(row: Any) -> UserRecord:
    return UserRecord(**{name: row[name] for name in UserRecord.__dataclass_fields__})


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AdminStoreError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
