"""Gunicorn settings for the production server.

Used two ways, with the same values:

* ``gunicorn -c python:cds_service.serve.gunicorn_conf cds_service.serve.wsgi:app`` (the Docker image) reads the
  module-level names below;
* ``cramp-cds serve`` calls :func:`build` and lets its command-line options override bind, workers and
  threads.

The server process (not the app: ``Settings`` holds the app's configuration) reads these variables:

    CRAMP_BIND         address to listen on, "HOST:PORT" (default 127.0.0.1:8080; the image sets 0.0.0.0:8080)
    CRAMP_WORKERS      worker processes (default CPU cores + 1, at most 8)
    CRAMP_THREADS      threads per worker (default 8: a call waiting on a FHIR server holds a thread, not a worker)
    CRAMP_WORKER_CLASS gthread (default: cds_service.serve.gunicorn_worker, no more connections than threads) or sync
    CRAMP_KEEPALIVE    seconds an idle client connection stays open (default 0: closed after each response)
    CRAMP_ACCESS_LOG   true: one access-log line per request on stderr (default false)
    CRAMP_MAX_REQUESTS recycle a worker after about this many requests (default 0: never; see README, Benchmarks)
    CRAMP_FORWARDED_ALLOW_IPS
                       proxies (addresses or networks, comma-separated) whose X-Forwarded-* headers are
                       trusted (default: none; "*" and gunicorn's own FORWARDED_ALLOW_IPS are refused)
    CRAMP_LOG_LEVEL    also sets gunicorn's own log level (default INFO)
    CRAMP_JOB_WORKER   0: no dry-run job worker beside the server (default: one, started when the server is
                       ready and stopped with it; docs/dry-run.md)
    PROMETHEUS_MULTIPROC_DIR
                       where the workers write their metrics for /metrics to add up (default: a fresh
                       temporary directory per master, removed when it exits). When set, the master empties
                       it on start: give each server its own.

Gunicorn's own logs (start, workers, errors, access) are JSON lines like the service's (``logconfig_dict``).

An invalid value, or a number outside its range, raises ``SettingsError`` naming the variable. Header
limits: ``header_limits.py``.
"""

from __future__ import annotations

import gc
import glob
import ipaddress
import os
import shutil
import sys
import tempfile
from typing import Any, Mapping

from cds_service.engine.reload import gunicorn_on_reload, gunicorn_post_worker_init
from cds_service.header_limits import SERVER_HEADER_FIELD_BYTES, SERVER_REQUEST_LINE_BYTES
from cds_service.serve.bind import check_bind_free
from cds_service.settings import SettingsError, env_int

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_THREADS = 8
MAX_DEFAULT_WORKERS = 8
WORKER_CLASSES = ("sync", "gthread")
# gthread is gunicorn's, accepting no more connections than it has threads (cds_service/serve/gunicorn_worker.py).
WORKER_CLASS_PATHS = {"sync": "sync", "gthread": "cds_service.serve.gunicorn_worker.ThreadBoundWorker"}
DEFAULT_WORKER_CLASS = "gthread"
DEFAULT_KEEPALIVE = 0
_LOG_LEVELS = {"debug", "info", "warning", "error", "critical"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def default_workers(cpu_count: int | None = None) -> int:
    """cores + 1, capped at MAX_DEFAULT_WORKERS. A call is CPU-bound Python (~3-4 ms, the GIL held): more
    processes than cores only add contention; the one spare covers a worker waiting on the database or a
    FHIR server. (gunicorn's 2 * cores + 1 assumes I/O-bound workers; measured on 2 cores, README.)"""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return min(cores + 1, MAX_DEFAULT_WORKERS)


# Ranges of the numeric variables (settings.env_int refuses anything outside, naming the variable).
WORKERS_RANGE = (1, 64)
THREADS_RANGE = (1, 64)
KEEPALIVE_RANGE = (0, 300)  # seconds
MAX_REQUESTS_RANGE = (0, 10_000_000)  # 0: never recycle


def _bind(env: Mapping[str, str]) -> str:
    """CRAMP_BIND: HOST:PORT (IPv6 as [::1]:PORT) with a port from 1 to 65535, or unix:PATH."""
    raw = env.get("CRAMP_BIND", "").strip() or DEFAULT_BIND
    if raw.startswith("unix:"):
        return raw
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"CRAMP_BIND: expected HOST:PORT with a port from 1 to 65535, got {raw!r}")
    return raw


def _forwarded_allow_ips(env: Mapping[str, str]) -> str:
    """The proxies whose X-Forwarded-* headers gunicorn trusts: CRAMP_FORWARDED_ALLOW_IPS, addresses or
    networks, comma-separated; none by default. The service needs none of those headers (the JWT audience
    comes from CRAMP_PUBLIC_BASE_URL), so trust is opt-in and never "*"."""
    if env.get("FORWARDED_ALLOW_IPS", "").strip():
        raise SettingsError("FORWARDED_ALLOW_IPS: not read by this service; name your proxies in "
                            "CRAMP_FORWARDED_ALLOW_IPS instead (addresses or networks, never *)")
    raw = env.get("CRAMP_FORWARDED_ALLOW_IPS", "")
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise SettingsError(f"CRAMP_FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network "
                                "(trust only your proxies' addresses; * is refused)") from None
    return ",".join(entries)


