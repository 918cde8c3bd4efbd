"""The JSON log lines and the handler that writes them under gunicorn (web/logs.py): every record written,
once, in order, with the id of the request that logged it, also across a fork and at close."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cds_service.serve import gunicorn_conf
from cds_service.web import request_context
from cds_service.web.logs import BackgroundHandler, JsonFormatter, flush_logs


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"cds_service.test_logs.{name}")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.INFO
    return logger


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_gunicorn_writes_every_log_through_the_background_handler():
    config = gunicorn_conf.json_logconfig("info", access_log=False)
    assert config["handlers"]["json"]["class"] == "cds_service.web.logs.BackgroundHandler"
    assert config["root"]["handlers"] == ["json"]


def test_every_record_from_many_threads_is_written_once_in_each_threads_order_by_close():
    stream = io.StringIO()
    handler = BackgroundHandler(stream)
    log = _logger("threads", handler)

    def burst(thread: int) -> None:
        for n in range(500):
            log.info("line %d", n, extra={"thread_no": thread})

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()  # as logging.shutdown does at exit
    lines = _lines(stream.getvalue())
    assert len(lines) == 8 * 500
    for t in range(8):
        assert [line["message"] for line in lines if line["thread_no"] == t] == [f"line {n}" for n in range(500)]


def test_a_line_carries_the_request_id_of_the_thread_that_logged_it():
    stream = io.StringIO()
    handler = BackgroundHandler(stream)
    log = _logger("request_id", handler)
    token = request_context._current.set("req-77")
    try:
        log.warning("inside")
    finally:
        request_context._current.reset(token)
    log.warning("outside")
    flush_logs()
    inside, outside = _lines(stream.getvalue())
    assert inside["request_id"] == "req-77" and inside["level"] == "WARNING"
    assert "request_id" not in outside
    handler.close()


def test_arguments_are_read_when_logged_and_errors_as_their_last_line():
    stream = io.StringIO()
    handler = BackgroundHandler(stream)
    log = _logger("arguments", handler)
    changing = ["before"]
    log.info("value %s", changing)
    changing[0] = "after"
    try:
        raise ValueError("bad thing")
    except ValueError:
        log.exception("failed")
    handler.close()
    first, second = _lines(stream.getvalue())
    assert first["message"] == "value ['before']"
    assert second["error"] == "ValueError: bad thing"


def test_after_close_a_record_is_written_at_once_not_lost():
    stream = io.StringIO()
    handler = BackgroundHandler(stream)
    log = _logger("closed", handler)
    handler.close()
    log.info("late")
    assert [line["message"] for line in _lines(stream.getvalue())] == ["late"]


def test_a_forked_child_writes_its_own_lines_and_never_the_parents_again(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    with path.open("a") as stream:
        handler = BackgroundHandler(stream)
        log = _logger("fork", handler)
        for n in range(200):
            log.info("parent %d", n)  # some still queued at the fork
        pid = os.fork()
        if pid == 0:  # the child: its own writer thread, then everything written before it ends
            try:
                log.info("child")
                handler.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        log.info("parent after")
        handler.close()
    messages = [line["message"] for line in _lines(path.read_text())]
    assert sorted(messages) == sorted([f"parent {n}" for n in range(200)] + ["child", "parent after"])


@dataclass
class _Point:
    x: int


def test_the_formatter_writes_json_with_default_str_and_the_standard_spacing():
    record = logging.makeLogRecord({"msg": "m", "levelname": "INFO", "name": "n", "created": 0.0,
                                    "at": datetime(2026, 1, 2, tzinfo=timezone.utc), "point": _Point(1),
                                    "counts": {1: 2}, "huge": 2**70, "path": Path("/x")})
    line = JsonFormatter().format(record)
    assert '"level": "INFO"' in line  # what operators search for
    entry = json.loads(line)
    assert entry["at"] == "2026-01-02 00:00:00+00:00"
    assert entry["point"] == "_Point(x=1)"
    assert entry["counts"] == {"1": 2}
    assert entry["huge"] == 2**70
    assert entry["path"] == "/x"
    assert entry["time"] == "1970-01-01T00:00:00.000+00:00"


def _written(stream: io.StringIO, count: int, seconds: float = 10.0) -> bool:
    """Whether ``count`` lines are on the stream within ``seconds`` (nobody flushing: the writer's own doing)."""
    deadline = threading.Event()
    for _ in range(int(seconds / 0.001)):
        if stream.getvalue().count("\n") >= count:
            return True
        deadline.wait(0.001)
    return False


def test_a_record_logged_while_the_writer_is_idle_wakes_it_without_a_flush():
    # The writer sleeps when it has nothing to write; a record appended at any moment of its going to sleep
    # must wake it (a lost wake-up would leave the line unwritten until the next record or the exit).
    stream = io.StringIO()
    handler = BackgroundHandler(stream)
    log = _logger("idle", handler)
    try:
        for n in range(300):
            log.info("line %d", n)
            assert _written(stream, n + 1), f"line {n} not written by the writer on its own"
            if n % 3 == 0:
                threading.Event().wait(0.006)  # past the writer's linger: it goes idle before the next one
    finally:
        handler.close()
    assert [line["message"] for line in _lines(stream.getvalue())] == [f"line {n}" for n in range(300)]


def test_records_logged_while_the_writer_is_busy_are_written_in_batches():
    # Threads that log between I/O waits: the writer is woken only when idle, so it writes many lines a write().
    class CountingStream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            CountingStream.writes += 1
            return super().write(text)

    stream = CountingStream()
    handler = BackgroundHandler(stream)
    log = _logger("batches", handler)

    def requests(thread: int) -> None:
        for n in range(200):
            threading.Event().wait(0.0002)  # the request's I/O: the GIL released, the writer free to run
            log.info("line %d", n, extra={"thread_no": thread})

    threads = [threading.Thread(target=requests, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    lines = _lines(stream.getvalue())
    assert len(lines) == 4 * 200
    assert CountingStream.writes < len(lines) / 4, CountingStream.writes
