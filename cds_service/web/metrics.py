"""Prometheus metrics, served at ``GET /metrics``.

What is measured (every label has a small, fixed set of values: no patient id, no hookInstance, no URL
or hook name taken as is from a client):

    cramp_requests_total{service, hook, status}             CDS service calls
    cramp_request_duration_seconds{service, hook}           their latency (histogram, 1 ms - 5 s)
    cramp_http_requests_total{endpoint, method, status}     every HTTP request, by route template
    cramp_evaluation_duration_seconds{service}              the engine's own work for one call
    cramp_prefetch_keys_total{service, key, outcome}        outcome: sent (by the client), fetched (by
                                                            us from the FHIR server), not_checked, incomplete
                                                            (pages not read)
    cramp_cards_total{service, rule, indicator}             cards returned
    cramp_fhir_fetch_duration_seconds{resource, outcome}    one FHIR read (fhir_client calls observe_fetch)
    cramp_fhir_fetch_errors_total{resource, reason}         failed FHIR reads
    cramp_replay_fallback_total{store}                      JWT replay checks answered from this process's
                                                            memory: the shared store (database, redis) was down
    cramp_ledger_unavailable_total{operation}               card-ledger calls the database did not answer:
                                                            record_shown, suppression_check, feedback

Under gunicorn the workers are separate processes: ``gunicorn_conf`` points ``PROMETHEUS_MULTIPROC_DIR``
at a directory made fresh for each master, every worker writes its values there, and ``/metrics``
(answered by any worker) adds them up. Without that variable (tests, ``flask run``) the process's own
registry is served.

prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` when it is first imported, so this module imports it
only inside functions: ``cramp-cds serve`` builds the app once in the master before gunicorn has set the
variable, and the workers, forked later, must be the first to import it.
"""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

from flask import Flask, Response, g, request

if TYPE_CHECKING:
    from cds_service.engine.prefetch import ResolvedPrefetch

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds. A call's own work is a few ms; the CDS Hooks budget is ~500 ms end to end, FHIR reads included.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KNOWN_HOOKS = frozenset({"patient-view", "order-select", "order-sign"})
CDS_ENDPOINT = "cds.call_service"


_created: list[SimpleNamespace] = []
_lock = threading.Lock()


def _metrics() -> SimpleNamespace:
    """The metric objects, created once per process on first use (see the module docstring)."""
    if _created:
        return _created[0]
    with _lock:  # gthread: two first requests may arrive at once
        if not _created:
            _created.append(_create_metrics())
    return _created[0]


def _create_metrics() -> SimpleNamespace:
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter("cramp_requests", "CDS service calls.", ["service", "hook", "status"]),
        request_seconds=Histogram(
            "cramp_request_duration_seconds", "CDS service call latency, request in to response out.",
            ["service", "hook"], buckets=LATENCY_BUCKETS,
        ),
        http=Counter("cramp_http_requests", "HTTP requests by route.", ["endpoint", "method", "status"]),
        evaluation_seconds=Histogram(
            "cramp_evaluation_duration_seconds", "Engine work for one call (prefetch to cards).",
            ["service"], buckets=LATENCY_BUCKETS,
        ),
        prefetch=Counter(
            "cramp_prefetch_keys", "Prefetch keys by how they were satisfied.", ["service", "key", "outcome"]
        ),
        cards=Counter("cramp_cards", "Cards returned.", ["service", "rule", "indicator"]),
        fetch_seconds=Histogram(
            "cramp_fhir_fetch_duration_seconds", "One read from the client's FHIR server.",
            ["resource", "outcome"], buckets=LATENCY_BUCKETS,
        ),
        fetch_errors=Counter("cramp_fhir_fetch_errors", "Failed reads from FHIR servers.", ["resource", "reason"]),
        replay_fallback=Counter(
            "cramp_replay_fallback", "JWT replay checks answered from memory: the shared store was down.", ["store"]
        ),
        ledger_unavailable=Counter(
            "cramp_ledger_unavailable", "Card-ledger calls the database did not answer.", ["operation"]
        ),
    )