def _worker_class(env: Mapping[str, str]) -> str:
    raw = env.get("CRAMP_WORKER_CLASS", "").strip().lower() or DEFAULT_WORKER_CLASS
    if raw not in WORKER_CLASSES:
        raise SettingsError(f"CRAMP_WORKER_CLASS: expected one of {', '.join(WORKER_CLASSES)}, got {raw!r}")
    return raw


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


def json_logconfig(level: str, access_log: bool) -> dict[str, Any]:
    """Gunicorn's loggers and the service's as JSON lines on stderr (``cds_service.web.logs.JsonFormatter``),
    written by a thread of each process (``logs.BackgroundHandler``): a request thread never waits on the
    pipe or on another thread's line."""
    handler = {"class": "cds_service.web.logs.BackgroundHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "cds_service.web.logs.JsonFormatter"}},
        "handlers": {"json": handler},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "INFO" if access_log else "CRITICAL", "handlers": ["json"],
                                "propagate": False},
        },
        "root": {"level": level.upper(), "handlers": ["json"]},
    }


# --- Prometheus multiprocess mode (cds_service/web/metrics.py) -------------------------------------------
# The master prepares the directory before any worker forks; workers inherit the variable and are the
# first to import prometheus_client.
_CREATED_MULTIPROC_DIR: list[str] = []


def prepare_multiproc_dir() -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory: a new temporary one unless set."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not path:
        path = tempfile.mkdtemp(prefix="cramp-metrics-")
        _CREATED_MULTIPROC_DIR.append(path)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    else:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):  # a previous run's values
            os.remove(stale)
    return path


def prepare_metrics(server: Any) -> None:
    path = prepare_multiproc_dir()
    server.log.info("metrics: PROMETHEUS_MULTIPROC_DIR=%s", path)


def check_application_settings(env: Mapping[str, str] | None = None) -> None:
    """The application's settings that refuse a start (SettingsError naming the variable): read once in
    the master, so that ``gunicorn -c python:cds_service.serve.gunicorn_conf`` stops with one line instead of
    every worker failing to boot. (``cramp-cds serve`` checks the same before it starts gunicorn.)"""
    from cds_service.settings import Settings

    settings = Settings.from_env(env)
    settings.patient_key_secret_or_default()
    settings.required_public_base_urls()
    for address in build(env)["bind"]:
        check_bind_free(address)


