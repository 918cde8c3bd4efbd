"""Read-only queries behind the admin console's Watch page (admin/watch.py): the cards shown and their
feedback, counted per card rule, rule-set version and UTC day in the database; admin/watch.py adds the days
up to ISO weeks (the same Python on SQLite and PostgreSQL: their week functions differ, their date ones
can be made to agree).

Every count is by the day the card was *issued*, so a week's override rate is "of the cards shown that
week, how many were overridden" (like ``CardStore.report``). Free-text comments are a separate query
(``comments``): they may hold PHI and are read only for roles allowed to see them, never for /metrics.

A database that does not answer raises ``WatchUnavailable`` (the page says so; /metrics leaves the alarm out).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Iterator

from sqlalchemy import distinct, func, select
from sqlalchemy.engine import Connection

from cds_service.storage.store import UNAVAILABLE, CardStore, cards_shown, feedback

COMMENT_LIMIT = 200  # newest comments read per call


class WatchUnavailable(Exception):
    """The database did not answer; the message says why (never the SQL or its parameters)."""


@dataclass(frozen=True)
class DailyCounts:
    rule: str
    ruleset_version: str
    day: date  # UTC day the cards were issued
    shown: int
    accepted: int  # cards with at least one 'accepted' feedback
    overridden: int  # cards with at least one 'overridden' feedback


@dataclass(frozen=True)
class DailyReason:
    rule: str
    ruleset_version: str
    day: date
    system: str | None
    code: str | None
    display: str | None
    cards: int  # cards overridden with this reason


@dataclass(frozen=True)
class OverrideEvent:
    """One override: what opens a suppression window for that patient and card (the key is a keyed hash)."""

    rule: str
    patient_key: str
    at: datetime


@dataclass(frozen=True)
class Comment:
    rule: str
    ruleset_version: str
    outcome: str
    at: datetime  # outcomeTimestamp
    reason: str | None  # the coded reason's display (or code), when one was given
    text: str


def _day(column: Any, dialect: str) -> Any:
    """The UTC calendar day of a timestamp column, as SQL: SQLite keeps naive UTC text; PostgreSQL's
    ``date(timestamptz)`` would use the session time zone, so the value is moved to UTC first."""
    if dialect == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


def _error_type(exc: Exception) -> str:
    """The driver's exception type: safe to show (no SQL, no parameters)."""
    orig = getattr(exc, "orig", None)
    return type(orig if orig is not None else exc).__name__


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


class WatchQueries:
    """The Watch page's reads over one CardStore's database."""

    def __init__(self, store: CardStore) -> None:
        self._engine = store.engine

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        # cramp_read_only: on SQLite a deferred BEGIN (store._begin_sqlite), so the page never takes the write lock
        try:
            with self._engine.connect().execution_options(cramp_read_only=True) as connection:
                yield connection
        except UNAVAILABLE as exc:
            raise WatchUnavailable(f"the database did not answer ({_error_type(exc)})") from None

    @property
    def _dialect(self) -> str:
        return self._engine.dialect.name

    def daily_counts(self, since: datetime) -> list[DailyCounts]:
        """Per rule, version and day of issue (cards issued at or after ``since``): shown, accepted, overridden."""
        day = _day(cards_shown.c.issued_at, self._dialect).label("day")
        group = (cards_shown.c.rule, cards_shown.c.ruleset_version, day)
        shown_q = select(*group, func.count()).where(cards_shown.c.issued_at >= since).group_by(*group)
        # From the (smaller) feedback side: each card's outcomes once, then the card by its key. Joined the
        # other way round, SQLite probed the feedback of every card shown (8x slower at 200k cards).
        distinct_outcomes = select(feedback.c.card_uuid, feedback.c.outcome).distinct().subquery()
        outcomes_q = (
            select(*group, distinct_outcomes.c.outcome, func.count())
            .select_from(distinct_outcomes.join(cards_shown, cards_shown.c.card_uuid == distinct_outcomes.c.card_uuid))
            .where(cards_shown.c.issued_at >= since)
            .group_by(*group, distinct_outcomes.c.outcome)
        )
        with self._reading() as connection:
            shown = {(r[0], r[1], _as_date(r[2])): int(r[3]) for r in connection.execute(shown_q)}
            outcomes = {(r[0], r[1], _as_date(r[2]), r[3]): int(r[4]) for r in connection.execute(outcomes_q)}
        return [
            DailyCounts(rule, version, day_, count, outcomes.get((rule, version, day_, "accepted"), 0),
                        outcomes.get((rule, version, day_, "overridden"), 0))
            for (rule, version, day_), count in sorted(shown.items())
        ]

    def daily_reasons(self, since: datetime) -> list[DailyReason]:
        """Per rule, version, day of issue and coded reason: the cards overridden with it."""
        day = _day(cards_shown.c.issued_at, self._dialect).label("day")
        overridden = (
            select(feedback.c.card_uuid, feedback.c.override_reason_system.label("system"),
                   feedback.c.override_reason_code.label("code"), feedback.c.override_reason_display.label("display"))
            .where(feedback.c.outcome == "overridden").subquery()
        )
        group = (cards_shown.c.rule, cards_shown.c.ruleset_version, day, overridden.c.system, overridden.c.code)
        query = (
            select(*group, func.max(overridden.c.display), func.count(distinct(overridden.c.card_uuid)))
            .select_from(overridden.join(cards_shown, cards_shown.c.card_uuid == overridden.c.card_uuid))
            .where(cards_shown.c.issued_at >= since)
            .group_by(*group)
        )
        with self._reading() as connection:
            return [DailyReason(r[0], r[1], _as_date(r[2]), r[3], r[4], r[5], int(r[6]))
                    for r in connection.execute(query)]

    def overrides(self, since: datetime) -> list[OverrideEvent]:
        """Every override at or after ``since`` (by its outcomeTimestamp): the suppression windows it opened."""
        query = (
            select(feedback.c.rule, feedback.c.patient_key, feedback.c.outcome_timestamp)
            .where(feedback.c.outcome == "overridden", feedback.c.outcome_timestamp >= since)
        )
        with self._reading() as connection:
            return [OverrideEvent(r[0], r[1], r[2]) for r in connection.execute(query)]

    def comments(self, since: datetime, rule: str | None = None, limit: int = COMMENT_LIMIT) -> list[Comment]:
        """Clinicians' free-text comments (``overrideReason.userComment``) on cards issued at or after
        ``since``, newest first. They may hold PHI: callers check the role first."""
        where = [feedback.c.user_comment.is_not(None), feedback.c.user_comment != "", cards_shown.c.issued_at >= since]
        if rule is not None:
            where.append(cards_shown.c.rule == rule)
        query = (
            select(cards_shown.c.rule, cards_shown.c.ruleset_version, feedback.c.outcome,
                   feedback.c.outcome_timestamp, feedback.c.override_reason_display,
                   feedback.c.override_reason_code, feedback.c.user_comment)
            .select_from(cards_shown.join(feedback, feedback.c.card_uuid == cards_shown.c.card_uuid))
            .where(*where)
            .order_by(feedback.c.outcome_timestamp.desc(), feedback.c.id.desc())
            .limit(limit)
        )
        with self._reading() as connection:
            return [Comment(r[0], r[1], r[2], r[3], r[4] or r[5], r[6]) for r in connection.execute(query)]