# --------------------------------------------------------------------------- recording (engine, fetcher)

def observe_evaluation(service_id: str, seconds: float) -> None:
    _metrics().evaluation_seconds.labels(service_id).observe(seconds)


def record_prefetch(service_id: str, templates: Iterable[Any], resolved: "ResolvedPrefetch") -> None:
    """Count each of the service's prefetch keys once: sent by the client, fetched by us, not checked, or
    incomplete (more pages that were not read)."""
    counter = _metrics().prefetch
    fetched, not_checked, incomplete = set(resolved.fetched), set(resolved.not_checked), set(resolved.incomplete)
    for template in templates:
        key = template.key
        if key in incomplete:  # pages that were not read, whoever sent the others
            outcome = "incomplete"
        elif key in fetched:
            outcome = "fetched"
        elif key in not_checked:
            outcome = "not_checked"
        elif key in resolved.resources:
            outcome = "sent"
        else:
            continue
        counter.labels(service_id, key, outcome).inc()


def record_cards(service_id: str, cards: Iterable[tuple[str, str]]) -> None:
    """``cards``: (rule, indicator) of each card returned."""
    counter = _metrics().cards
    for rule, indicator in cards:
        counter.labels(service_id, rule, indicator).inc()


def _resource_label(resource: str) -> str:
    """A FHIR resource type, from a type or a relative query ("Observation?patient=..."): never the query."""
    name = resource.split("?", 1)[0].split("/", 1)[0]
    return name if name.isalpha() and len(name) <= 40 else "other"


def observe_fetch(resource: str, seconds: float, error: str | None = None) -> None:
    """For the FHIR client: one read of ``resource`` (a type or a query) took ``seconds``; ``error`` is a
    short, fixed reason ("timeout", "http_5xx", "invalid_json", ...) when it failed."""
    label = _resource_label(resource)
    metrics = _metrics()
    metrics.fetch_seconds.labels(label, "error" if error else "ok").observe(seconds)
    if error:
        metrics.fetch_errors.labels(label, error[:40]).inc()


# --------------------------------------------------------------------------- storage outages (replay, store)

def record_replay_fallback(store: str) -> None:
    """``store``: "database" or "redis", the shared replay store that could not answer."""
    _metrics().replay_fallback.labels(store).inc()


def record_ledger_unavailable(operation: str) -> None:
    """``operation``: "record_shown", "suppression_check" or "feedback"."""
    _metrics().ledger_unavailable.labels(operation).inc()


# --------------------------------------------------------------------------- HTTP side

def _cds_labels(app: Flask, status: int) -> tuple[str, str, str]:
    service_id = (request.view_args or {}).get("service_id", "")
    engine = app.extensions.get("leg_cramp_engine")
    try:
        known = engine is not None and bool(service_id) and engine.registry.get(service_id) is not None
    except Exception:  # an unknown id (404): never a label value taken from the URL
        known = False
    hook = g.get("cds_hook")
    return (
        service_id if known else "unknown",
        hook if isinstance(hook, str) and hook in KNOWN_HOOKS else ("none" if hook is None else "other"),
        str(status),
    )


def init_app(app: Flask) -> None:
    """Time every request and count it by route; CDS calls also by service, hook and status."""

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is None or request.endpoint == "cds.metrics":
            return response
        elapsed = time.perf_counter() - started
        metrics = _metrics()
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http.labels(endpoint, request.method, str(response.status_code)).inc()
        if request.endpoint == CDS_ENDPOINT and request.method == "POST":
            service, hook, status = _cds_labels(app, response.status_code)
            metrics.requests.labels(service, hook, status).inc()
            metrics.request_seconds.labels(service, hook).observe(elapsed)
        return response


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type: all workers' values under gunicorn, else this process's."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    _metrics()  # so that a fresh process shows its (zero-valued) families
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """For gunicorn's ``child_exit`` hook: drop a dead worker's live gauges (counters are kept)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
