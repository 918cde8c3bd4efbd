"""Gunicorn's logger does no access-log work when the access log is off (serve/gunicorn_logger.py), and writes
one JSON line per request when CRAMP_ACCESS_LOG=true."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from types import SimpleNamespace
from typing import Iterator

import pytest
from gunicorn.config import Config

from cds_service.serve import gunicorn_conf
from cds_service.serve.gunicorn_logger import ServiceLogger
from cds_service.web.logs import flush_logs


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """Gunicorn's logger applies logconfig_dict to the process's logging: put it back after each test."""
    names = ("", "gunicorn.error", "gunicorn.access")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.level, logger.propagate = handlers, level, propagate


def _gunicorn_logger(env: dict[str, str]) -> ServiceLogger:
    cfg = Config()
    for key, value in gunicorn_conf.build(env).items():
        if key in cfg.settings:
            cfg.set(key, value)
    logger = cfg.logger_class(cfg)
    assert isinstance(logger, ServiceLogger)
    return logger


def _one_request() -> tuple[object, object, dict, timedelta]:
    resp = SimpleNamespace(status="200 OK", sent=12, headers=[("Content-Type", "application/json")])
    req = SimpleNamespace(headers=[("HOST", "127.0.0.1")])
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": "/cds-services/x", "SERVER_PROTOCOL": "HTTP/1.1",
               "PATH_INFO": "/cds-services/x", "REMOTE_ADDR": "127.0.0.1"}
    return resp, req, environ, timedelta(milliseconds=3)


def test_the_service_runs_its_own_logger_class():
    assert gunicorn_conf.build({})["logger_class"] == "cds_service.serve.gunicorn_logger.ServiceLogger"
    assert gunicorn_conf.logger_class == "cds_service.serve.gunicorn_logger.ServiceLogger"


def test_access_log_off_computes_no_atoms_and_writes_nothing(monkeypatch, capsys):
    logger = _gunicorn_logger({})
    computed = []
    monkeypatch.setattr(logger, "atoms", lambda *args: computed.append(args) or {})
    logger.access(*_one_request())
    flush_logs()
    assert computed == []
    assert capsys.readouterr().err == ""


def test_access_log_on_writes_one_json_line_per_request(capsys):
    logger = _gunicorn_logger({"CRAMP_ACCESS_LOG": "true"})
    capsys.readouterr()
    logger.access(*_one_request())
    flush_logs()  # written by the log thread (web/logs.BackgroundHandler)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["logger"] == "gunicorn.access"
    assert '"POST /cds-services/x HTTP/1.1" 200' in entry["message"]
