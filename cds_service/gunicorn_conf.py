"""Gunicorn settings for the production server.

Used two ways, with the same values:

* ``gunicorn -c python:cds_service.gunicorn_conf cds_service.wsgi:app`` (the Docker image) reads the
  module-level names below;
* ``cramp-cds serve`` calls :func:`build` and lets its command-line options override bind, workers and
  threads.

The server process (not the app: ``Settings`` holds the app's configuration) reads these variables:

    CRAMP_BIND         address to listen on, "HOST:PORT" (default 127.0.0.1:8080; the image sets 0.0.0.0:8080)
    CRAMP_WORKERS      worker processes (default 2 * CPU cores + 1, at most 8)
    CRAMP_THREADS      threads per worker (default 4)
    CRAMP_ACCESS_LOG   true: one access-log line per request on stderr (default false)
    CRAMP_LOG_LEVEL    also sets gunicorn's own log level (default INFO)

An invalid value raises ``SettingsError`` naming the variable.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from cds_service.settings import SettingsError

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_THREADS = 4
MAX_DEFAULT_WORKERS = 8
_LOG_LEVELS = {"debug", "info", "warning", "error", "critical"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def default_workers(cpu_count: int | None = None) -> int:
    """2 * cores + 1 (gunicorn's rule of thumb), capped at MAX_DEFAULT_WORKERS."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return min(2 * cores + 1, MAX_DEFAULT_WORKERS)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a positive integer, got {raw!r}") from None
    if value < 1:
        raise SettingsError(f"{name}: expected a positive integer, got {raw!r}")
    return value


def _access_log(env: Mapping[str, str]) -> str | None:
    raw = env.get("CRAMP_ACCESS_LOG", "").strip().lower()
    if raw in _TRUE:
        return "-"
    if raw in _FALSE:
        return None
    raise SettingsError(f"CRAMP_ACCESS_LOG: expected true/false, got {env['CRAMP_ACCESS_LOG']!r}")


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get("CRAMP_LOG_LEVEL", "INFO").strip().lower() or "info"
    level = {"warn": "warning", "fatal": "critical"}.get(level, level)
    if level not in _LOG_LEVELS:
        raise SettingsError(
            f"CRAMP_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}"
        )
    return level


def build(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every gunicorn setting this service uses, from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    return {
        "bind": [env.get("CRAMP_BIND", "").strip() or DEFAULT_BIND],
        "workers": _positive_int(env, "CRAMP_WORKERS", default_workers()),
        # gthread: a slow FHIR server call (bounded by CRAMP_FHIR_DEADLINE_SECONDS) holds one thread,
        # not a whole worker.
        "worker_class": "gthread",
        "threads": _positive_int(env, "CRAMP_THREADS", DEFAULT_THREADS),
        # A worker silent for this long is killed and replaced.
        "timeout": 30,
        # On SIGTERM, workers stop accepting and finish in-flight requests for up to this long.
        "graceful_timeout": 30,
        "keepalive": 5,
        # Recycle workers now and then (bounds any slow leak); the jitter keeps them from restarting together.
        "max_requests": 1000,
        "max_requests_jitter": 100,
        # Heartbeat files in memory, not on a possibly slow or read-only disk.
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # Lean logs: no access log unless asked for. URLs carry no PHI, but there is no need for them.
        "accesslog": _access_log(env),
        "errorlog": "-",
        "loglevel": _log_level(env),
        "capture_output": False,
        "proc_name": "cramp-cds",
        # Gunicorn >= 25.1 opens a runtime-control socket under $HOME by default; a service has no use for it.
        # (Older gunicorn ignores the unknown name.)
        "control_socket_disable": True,
        # Client X-Forwarded-* headers are trusted from a proxy on this host only (gunicorn's default).
        "forwarded_allow_ips": env.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
    }


# --- What `gunicorn -c python:cds_service.gunicorn_conf` reads -------------------------------------
_options = build()

bind = _options["bind"]
workers = _options["workers"]
worker_class = _options["worker_class"]
threads = _options["threads"]
timeout = _options["timeout"]
graceful_timeout = _options["graceful_timeout"]
keepalive = _options["keepalive"]
max_requests = _options["max_requests"]
max_requests_jitter = _options["max_requests_jitter"]
worker_tmp_dir = _options["worker_tmp_dir"]
accesslog = _options["accesslog"]
errorlog = _options["errorlog"]
loglevel = _options["loglevel"]
capture_output = _options["capture_output"]
proc_name = _options["proc_name"]
control_socket_disable = _options["control_socket_disable"]
forwarded_allow_ips = _options["forwarded_allow_ips"]
