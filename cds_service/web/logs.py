"""Structured JSON logs. Records carry ids and counts only: never PHI, tokens or JWTs.

Two handlers write the same JSON lines:

* ``configure_logging`` (tests, the CLI, ``flask run``): a plain StreamHandler, written by the thread that
  logs;
* under gunicorn (serve/gunicorn_conf.json_logconfig): ``BackgroundHandler``. A request thread only freezes
  what belongs to the request (its id, the message text) and appends the record to a deque; one thread per
  process formats and writes it, in batches (woken when it was idle, else looking again every few ms).
  Eight request threads writing their own lines waited on the handler's lock and on the stderr pipe
  (py-spy, issue 15: the handler's lock ~14 % of a worker's wall samples in development mode). Records are written in the order they were logged; nothing is dropped: the deque is
  unbounded, and ``flush`` / ``close`` (gunicorn's worker_exit, ``logging.shutdown`` at exit) return once
  every record queued before them is written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from datetime import datetime, timezone
from typing import TextIO

from cds_service.web.request_context import current_request_id

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Libraries whose DEBUG and INFO lines carry what must never be logged: request URLs (a FHIR search URL holds
# the patient id: urllib3 logged "GET /fhir/Condition?patient=<id>"), SQL parameters, headers. They are held
# at WARNING whatever CRAMP_LOG_LEVEL says (issue 11 item 7); their warnings and errors still show.
QUIET_LIBRARIES = ("urllib3", "requests", "charset_normalizer", "sqlalchemy", "psycopg", "redis", "flask_cors")


# json.dumps(entry, default=str) built this encoder for every line (default= is not the module's cached one);
# encode() keeps no state between calls, so one serves every thread. Same output.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Frozen by BackgroundHandler in the thread that logged; else the request this thread serves now
        request_id = record.__dict__.get("_request_id") or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        error = record.__dict__.get("_error")
        if error is None and record.exc_info:
            error = error_line(self, record)
        if error is not None:
            entry["error"] = error
        # The standard library's spacing (", ", ": "): operators' searches match '"level": "ERROR"'
        return _ENCODER.encode(entry)


def error_line(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The last line of the record's traceback (the exception and its message): never the frames' values."""
    if not record.exc_info:  # callers look first; a record without an exception has no error line
        return ""
    return formatter.formatException(record.exc_info).splitlines()[-1]


# --------------------------------------------------------------------------- the background handler

_STOP = object()
FLUSH_SECONDS = 10.0  # the longest flush / close wait for the writer (a stuck stderr reader)
_BATCH = 256  # records written with one write() at most
# After writing, the writer sleeps this long before it looks again, so that a busy process's records are
# written in batches with one wake-up, not one wake-up (a lock, a notify, a thread switch) per record.
# A line is written at most this much later; flush and close wait no longer than this for it either.
_LINGER_SECONDS = 0.005
_handlers: "weakref.WeakSet[BackgroundHandler]" = weakref.WeakSet()


class _Writer:
    """One process's writer: the records not yet written, and how to wake the thread that writes them.

    A request thread appends to the deque (atomic, no lock) and sets ``wake`` only when the writer said it
    was idle: under load the writer never goes idle (it sleeps _LINGER_SECONDS and finds more), so logging a
    record costs an append. No record is lost between the writer's last look and its sleep: it says it is
    idle *before* it looks at the deque a last time, and a record appended after that look sees it idle."""

    __slots__ = ("records", "wake", "idle", "thread")

    def __init__(self) -> None:
        self.records: deque = deque()
        self.wake = threading.Event()
        self.idle = False
        self.thread: threading.Thread | None = None

    def put(self, item: object) -> None:
        self.records.append(item)
        if self.idle:
            self.wake.set()

    def take(self) -> list:
        """Up to _BATCH items, waiting while there are none."""
        records = self.records
        while not records:
            self.idle = True
            if not records:  # looked at again after saying idle: an append from now on wakes us
                self.wake.wait()
            self.wake.clear()
            self.idle = False
        batch: list[object] = []
        while records and len(batch) < _BATCH:
            batch.append(records.popleft())
        return batch


