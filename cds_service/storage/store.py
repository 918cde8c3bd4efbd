"""The card store: cards shown, the feedback on them, suppression and the feedback report.

With the other stores of this package, the only code that imports SQLAlchemy (on SQLite the hook path's three
statements run on the driver's connection: sqlite_hot_path.py). ``CardStore`` implements the engine's
``CardLedger`` (engine/ledger.py):

    record_shown(cards)                         one row per card issued (never the patient id: a keyed hash)
    overridden_rules(patient_key, windows)      suppression, shared by every replica on the same database:
                                                one query for all of a call's candidate cards
    record_feedback(service_id, items)          idempotent, committed before it returns
    report(since)                               per rule and rule-set version: shown, accepted, overridden
    seen_before(jti, issuer, expires_at)        JWT replay protection shared by replicas (replay.ReplayCache):
                                                one statement

Storage: a SQLite file by default (WAL, ``synchronous=FULL`` but for the replay insert, see
``REPLAY_SYNCHRONOUS``; writers take the lock at ``BEGIN IMMEDIATE``), or PostgreSQL by URL
(``postgresql+psycopg://...``) for several replicas. The schema is created and upgraded by the Alembic
migrations shipped in ``cds_service/storage/migrations`` when the store opens (PostgreSQL: under an advisory
lock, so replicas starting together migrate once).

Whether an insert stored a row is read from ``INSERT ... ON CONFLICT ... RETURNING``: the rows returned are
the rows inserted (or, for ``jwt_seen``, an expired row taken over). (``rowcount`` cannot say: psycopg 3
reports -1 for that statement.)

Per hook call the database is asked at most three times, each a connection checkout of its own: the replay
insert (while authenticating), the suppression query (only when a card that can be suppressed is a
candidate) and ``record_shown`` (only when cards go out). They are not one checkout: holding a connection
from authentication to the answer would hold it through the FHIR fetches too, and a hanging FHIR server would
then empty the pool for everyone. On PostgreSQL the replay insert and the suppression query run in
autocommit, one round trip each besides the pool's ping. On SQLite the three run on the pooled driver
connection (sqlite_hot_path.py: SQLAlchemy's execution layer cost 6-15x the statements themselves there); the
suppression query without a BEGIN (a SELECT is a read transaction by itself).

When the database does not answer (down, locked, timed out; no call waits more than the short timeouts
below): ``record_shown`` and ``overridden_rules`` log it, count it and let the cards go out;
``record_feedback`` raises ``ServiceUnavailable`` (503, Retry-After); ``seen_before`` raises
``replay.ReplayStoreUnavailable`` (the caller falls back to memory: replay.FallbackReplayCache).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import (
    JSON, BigInteger, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text, TypeDecorator,
    bindparam, create_engine, distinct, event, func, select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import StaticPool

from cds_service.clock import system_clock
from cds_service.engine.ledger import ShownCard
from cds_service.errors import BadRequest, ServiceUnavailable, UnknownCard
from cds_service.hooks.feedback import FeedbackItem
from cds_service.settings import SettingsError
from cds_service.storage import sqlite_hot_path
from cds_service.storage.replay import ReplayStoreUnavailable, token_key
from cds_service.storage.sqlite_hot_path import DURABLE_SYNCHRONOUS, set_synchronous
from cds_service.engine.observer import NULL_OBSERVER, StorageObserver

log = logging.getLogger(__name__)


def _quiet_alembic() -> None:
    """Alembic's INFO lines (plugins, context, each revision run) at every start are noise: WARNING and up
    only, whatever CRAMP_LOG_LEVEL says; ``migrate`` logs the outcome itself."""
    alembic_log = logging.getLogger("alembic")
    if alembic_log.getEffectiveLevel() < logging.WARNING:
        alembic_log.setLevel(logging.WARNING)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A database that does not answer fails the call quickly, never the worker: no call waits seconds on a lock.
CONNECT_TIMEOUT_SECONDS = 2  # PostgreSQL connect and pool checkout (libpq's smallest connect_timeout is 2)
LOCK_TIMEOUT_MS = 500  # SQLite busy timeout, PostgreSQL lock_timeout
STATEMENT_TIMEOUT_MS = 5000  # PostgreSQL statement_timeout (the feedback report reads the most)
FEEDBACK_RETRY_AFTER_SECONDS = 5  # Retry-After of a 503 to feedback while the database is down
WRITE_QUEUE_SECONDS = 1.0  # SQLite: how long a thread may wait for this process's other writers
SLOW_FAILURE_SECONDS = 1.0  # a failure that took this long (a host that does not answer: connect timeout)...
SKIP_SECONDS = 2.0  # ...and the database is not asked again for this long: calls don't each wait for it
FUTURE_TOLERANCE = timedelta(minutes=5)  # an outcomeTimestamp later than this after receipt is refused
REPLAY_PURGE_EVERY = 256  # every so many recorded JWTs, expired ones are deleted
# SQLite's durability of the replay insert alone (docs/perf-database.md). In WAL mode NORMAL writes the commit
# to the WAL without waiting for the disk: a process crash loses nothing (the OS holds the write), a power
# loss or OS crash may lose the last commits, never the database's integrity. What such a loss costs: a token
# accepted in the last moments before the machine went down could be accepted once more after it restarts,
# within its lifetime (CDS Hooks: 5 minutes at most; accepted up to an hour), by someone who captured it.
# In exchange the insert no longer waits for an fsync, under the writers' lock, on every request. Feedback
# and the cards shown keep FULL: nothing acknowledged is ever lost. Outside WAL mode (a file system without
# it) the insert keeps FULL too: there NORMAL could corrupt the file on power loss.
REPLAY_SYNCHRONOUS = "NORMAL"
_MIGRATION_LOCK = 0x63726D70  # pg_advisory_xact_lock key ("crmp")


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite keeps naive UTC text; PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# The tables as the migrations leave them (cds_service/storage/migrations/versions).
metadata = MetaData()
cards_shown = Table(
    "cards_shown", metadata,
    Column("card_uuid", String(64), primary_key=True),
    Column("service_id", String(200), nullable=False),
    Column("rule", String(200), nullable=False),
    Column("ruleset_version", String(100), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("hook_instance", Text(), nullable=False),
    Column("patient_key", String(64), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("suggestion_uuids", JSON(), nullable=False),
)
jwt_seen = Table(
    "jwt_seen", metadata,
    Column("token_key", String(64), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False),
)
feedback = Table(
    "feedback", metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("card_uuid", String(64), ForeignKey("cards_shown.card_uuid"), nullable=False),
    Column("patient_key", String(64), nullable=False),
    Column("rule", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", JSON(), nullable=False),
    Column("override_reason_system", Text()),
    Column("override_reason_code", Text()),
    Column("override_reason_display", Text()),
    Column("user_comment", Text()),
    Column("outcome_timestamp", UtcDateTime(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
)
FEEDBACK_ITEM_KEY = ["card_uuid", "outcome", "outcome_timestamp"]  # UNIQUE uq_feedback_item


class WriterQueueTimeout(Exception):
    """SQLite: this process's other threads kept the write turn too long (the database is busy)."""