def on_starting(server: Any) -> None:
    """The ``gunicorn -c`` start: the settings check (a busy port too), then the metrics directory."""
    try:
        check_application_settings()
    except SettingsError as error:
        from cds_service.web.logs import flush_logs

        flush_logs()  # gunicorn's lines so far first: the log thread writes to the same stderr
        print(f"cramp-cds: configuration error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    prepare_metrics(server)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it ends: every line it logged is written before the process goes."""
    from cds_service.web.logs import flush_logs

    flush_logs()


def child_exit(server: Any, worker: Any) -> None:
    from cds_service.web.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


def on_exit(server: Any) -> None:
    from cds_service.web.logs import flush_logs

    stop_job_worker()
    for path in _CREATED_MULTIPROC_DIR:
        shutil.rmtree(path, ignore_errors=True)
    flush_logs()


# --- The dry-run job worker beside the server (docs/dry-run.md) -------------------------------------------
# `gunicorn -c python:cds_service.serve.gunicorn_conf` (the Docker image) starts one `cramp-cds worker` when the
# server is ready, as `cramp-cds serve` does (which starts its own, so `build()` has no when_ready);
# CRAMP_JOB_WORKER=0: none. Stopped with the server.
_JOB_WORKER: list[Any] = []


def when_ready(server: Any) -> None:
    import subprocess

    if os.environ.get("CRAMP_JOB_WORKER", "").strip().lower() in ("0", "false", "no", "off"):
        return
    command = [sys.executable, "-c", "import sys; from cds_service.cli.main import main; sys.exit(main())",
               "worker", "--parent-pid", str(os.getpid())]
    _JOB_WORKER.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
    server.log.info("dry-run job worker started (pid %s)", _JOB_WORKER[-1].pid)


def stop_job_worker(timeout: float = 15) -> None:
    import subprocess

    while _JOB_WORKER:
        process = _JOB_WORKER.pop()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()


def worker_ready(worker: Any) -> None:
    """gunicorn ``post_worker_init``: the rules' SIGHUP reload, then the app's startup heap (rule set, FHIR
    models, ~120,000 objects) frozen out of the cyclic garbage collector. Each full collection during a
    request otherwise walks it again: a Bundle of 200,000 records cost about twice as much per record as one
    of 20,000 (bench/bench_scaling.py, the attack table)."""
    gunicorn_post_worker_init(worker)
    gc.collect()
    gc.freeze()


def build(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every gunicorn setting this service uses, from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    return {
        "bind": [_bind(env)],
        "workers": env_int(env, "CRAMP_WORKERS", default_workers(), minimum=WORKERS_RANGE[0],
                           maximum=WORKERS_RANGE[1]),
        # gthread, 8 threads: a call waiting on a slow FHIR server (up to CRAMP_FHIR_DEADLINE_SECONDS) holds
        # one thread, not a whole worker, and a worker accepts only as many connections as it has threads, so
        # a request that carries its prefetch goes to a worker with a free thread instead of queuing behind
        # hanging ones (bench/bench_hanging_fhir.py, docs/fetching.md).
        "worker_class": WORKER_CLASS_PATHS[_worker_class(env)],
        "threads": env_int(env, "CRAMP_THREADS", DEFAULT_THREADS, minimum=THREADS_RANGE[0],
                           maximum=THREADS_RANGE[1]),
        # A worker silent for this long is killed and replaced.
        "timeout": 30,
        # On SIGTERM, workers stop accepting and finish in-flight requests for up to this long.
        "graceful_timeout": 30,
        # No keep-alive by default: a gthread worker keeps serving the connections it accepted, so under load
        # (a load balancer's pooled connections) requests queue behind a busy worker while others idle.
        # Closed after each response, every request goes back to the shared listen queue and the next free
        # worker takes it (2-core load test, README: paced p99 from 62-118 ms down to 24-33 ms).
        "keepalive": env_int(env, "CRAMP_KEEPALIVE", DEFAULT_KEEPALIVE, minimum=KEEPALIVE_RANGE[0],
                             maximum=KEEPALIVE_RANGE[1]),
        # Recycle workers now and then (bounds any slow leak); the jitter keeps them from restarting together.
        # No recycling by default: a worker's restart (~1 s of imports) stalls the requests queued on it,
        # which was the p99 tail under load; the 10-minute soak shows no memory growth to recycle for.
        "max_requests": env_int(env, "CRAMP_MAX_REQUESTS", 0, minimum=MAX_REQUESTS_RANGE[0],
                                maximum=MAX_REQUESTS_RANGE[1]),
        "max_requests_jitter": 100,
        # Heartbeat files in memory, not on a possibly slow or read-only disk.
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # Lean logs: no access log unless asked for. URLs carry no PHI, but there is no need for them.
        "accesslog": _access_log(env),
        # Gunicorn's logger, doing no access-log work for a request when the access log is off (gunicorn_logger.py)
        "logger_class": "cds_service.serve.gunicorn_logger.ServiceLogger",
        "errorlog": "-",
        "loglevel": _log_level(env),
        "logconfig_dict": json_logconfig(_log_level(env), _access_log(env) is not None),
        "capture_output": False,
        "proc_name": "cramp-cds",
        # Gunicorn >= 25.1 opens a runtime-control socket under $HOME by default; a service has no use for it.
        # (Older gunicorn ignores the unknown name.)
        "control_socket_disable": True,
        # X-Forwarded-* headers are trusted only from the proxies named in CRAMP_FORWARDED_ALLOW_IPS (none by
        # default). Nothing security-relevant depends on them: the JWT audience is configuration.
        "forwarded_allow_ips": _forwarded_allow_ips(env),
        # Header limits above the application's (header_limits.py): a 16 KiB JWT fits, and a header over the
        # application's limit gets its 431 OperationOutcome, not gunicorn's bare one.
        "limit_request_line": SERVER_REQUEST_LINE_BYTES,
        "limit_request_field_size": SERVER_HEADER_FIELD_BYTES,
        # Server hooks: the metrics directory (see above).
        "on_starting": prepare_metrics,  # `cramp-cds serve` checked the settings itself (with its options)
        "child_exit": child_exit,
        "worker_exit": worker_exit,
        "on_exit": on_exit,
        # HUP with a changed rules file: the master re-reads it, so new workers never start on an invalid one
        "on_reload": gunicorn_on_reload,
        "post_worker_init": worker_ready,
    }


# --- What `gunicorn -c python:cds_service.serve.gunicorn_conf` reads -------------------------------------
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
logger_class = _options["logger_class"]
errorlog = _options["errorlog"]
loglevel = _options["loglevel"]
capture_output = _options["capture_output"]
proc_name = _options["proc_name"]
control_socket_disable = _options["control_socket_disable"]
forwarded_allow_ips = _options["forwarded_allow_ips"]
limit_request_line = _options["limit_request_line"]
limit_request_field_size = _options["limit_request_field_size"]
logconfig_dict = _options["logconfig_dict"]
# on_starting (the settings check, then prepare_metrics), child_exit, worker_exit and on_exit are the functions
# above.
on_reload = gunicorn_on_reload
post_worker_init = worker_ready
