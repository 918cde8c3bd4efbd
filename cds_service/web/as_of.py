"""Development mode's evaluation clock for one request (docs/integration.md, "Evaluating at another time").

``X-Cramp-As-Of: 2026-06-15`` (or an RFC 3339 date-time with its offset) makes that one call evaluate as if
it were then, so that fixtures written for a date still give their cards. Only in development mode: outside
it the header is refused with a 400 naming it, so that nobody believes it took effect on a real service.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timezone
from typing import Mapping

from werkzeug.datastructures import Headers

from cds_service.errors import BadRequest

AS_OF_HEADER = "X-Cramp-As-Of"
# RFC 3339: a full-date, or a date-time with seconds and an offset (Z or ±hh:mm)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def requested_evaluation_time(headers: Mapping[str, str] | Headers, *, development_mode: bool) -> datetime | None:
    """The time this request asks to be evaluated at (UTC), or None for the engine's clock; BadRequest when
    the header is sent outside development mode or is not an RFC 3339 date or date-time."""
    value = headers.get(AS_OF_HEADER)
    if value is None:
        return None
    if not development_mode:
        raise BadRequest(f"The {AS_OF_HEADER} header is honoured only in development mode; this service "
                         "evaluates at the time of the request. Send the request without it.",
                         expression=AS_OF_HEADER)
    return parse_as_of(value.strip())


def parse_as_of(value: str) -> datetime:
    """An RFC 3339 date (its midnight UTC) or date-time, as an aware UTC datetime; BadRequest naming the header."""
    try:
        if _DATE.fullmatch(value):
            return datetime.combine(date.fromisoformat(value), time(0, 0), tzinfo=timezone.utc)
        if _DATE_TIME.fullmatch(value):
            return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        pass  # the shape is right but the date is not (2026-02-30): the same answer as a wrong shape
    raise BadRequest(f"The {AS_OF_HEADER} header must be an RFC 3339 date (2026-06-15) or date-time "
                     f"(2026-06-15T12:00:00Z); got {value[:40]!r}.", expression=AS_OF_HEADER)