class DatabaseSkipped(Exception):
    """Not asked: a call less than SKIP_SECONDS ago waited its full timeout and failed with ``error_type``."""

    def __init__(self, error_type: str) -> None:
        super().__init__(error_type)
        self.error_type = error_type


class StoreUnavailable(SettingsError):
    """The database at CRAMP_DATABASE_URL cannot be opened or migrated; the message says why (no URL)."""


# What a database that cannot answer raises (connection refused or lost, lock or pool timeout, busy); the
# driver's own sqlite3.OperationalError from the statements run on the driver's connection (sqlite_hot_path).
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout, WriterQueueTimeout, DatabaseSkipped,
               sqlite3.OperationalError)


@dataclass(frozen=True)
class FeedbackResult:
    received: int
    stored: int  # new items; the rest had been stored before

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


@dataclass(frozen=True)
class ReasonCount:
    system: str | None
    code: str | None
    display: str | None
    cards: int

    @property
    def label(self) -> str:
        return self.display or self.code or "(no coded reason)"


@dataclass(frozen=True)
class ReportRow:
    rule: str
    ruleset_version: str
    shown: int
    accepted: int  # cards with at least one 'accepted' feedback
    overridden: int  # cards with at least one 'overridden' feedback
    top_reasons: tuple[ReasonCount, ...]

    @property
    def accept_rate(self) -> float | None:
        return self.accepted / self.shown if self.shown else None

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.shown if self.shown else None