class BackgroundHandler(logging.Handler):
    """JSON lines on ``stream`` (default: sys.stderr), formatted and written by a thread of this process.

    The thread starts with the first record in each process: a gunicorn worker forked from a master that
    logged has a thread of its own, and leaves the master's queued records to the master. After ``close``,
    records are written by the thread that logs (late lines at interpreter exit)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())  # dictConfig sets the same one by name
        self._stream = stream
        self._writer: _Writer | None = None
        self._closed = False
        self._starting = threading.Lock()
        self._writing = threading.Lock()  # held while writing, and across a fork (no half-held stream lock)
        _handlers.add(self)

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def handle(self, record: logging.LogRecord) -> bool:
        """As Handler.handle, without its lock: the deque is thread-safe, and the writer is one thread."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _freeze(record, self.formatter)
            if self._closed:
                self._write([record])
            else:
                self._running_writer().put(record)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise into the caller
            self.handleError(record)

    def flush(self) -> None:
        """Returns once every record queued so far is written (or after FLUSH_SECONDS)."""
        writer = self._writer
        if writer is None or writer.thread is None or not writer.thread.is_alive() \
                or writer.thread is threading.current_thread():
            return
        written = threading.Event()
        writer.put(written)
        written.wait(FLUSH_SECONDS)

    def close(self) -> None:
        with self._starting:
            self._closed = True
            writer, self._writer = self._writer, None
        if writer is not None and writer.thread is not None and writer.thread.is_alive():
            writer.put(_STOP)
            writer.thread.join(FLUSH_SECONDS)
        super().close()

    def _running_writer(self) -> _Writer:
        writer = self._writer
        if writer is None:
            with self._starting:
                if self._writer is None:
                    writer = _Writer()
                    writer.thread = threading.Thread(target=self._run, args=(writer,), daemon=True,
                                                     name="cramp-log-writer")
                    writer.thread.start()
                    self._writer = writer
                writer = self._writer
        return writer

    def _run(self, writer: _Writer) -> None:
        while True:
            batch = writer.take()
            self._write([item for item in batch if isinstance(item, logging.LogRecord)])
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()  # every record queued before it is written
            if _STOP in batch:
                return
            if not writer.records:
                time.sleep(_LINGER_SECONDS)  # let the next records gather: one wake-up for many

    def _write(self, records: list[logging.LogRecord]) -> None:
        lines = []
        for record in records:
            try:
                lines.append(self.format(record))
            except Exception:  # noqa: BLE001
                self.handleError(record)
        if not lines:
            return
        with self._writing:
            try:
                stream = self.stream
                stream.write("\n".join(lines) + "\n")
                stream.flush()
            except Exception:  # noqa: BLE001
                self.handleError(records[0])

    def _after_fork_in_child(self) -> None:
        # The writer thread is the parent's: so are the records on its deque (the parent writes them).
        self._writer = None
        self._starting, self._writing = threading.Lock(), threading.Lock()


def _freeze(record: logging.LogRecord, formatter: logging.Formatter | None) -> None:
    """What the writer thread cannot know later: the request being served, the message with its arguments
    as they are now, the error line while the exception is current."""
    record._request_id = current_request_id()
    record.msg, record.args = record.getMessage(), None
    if record.exc_info:  # (a handler whose formatter was taken away formats with the default one)
        record._error = error_line(formatter or logging.Formatter(), record)


def _before_fork() -> None:
    for handler in list(_handlers):
        handler._writing.acquire()


def _after_fork_in_parent() -> None:
    for handler in list(_handlers):
        handler._writing.release()


def _after_fork_in_child() -> None:
    for handler in list(_handlers):
        handler._after_fork_in_child()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def flush_logs() -> None:
    """Every record logged so far written (gunicorn's worker_exit: before the worker process ends)."""
    for handler in list(_handlers):
        handler.flush()


# --------------------------------------------------------------------------- configuration

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
