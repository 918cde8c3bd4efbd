"""Structured JSON logs. Records carry ids and counts only: never PHI, tokens or JWTs."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from cds_service.web.request_context import current_request_id

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Libraries whose DEBUG and INFO lines carry what must never be logged: request URLs (a FHIR search URL holds
# the patient id: urllib3 logged "GET /fhir/Condition?patient=<id>"), SQL parameters, headers. They are held
# at WARNING whatever CRAMP_LOG_LEVEL says (issue 11 item 7); their warnings and errors still show.
QUIET_LIBRARIES = ("urllib3", "requests", "charset_normalizer", "sqlalchemy", "psycopg", "redis", "flask_cors")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    _quiet_libraries(level)
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)


def _quiet_libraries(level: str) -> None:
    number = logging.getLevelName(str(level).upper())  # "DEBUG" -> 10; an unknown name -> a string
    floor = max(logging.WARNING, number if isinstance(number, int) else logging.WARNING)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(floor)