class CardStore:
    """Cards shown and their feedback, in the database at ``database_url`` (see the module docstring)."""

    def __init__(
        self,
        database_url: str,
        patient_key_secret: str | None,
        *,
        clock: Callable[[], datetime] = system_clock,
        migrate: bool = True,
        must_exist: bool = False,
        observer: StorageObserver = NULL_OBSERVER,
    ) -> None:
        self._secret = patient_key_secret.encode() if patient_key_secret else None
        self.clock = clock
        self.observer = observer  # counts the calls the database did not answer (web/metrics.py)
        self._replay_inserts = 0
        self.engine = _create_engine(database_url, must_exist=must_exist)
        on_sqlite = self.engine.dialect.name == "sqlite"
        self._write_turn = threading.Lock() if on_sqlite else None
        self._sqlite_values = sqlite_hot_path.Values(self.engine, UtcDateTime()) if on_sqlite else None
        self._skip_until, self._skip_reason = 0.0, ""
        if migrate:
            try:
                self.migrate()
            except UNAVAILABLE as exc:
                raise StoreUnavailable(f"CRAMP_DATABASE_URL: cannot open the database ({_reason(exc)})") from None

    # --- schema ----------------------------------------------------------------------------------
    def migrate(self) -> None:
        """``alembic upgrade head``, in one transaction that other starting replicas wait for. Logs one
        line: the schema was current, or migrated from which revision to which."""
        _quiet_alembic()  # before the import: its plugin set-up alone logs 7 INFO lines
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            before = MigrationContext.configure(connection).get_current_revision()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            after = MigrationContext.configure(connection).get_current_revision()
        if before == after:
            log.info("database schema current", extra={"revision": after})
        else:
            log.info("database schema migrated", extra={"from_revision": before or "empty", "revision": after})
        if not isinstance(self.engine.pool, StaticPool):  # (in memory, the connection is the database)
            self.engine.dispose()  # no connection inherited by forked server workers

    def ping(self) -> bool:
        with self._reading() as connection:
            connection.exec_driver_sql("SELECT 1")
        return True

    def close(self) -> None:
        self.engine.dispose()

    # --- CardLedger ------------------------------------------------------------------------------
    def patient_key(self, patient_id: str) -> str:
        """HMAC-SHA256 of the patient id under the shared secret: the only patient reference stored."""
        if self._secret is None:
            raise RuntimeError("this CardStore was opened without a patient key secret")
        return hmac.new(self._secret, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def record_shown(self, cards: list[ShownCard]) -> None:
        rows = [
            {
                "card_uuid": card.card_uuid, "service_id": card.service_id, "rule": card.rule,
                "ruleset_version": card.ruleset_version, "indicator": card.indicator,
                "hook_instance": card.hook_instance, "patient_key": card.patient_key,
                "issued_at": card.issued_at, "suggestion_uuids": list(card.suggestion_uuids),
            }
            for card in cards if card.card_uuid
        ]
        if not rows:
            return
        try:
            if self._sqlite_values is not None:
                with self._sqlite_write_turn(), self._answering(), \
                        sqlite_hot_path.transaction(self.engine, DURABLE_SYNCHRONOUS) as connection:
                    sqlite_hot_path.record_shown(connection, self._sqlite_values, rows)
            else:
                with self._writing() as connection:  # one transaction, one statement for all the call's cards
                    connection.execute(_statements(connection.dialect.name).record_shown, rows)
        except UNAVAILABLE as exc:
            # The cards still go out (a hook call must not fail on the store); feedback on them will 404.
            _unavailable(self.observer, "record_shown", "cards shown not recorded: database unavailable", exc,
                         cards=len(rows))

    def overridden_rules(self, patient_key: str, windows: Mapping[str, datetime]) -> set[str]:
        """The rules of ``windows`` (rule -> since) overridden for this patient at or after their since: one
        query, served by ix_feedback_suppression (patient_key, rule, outcome, outcome_timestamp)."""
        if not windows:
            return set()
        rules, since = sorted(windows), min(windows.values())
        latest: Sequence[tuple[str, datetime]]
        try:
            if self._sqlite_values is not None:
                with self._answering(), sqlite_hot_path.reading(self.engine) as connection:
                    latest = sqlite_hot_path.last_overrides(connection, self._sqlite_values, patient_key, rules, since)
            else:
                asked = {"patient_key": patient_key, "rules": rules, "since": since}
                with self._autocommit() as connection:
                    latest = [(rule, last) for rule, last in
                              connection.execute(_statements(connection.dialect.name).last_overrides, asked)]
        except UNAVAILABLE as exc:
            _unavailable(self.observer, "suppression_check",
                         "suppression not checked: database unavailable; the cards are shown", exc,
                         rules=sorted(windows))
            return set()
        return {rule for rule, last in latest if last >= windows[rule]}

    # --- JWT replay protection (replay.ReplayCache) --------------------------------------------------
    def seen_before(self, jti: str, issuer: str, expires_at: float) -> bool:
        """Record the token id; True when it was already used and has not expired (a replay).

        One statement: the token's row is inserted, or an expired row of the same key taken over; a row
        still live is a replay (nothing returned). ``ReplayStoreUnavailable`` when the database does not answer.
        """
        now, key = self.clock(), token_key(jti, issuer)
        expires = datetime.fromtimestamp(expires_at, timezone.utc)
        self._replay_inserts += 1
        purge = self._replay_inserts % REPLAY_PURGE_EVERY == 0
        try:
            if self._sqlite_values is not None:
                with self._answering(), sqlite_hot_path.transaction(self.engine, REPLAY_SYNCHRONOUS) as connection:
                    return not sqlite_hot_path.record_token(connection, self._sqlite_values, key, expires, now,
                                                            purge=purge)
            row = {"token_key": key, "expires_at": expires, "now": now}
            with self._autocommit() as connection:
                recorded = connection.execute(_statements(connection.dialect.name).record_token, row).first()
                if purge:
                    connection.execute(jwt_seen.delete().where(jwt_seen.c.expires_at < now))
        except UNAVAILABLE as exc:
            raise ReplayStoreUnavailable(_error_type(exc)) from None
        return recorded is None

    # --- feedback --------------------------------------------------------------------------------
    def record_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> FeedbackResult:
        """Store ``items`` (all or none), each at most once; committed before this returns.

        ``UnknownCard`` when an item names a card this service never issued; ``BadRequest`` when it names
        a suggestion that card did not carry or an outcomeTimestamp in the future; ``ServiceUnavailable``
        (503) when the database does not answer: nothing was stored, the client should send it again.
        """
        if not items:
            return FeedbackResult(0, 0)
        received_at = self.clock()
        stored = 0
        try:
            with self._writing() as connection:
                issued = _issued_cards(connection, {item.card for item in items})
                for index, item in enumerate(items):
                    row = _feedback_row(index, item, issued.get(item.card), service_id, received_at)
                    stored += _inserted(connection, feedback, FEEDBACK_ITEM_KEY, row)
        except UNAVAILABLE as exc:
            _unavailable(self.observer, "feedback", "feedback not stored: database unavailable; answered 503", exc,
                         items=len(items))
            raise ServiceUnavailable(
                "The feedback could not be stored (database unavailable); nothing was stored. Send it again.",
                retry_after=FEEDBACK_RETRY_AFTER_SECONDS,
            ) from None
        return FeedbackResult(received=len(items), stored=stored)

    # --- report ----------------------------------------------------------------------------------
    def report(self, since: datetime | None = None) -> list[ReportRow]:
        """Per card rule and rule-set version, over the cards issued at or after ``since``."""
        group = (cards_shown.c.rule, cards_shown.c.ruleset_version)
        window = [cards_shown.c.issued_at >= since] if since else []
        joined = cards_shown.join(feedback, feedback.c.card_uuid == cards_shown.c.card_uuid)
        shown_q = select(*group, func.count()).where(*window).group_by(*group)
        outcomes_q = (
            select(*group, feedback.c.outcome, func.count(distinct(feedback.c.card_uuid)))
            .select_from(joined).where(*window).group_by(*group, feedback.c.outcome)
        )
        reason = (feedback.c.override_reason_system, feedback.c.override_reason_code)
        reasons_q = (
            select(*group, *reason, func.max(feedback.c.override_reason_display),
                   func.count(distinct(feedback.c.card_uuid)))
            .select_from(joined).where(feedback.c.outcome == "overridden", *window).group_by(*group, *reason)
        )
        with self._reading() as connection:
            shown = {(r[0], r[1]): r[2] for r in connection.execute(shown_q)}
            outcomes = {(r[0], r[1], r[2]): r[3] for r in connection.execute(outcomes_q)}
            reasons: dict[tuple[str, str], list[ReasonCount]] = defaultdict(list)
            for r in connection.execute(reasons_q):
                reasons[(r[0], r[1])].append(ReasonCount(r[2], r[3], r[4], r[5]))
        return [
            ReportRow(
                rule=rule, ruleset_version=version, shown=count,
                accepted=outcomes.get((rule, version, "accepted"), 0),
                overridden=outcomes.get((rule, version, "overridden"), 0),
                top_reasons=tuple(sorted(reasons[(rule, version)], key=lambda r: (-r.cards, r.label))[:3]),
            )
            for (rule, version), count in sorted(shown.items())
        ]

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction, committed on leaving the block (on SQLite at ``synchronous=FULL``).

        On SQLite this process's threads take turns on a lock first: handing over a Python lock is
        immediate, where SQLite's busy handler polls in steps of up to 100 ms and could time out a queue of
        threads whose transactions take a few ms each (an fsync each). SQLite's busy timeout then bounds only
        the wait for other processes. (The replay insert does not queue here: ``_one_statement``.)
        """
        if self._write_turn is None:
            with self._answering(), self.engine.begin() as connection:
                yield connection
            return
        with self._sqlite_write_turn(), self._sqlite_transaction(DURABLE_SYNCHRONOUS) as connection:
            yield connection

    @contextlib.contextmanager
    def _sqlite_write_turn(self) -> Iterator[None]:
        """SQLite: this process's turn to write (see ``_writing``); ``WriterQueueTimeout`` when none comes."""
        assert self._write_turn is not None
        if not self._write_turn.acquire(timeout=WRITE_QUEUE_SECONDS):
            raise WriterQueueTimeout(f"no turn to write within {WRITE_QUEUE_SECONDS} s")
        try:
            yield
        finally:
            self._write_turn.release()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads (on SQLite a deferred BEGIN: it takes no write lock)."""
        with self._answering(), self.engine.connect().execution_options(cramp_read_only=True) as connection:
            yield connection

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        """PostgreSQL, for a statement that is a transaction by itself (the replay insert, the suppression
        query): one round trip, where a transaction adds a BEGIN and a COMMIT (or ROLLBACK) round trip.

        (On SQLite those statements run in sqlite_hot_path. The replay insert there waits for the file's lock
        in SQLite's busy handler, as writers of other processes do, and not for this process's write turn: it
        holds the lock for a fraction of a millisecond (no fsync), so the handler's polling costs it little,
        while a turn handed from thread to thread on every request wakes the next writer with the GIL held;
        measured: docs/perf-database.md.)
        """
        with self._answering(), self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection

    @contextlib.contextmanager
    def _sqlite_transaction(self, synchronous: str) -> Iterator[Connection]:
        """SQLite: BEGIN IMMEDIATE (the write lock first) at ``PRAGMA synchronous = synchronous``, then COMMIT."""
        with self._answering(), self.engine.connect() as connection:
            connection.execution_options(cramp_synchronous=synchronous)  # read by _begin_sqlite
            with connection.begin():
                yield connection

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Around every use of the database: after a failure that took SLOW_FAILURE_SECONDS or more (a host
        that does not answer makes each connection attempt wait its whole timeout), calls are refused at
        once with ``DatabaseSkipped`` for SKIP_SECONDS, then the database is tried again."""
        if time.monotonic() < self._skip_until:
            raise DatabaseSkipped(self._skip_reason)
        started = time.monotonic()
        try:
            yield
        except UNAVAILABLE as exc:
            if time.monotonic() - started >= SLOW_FAILURE_SECONDS:
                self._skip_until, self._skip_reason = time.monotonic() + SKIP_SECONDS, _error_type(exc)
            raise


def _driver_error(exc: Exception) -> BaseException | None:
    """The driver's exception: wrapped by SQLAlchemy (``orig``), or raised by sqlite3 itself (sqlite_hot_path)."""
    return exc if isinstance(exc, sqlite3.Error) else getattr(exc, "orig", None)


def _reason(exc: Exception) -> str:
    """The driver's message, without the SQL statement or its parameters."""
    orig = _driver_error(exc)
    return f"{type(orig).__name__}: {str(orig).splitlines()[0][:200]}" if orig else type(exc).__name__


def _error_type(exc: Exception) -> str:
    """The driver's exception type (``OperationalError``, ``QueuePool``'s ``TimeoutError``...): safe to log."""
    if isinstance(exc, DatabaseSkipped):
        return exc.error_type
    orig = _driver_error(exc)
    return type(orig if orig is not None else exc).__name__


def _unavailable(observer: StorageObserver, operation: str, message: str, exc: Exception, **details: Any) -> None:
    """Log (with the exception type, never the SQL or its parameters) and count a call the database missed."""
    observer.ledger_unavailable(operation)
    log.error(message, extra={**details, "error_type": _error_type(exc), "error": _reason(exc)})


def _issued_cards(connection: Connection, uuids: Iterable[str]) -> dict[str, Any]:
    query = select(
        cards_shown.c.card_uuid, cards_shown.c.service_id, cards_shown.c.patient_key, cards_shown.c.rule,
        cards_shown.c.suggestion_uuids,
    ).where(cards_shown.c.card_uuid.in_(sorted(uuids)))
    return {row.card_uuid: row for row in connection.execute(query)}


def _feedback_row(index: int, item: FeedbackItem, card: Any, service_id: str, received_at: datetime) -> dict:
    where = f"feedback[{index}]"
    if card is None or card.service_id != service_id:
        raise UnknownCard(
            f"{where}.card: service {service_id!r} never issued card {item.card}.", expression=f"{where}.card"
        )
    offered = set(card.suggestion_uuids or ())
    for position, suggestion in enumerate(item.acceptedSuggestions or ()):
        if suggestion.id not in offered:
            field = f"{where}.acceptedSuggestions[{position}].id"
            raise BadRequest(f"{field}: card {item.card} carried no suggestion {suggestion.id}.", expression=field)
    if item.outcomeTimestamp > received_at + FUTURE_TOLERANCE:
        field = f"{where}.outcomeTimestamp"
        raise BadRequest(f"{field} is in the future.", expression=field)
    reason = item.overrideReason
    coding = reason.reason if reason else None
    return {
        "card_uuid": item.card,
        "patient_key": card.patient_key,
        "rule": card.rule,
        "outcome": item.outcome,
        "accepted_suggestions": list(item.accepted_ids),
        "override_reason_system": coding.system if coding else None,
        "override_reason_code": coding.code if coding else None,
        "override_reason_display": coding.display if coding else None,
        "user_comment": reason.userComment if reason else None,
        "outcome_timestamp": item.outcomeTimestamp,
        "received_at": received_at,
    }


@dataclass(frozen=True)
class _Statements:
    """The hot path's statements, built once per dialect (building one costs more than running it on SQLite)."""

    record_shown: Any  # INSERT ... ON CONFLICT (card_uuid) DO NOTHING, executed with all the call's rows
    record_token: Any  # the replay insert: see CardStore.seen_before
    last_overrides: Any  # per rule asked, its latest override for the patient since the earliest window


@functools.lru_cache(maxsize=None)
def _statements(dialect_name: str) -> _Statements:
    insert = _dialect_insert(dialect_name)
    token = insert(jwt_seen)
    record_token = token.on_conflict_do_update(
        index_elements=["token_key"],
        set_={"expires_at": token.excluded.expires_at},
        where=jwt_seen.c.expires_at < bindparam("now", type_=UtcDateTime()),  # expired: reused; live: a replay
    ).returning(jwt_seen.c.token_key)
    last_overrides = (
        select(feedback.c.rule, func.max(feedback.c.outcome_timestamp))
        .where(
            feedback.c.patient_key == bindparam("patient_key"),
            feedback.c.rule.in_(bindparam("rules", expanding=True)),
            feedback.c.outcome == "overridden",
            feedback.c.outcome_timestamp >= bindparam("since", type_=UtcDateTime()),
        )
        .group_by(feedback.c.rule)
    )
    return _Statements(
        record_shown=insert(cards_shown).on_conflict_do_nothing(index_elements=["card_uuid"]),
        record_token=record_token,
        last_overrides=last_overrides,
    )


def _dialect_insert(dialect_name: str) -> Any:
    """The dialect's ``insert`` (the one with ``on_conflict_do_*``): PostgreSQL's or SQLite's (>= 3.35)."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert


def _insert_ignore(connection: Connection, table: Table, key: list[str]) -> Any:
    """INSERT ... ON CONFLICT (key) DO NOTHING RETURNING key, on SQLite (>= 3.35) and PostgreSQL alike."""
    insert = _dialect_insert(connection.dialect.name)
    return insert(table).on_conflict_do_nothing(index_elements=key).returning(*(table.c[name] for name in key))


def _inserted(connection: Connection, table: Table, key: list[str], row: dict) -> bool:
    """Insert ``row`` unless one with the same ``key`` exists; True when this call stored it."""
    return connection.execute(_insert_ignore(connection, table, key), row).first() is not None


def _create_engine(database_url: str, *, must_exist: bool = False) -> Engine:
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise SettingsError("CRAMP_DATABASE_URL: not a database URL (sqlite:///FILE or postgresql+psycopg://...)") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        in_memory = url.database in (None, "", ":memory:")
        if must_exist and url.database and not in_memory and not Path(url.database).is_file():
            raise StoreUnavailable(f"CRAMP_DATABASE_URL: no SQLite database at {url.database}")
        if sqlite3.sqlite_version_info < (3, 35):
            raise SettingsError(f"SQLite {sqlite3.sqlite_version} is too old: 3.35 or later is needed (RETURNING)")
        # No pool_pre_ping: a SQLite connection is a file handle, there is no server to lose; the ping would
        # be a SELECT 1 per checkout for nothing (a locked or vanished file fails the statement itself).
        engine = create_engine(
            url,
            connect_args={"timeout": LOCK_TIMEOUT_MS / 1000, "check_same_thread": False},
            **({"poolclass": StaticPool} if in_memory else {}),
        )
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "begin", _begin_sqlite)
        return engine
    if backend == "postgresql":
        return create_engine(
            url,
            pool_pre_ping=True,  # a server restarted between calls costs a ping per checkout, not a failed call
            pool_timeout=CONNECT_TIMEOUT_SECONDS,
            pool_recycle=1800,
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                # a host that vanishes mid-call: unacknowledged data aborts the connection, not hours of retries
                "tcp_user_timeout": STATEMENT_TIMEOUT_MS, "keepalives": 1, "keepalives_idle": 10,
                "keepalives_interval": 5, "keepalives_count": 2,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS} "
                f"-c idle_in_transaction_session_timeout={6 * STATEMENT_TIMEOUT_MS}",
            },
        )
    raise SettingsError(f"CRAMP_DATABASE_URL: unsupported database {backend!r} (use sqlite:/// or postgresql+psycopg://)")


def _configure_sqlite(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own: _begin_sqlite does
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_MS}")
    journal = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    cursor.execute(f"PRAGMA synchronous = {DURABLE_SYNCHRONOUS}")  # a commit is on disk before it returns
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()
    # Kept with the DBAPI connection across checkouts (the pool's record): what _begin_sqlite may change
    record.info["cramp_wal"] = str(journal).lower() == "wal"
    record.info["cramp_synchronous"] = DURABLE_SYNCHRONOUS


def _begin_sqlite(connection: Connection) -> None:
    # Writers take the write lock at BEGIN, so a read-then-write transaction never fails on lock upgrade.
    options = connection.get_execution_options()
    if options.get("cramp_read_only", False):
        connection.exec_driver_sql("BEGIN")
        return
    set_synchronous(connection.info, connection.exec_driver_sql,  # info: the pooled DBAPI connection's
                    options.get("cramp_synchronous", DURABLE_SYNCHRONOUS))
    connection.exec_driver_sql("BEGIN IMMEDIATE")


