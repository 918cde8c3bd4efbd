"""SQLite: the card store's three statements of a hook call, run on the driver's own connection.

On SQLite a statement of the hook path costs a few microseconds to run and 6-15x that to pass through
SQLAlchemy's execution layer (compiled-cache lookup, parameter and result processing, the Connection's
events): bench/bench_store_ops.py, docs/perf-database.md. So ``CardStore`` runs these three here, on a DBAPI
connection checked out of the same engine's pool, which keeps what the pool gives: the PRAGMAs set at connect
(``_configure_sqlite``), the durability bookkeeping in the pool record's ``info``, one connection in memory
(StaticPool), disposal before a fork. Values cross in the forms SQLAlchemy's own types write and read (their
processors, taken from the dialect), so rows written here and rows written or read elsewhere through
SQLAlchemy (feedback, reports, migrations) are alike. PostgreSQL keeps SQLAlchemy: a round trip dominates there.

    record_token(connection, ...)     the replay insert (and every so often the purge of expired tokens)
    record_shown(connection, rows)    one executemany for all of a call's cards
    last_overrides(connection, ...)   per rule asked, its latest override for the patient since a time
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from datetime import datetime
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import JSON, DateTime, TypeDecorator
from sqlalchemy.engine import Engine

DURABLE_SYNCHRONOUS = "FULL"

_RECORD_TOKEN = (
    "INSERT INTO jwt_seen (token_key, expires_at) VALUES (?, ?) "
    "ON CONFLICT (token_key) DO UPDATE SET expires_at = excluded.expires_at WHERE jwt_seen.expires_at < ? "
    "RETURNING token_key"
)  # inserted, or an expired row taken over: a row returned; a live row (a replay): none
_PURGE_TOKENS = "DELETE FROM jwt_seen WHERE expires_at < ?"
_RECORD_SHOWN = (
    "INSERT INTO cards_shown (card_uuid, service_id, rule, ruleset_version, indicator, hook_instance, patient_key, "
    "issued_at, suggestion_uuids) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (card_uuid) DO NOTHING"
)


class Values:
    """The bind and result processors of the columns the hot path writes and reads, for one engine's dialect
    (built once per CardStore)."""

    def __init__(self, engine: Engine, utc_datetime: TypeDecorator) -> None:
        dialect = engine.dialect
        timestamp = utc_datetime.dialect_impl(dialect)
        self.write_time: Callable[[datetime], str] = _required(timestamp.bind_processor(dialect))
        self.read_time: Callable[[str], datetime] = _required(timestamp.result_processor(dialect, DateTime()))
        self.write_json: Callable[[Any], str] = _required(JSON().dialect_impl(dialect).bind_processor(dialect))


def _required(processor: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if processor is None:  # SQLite's DATETIME and JSON always convert (text); a processor-less type cannot be here
        raise TypeError("sqlite_hot_path: the dialect gave no value processor")
    return processor


def _driver(pooled: Any) -> sqlite3.Connection:
    """The pool's connection wrapper's sqlite3 connection (this module runs on SQLite engines only)."""
    connection = pooled.driver_connection
    assert isinstance(connection, sqlite3.Connection)
    return connection


def set_synchronous(info: dict, run: Callable[[str], Any], wanted: str) -> None:
    """Every write transaction sets the durability it needs before its BEGIN (SQLite refuses to change it
    inside a transaction), so a transaction never inherits the replay insert's level from the connection's
    last use. ``info`` is the pool record's (written by ``_configure_sqlite``), ``run`` runs one statement on
    that connection. Only a change costs a statement: calls that follow one another at one level pay nothing."""
    if wanted != DURABLE_SYNCHRONOUS and not info.get("cramp_wal", False):
        wanted = DURABLE_SYNCHRONOUS  # NORMAL is corruption-safe in WAL mode only
    if info.get("cramp_synchronous") != wanted:
        info.pop("cramp_synchronous", None)  # unknown until the PRAGMA has run
        run(f"PRAGMA synchronous = {wanted}")
        info["cramp_synchronous"] = wanted


@contextlib.contextmanager
def transaction(engine: Engine, synchronous: str) -> Iterator[sqlite3.Connection]:
    """A write transaction on a pooled connection: BEGIN IMMEDIATE (the write lock first, waiting in SQLite's
    busy handler) at ``PRAGMA synchronous = synchronous``; COMMIT on leaving the block, ROLLBACK on an error."""
    pooled = engine.raw_connection()
    try:
        connection = _driver(pooled)
        set_synchronous(pooled.info, connection.execute, synchronous)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        finally:
            if connection.in_transaction:  # an error, or a COMMIT that failed
                connection.execute("ROLLBACK")
    finally:
        pooled.close()


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[sqlite3.Connection]:
    """A pooled connection for one SELECT, which is a read transaction by itself (no BEGIN: no write lock)."""
    pooled = engine.raw_connection()
    try:
        yield _driver(pooled)
    finally:
        pooled.close()


def record_token(connection: sqlite3.Connection, values: Values, key: str, expires_at: datetime,
                 now: datetime, *, purge: bool) -> bool:
    """True when the token's row was inserted or an expired one taken over; False for a live row (a replay)."""
    written_now = values.write_time(now)
    recorded = connection.execute(_RECORD_TOKEN, (key, values.write_time(expires_at), written_now)).fetchone()
    if purge:
        connection.execute(_PURGE_TOKENS, (written_now,))
    return recorded is not None


def record_shown(connection: sqlite3.Connection, values: Values, rows: Sequence[dict]) -> None:
    connection.executemany(_RECORD_SHOWN, [
        (row["card_uuid"], row["service_id"], row["rule"], row["ruleset_version"], row["indicator"],
         row["hook_instance"], row["patient_key"], values.write_time(row["issued_at"]),
         values.write_json(row["suggestion_uuids"]))
        for row in rows
    ])


def last_overrides(connection: sqlite3.Connection, values: Values, patient_key: str, rules: Sequence[str],
                   since: datetime) -> list[tuple[str, datetime]]:
    """Served by ix_feedback_suppression (patient_key, rule, outcome, outcome_timestamp)."""
    found = connection.execute(_last_overrides_sql(len(rules)), (patient_key, *rules, values.write_time(since)))
    return [(rule, values.read_time(latest)) for rule, latest in found]


@functools.lru_cache(maxsize=64)
def _last_overrides_sql(rule_count: int) -> str:
    """One statement text per number of rules asked (the driver caches the prepared statement by its text)."""
    placeholders = ", ".join("?" * rule_count)
    return (
        "SELECT rule, max(outcome_timestamp) FROM feedback WHERE patient_key = ? "
        f"AND rule IN ({placeholders}) AND outcome = 'overridden' AND outcome_timestamp >= ? GROUP BY rule"
    )
