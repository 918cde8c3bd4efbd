"""The evaluation clock (RULES.md, Time): the time of the request in UTC, settable by tests."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Protocol


class Clock(Protocol):
    def __call__(self) -> datetime: ...


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def fixed_clock(moment: datetime | str) -> Callable[[], datetime]:
    """A clock that always answers ``moment`` (an aware datetime or an ISO 8601 string)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    frozen = moment.astimezone(timezone.utc)
    return lambda: frozen
