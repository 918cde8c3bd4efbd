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
    cramp_fhir_fetch_duration_seconds{resource, outcome}    one FHIR read (the FHIR client calls fhir_read_finished)
    cramp_fhir_fetch_errors_total{resource, reason}         failed FHIR reads
    cramp_replay_fallback_total{store}                      JWT replay checks answered from this process's
                                                            memory: the shared store (database, redis) was down
    cramp_ledger_unavailable_total{operation}               card-ledger calls the database did not answer:
                                                            record_shown, suppression_check, feedback
    cramp_skipped_records_total{service, resource}          records left out of a call (invalid, another
                                                            patient's), by resource type
    cramp_all_clear_refused_total{service, key}             no card over a required key with unread pages: 412
    cramp_auth_rejections_total{category}                   CDS calls refused 401, by the coarse category the
                                                            WWW-Authenticate names (auth/verifier.CATEGORIES)
    cramp_build_info{version, ruleset_version}              1: the running package and rule-set versions
                                                            (a reloaded rule set's old version drops to 0)
    cramp_card_rate_alarm{card, measure}                    1 when the card's latest complete week's firing
                                                            (cards shown) or override rate is far from its own
                                                            history (admin/watch.py, docs/watch.md), else 0;
                                                            read from the database at scrape time, cached
                                                            ALARM_CACHE_SECONDS; no comment ever reaches it
    cramp_card_rate_alarm_checked                           1 when those alarms could be computed, 0 when the
                                                            database did not answer (the per-card series
                                                            are then left out: the scrape never fails)

``PrometheusMetrics`` implements the engine's ``Observer`` (engine/observer.py) and the FHIR client's read
observer: the engine, the fetcher and the stores are handed the application's instance, and never import
this module. Each application has its own instance and registry (``init_app``), so two apps in one process
(tests) never read each other's values.

Under gunicorn the workers are separate processes: ``gunicorn_conf`` points ``PROMETHEUS_MULTIPROC_DIR``
at a directory made fresh for each master, every worker writes its values there, and ``/metrics``
(answered by any worker) adds them up. Without that variable (tests, ``flask run``) the process's own
registry is served.

prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` when it is first imported, so this module imports it
only inside functions: ``cramp-cds serve`` builds the app once in the master before gunicorn has set the
variable, and the workers, forked later, must be the first to import it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from flask import Flask, Response, current_app, g, request

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds. A call's own work is a few ms; the CDS Hooks budget is ~500 ms end to end, FHIR reads included.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KNOWN_HOOKS = frozenset({"patient-view", "order-select", "order-sign"})
CDS_ENDPOINT = "cds.call_service"
EXTENSION = "leg_cramp_metrics"
ALARM_EXTENSION = "leg_cramp_alarm_cache"
ALARM_CACHE_SECONDS = 60.0  # the alarms are weekly: a scrape every 15 s needs no fresh query each time

log = logging.getLogger(__name__)


def _create_metrics(registry: Any) -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        requests=Counter("cramp_requests", "CDS service calls.", ["service", "hook", "status"], registry=registry),
        request_seconds=Histogram(
            "cramp_request_duration_seconds", "CDS service call latency, request in to response out.",
            ["service", "hook"], buckets=LATENCY_BUCKETS, registry=registry,
        ),
        http=Counter("cramp_http_requests", "HTTP requests by route.", ["endpoint", "method", "status"],
                     registry=registry),
        evaluation_seconds=Histogram(
            "cramp_evaluation_duration_seconds", "Engine work for one call (prefetch to cards).",
            ["service"], buckets=LATENCY_BUCKETS, registry=registry,
        ),
        prefetch=Counter(
            "cramp_prefetch_keys", "Prefetch keys by how they were satisfied.", ["service", "key", "outcome"],
            registry=registry,
        ),
        cards=Counter("cramp_cards", "Cards returned.", ["service", "rule", "indicator"], registry=registry),
        fetch_seconds=Histogram(
            "cramp_fhir_fetch_duration_seconds", "One read from the client's FHIR server.",
            ["resource", "outcome"], buckets=LATENCY_BUCKETS, registry=registry,
        ),
        fetch_errors=Counter("cramp_fhir_fetch_errors", "Failed reads from FHIR servers.", ["resource", "reason"],
                             registry=registry),
        replay_fallback=Counter(
            "cramp_replay_fallback", "JWT replay checks answered from memory: the shared store was down.", ["store"],
            registry=registry,
        ),
        ledger_unavailable=Counter(
            "cramp_ledger_unavailable", "Card-ledger calls the database did not answer.", ["operation"],
            registry=registry,
        ),
        skipped_records=Counter(
            "cramp_skipped_records", "Records left out of a call: invalid, or another patient's.",
            ["service", "resource"], registry=registry,
        ),
        all_clear_refused=Counter(
            "cramp_all_clear_refused", "No card over a required key with unread pages: answered 412.",
            ["service", "key"], registry=registry,
        ),
        auth_rejections=Counter(
            "cramp_auth_rejections", "CDS calls refused for authentication, by coarse category.", ["category"],
            registry=registry,
        ),
        # livemax: under gunicorn, the workers alive now (during a rule-set reload both versions may show 1)
        build_info=Gauge("cramp_build_info", "The running service and rule-set versions (always 1).",
                         ["version", "ruleset_version"], multiprocess_mode="livemax", registry=registry),
    )


def _resource_label(resource: str) -> str:
    """A FHIR resource type, from a type or a relative query ("Observation?patient=..."): never the query."""
    name = resource.split("?", 1)[0].split("/", 1)[0]
    return name if name.isalpha() and len(name) <= 40 else "other"


class PrometheusMetrics:
    """One application's metrics: the engine's, the FHIR client's and the stores' observer, and the HTTP
    counters. The metric objects are made on first use (see the module docstring: the import must wait)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # gthread: two first requests may arrive at once
        self._registry: Any = None
        self._metrics: SimpleNamespace | None = None
        self._ruleset_version: str | None = None  # for cramp_build_info, told before the families exist
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}  # labelled()

    @property
    def families(self) -> SimpleNamespace:
        if self._metrics is None:
            with self._lock:
                if self._metrics is None:
                    from prometheus_client import CollectorRegistry

                    self._registry = CollectorRegistry(auto_describe=True)
                    families = _create_metrics(self._registry)
                    if self._ruleset_version is not None:
                        _show_build_info(families, None, self._ruleset_version)
                    self._metrics = families
        return self._metrics

    @property
    def registry(self) -> Any:
        _ = self.families  # made on first use
        return self._registry

    def labelled(self, family: str, *values: str) -> Any:
        """The family's child for these label values, looked up once per process. ``labels()`` costs ~3.6 us
        (str() of each value, a lock, a dict) and a CDS call makes about ten; every label has a small fixed
        set of values (module docstring), so the cache stays small."""
        key = (family, values)
        child = self._children.get(key)
        if child is None:  # two threads may both make it: labels() hands both the same child
            child = self._children[key] = getattr(self.families, family).labels(*values)
        return child

    # ----------------------------------------------------------------- the engine (engine/observer.py)

    def evaluation_finished(self, service_id: str, seconds: float) -> None:
        self.labelled("evaluation_seconds", service_id).observe(seconds)

    def prefetch_keys_resolved(self, service_id: str, outcomes: Mapping[str, str]) -> None:
        for key, outcome in outcomes.items():
            self.labelled("prefetch", service_id, key, outcome).inc()

    def cards_returned(self, service_id: str, cards: Sequence[tuple[str, str]]) -> None:
        for rule, indicator in cards:
            self.labelled("cards", service_id, rule, indicator).inc()

    def records_skipped(self, service_id: str, by_resource_type: Mapping[str, int]) -> None:
        for resource_type, count in by_resource_type.items():
            self.labelled("skipped_records", service_id, _resource_label(resource_type)).inc(count)

    def all_clear_refused(self, service_id: str, keys: Sequence[str]) -> None:
        for key in keys:
            self.labelled("all_clear_refused", service_id, key).inc()

    # ----------------------------------------------------------------- the FHIR client

    def fhir_read_finished(self, resource: str, seconds: float, error: str | None = None) -> None:
        """One read of ``resource`` (a type or a query) took ``seconds``; ``error`` is a short, fixed reason
        ("timeout", "http_5xx", "invalid_json", ...) when it failed."""
        label = _resource_label(resource)
        self.labelled("fetch_seconds", label, "error" if error else "ok").observe(seconds)
        if error:
            self.labelled("fetch_errors", label, error[:40]).inc()

    # ----------------------------------------------------------------- storage outages (replay, store)

    def ledger_unavailable(self, operation: str) -> None:
        self.labelled("ledger_unavailable", operation).inc()

    def replay_fallback(self, store: str) -> None:
        self.labelled("replay_fallback", store).inc()

    # ----------------------------------------------------------------- authentication, build info (web/app.py)

    def auth_rejected(self, category: str) -> None:
        """``category``: one of auth/verifier.CATEGORIES, what the 401's WWW-Authenticate names."""
        self.labelled("auth_rejections", category).inc()

    def ruleset_serving(self, version: str) -> None:
        """The rule set now serving (at start, after each reload). Safe before the families exist (in
        gunicorn's master, where prometheus_client must not be imported yet): they show it when made."""
        with self._lock:
            previous, self._ruleset_version = self._ruleset_version, version
            families = self._metrics
        if families is not None:
            _show_build_info(families, previous, version)


def _show_build_info(families: SimpleNamespace, previous: str | None, ruleset_version: str) -> None:
    from cds_service import __version__

    if previous is not None and previous != ruleset_version:
        families.build_info.labels(__version__, previous).set(0)
    families.build_info.labels(__version__, ruleset_version).set(1)


# --------------------------------------------------------------------------- HTTP side

def metrics_of(app: Flask) -> PrometheusMetrics:
    """The app's metrics, made on first ask: ``create_app`` hands them to the engine and the stores."""
    if EXTENSION not in app.extensions:
        app.extensions[EXTENSION] = PrometheusMetrics()
    return app.extensions[EXTENSION]


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


def init_app(app: Flask) -> PrometheusMetrics:
    """The app's metrics; time every request and count it by route, CDS calls also by service, hook and status."""
    metrics = metrics_of(app)

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is None or request.endpoint == "cds.metrics":
            return response
        elapsed = time.perf_counter() - started
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.labelled("http", endpoint, request.method, str(response.status_code)).inc()
        if request.endpoint == CDS_ENDPOINT and request.method == "POST":
            service, hook, status = _cds_labels(app, response.status_code)
            metrics.labelled("requests", service, hook, status).inc()
            metrics.labelled("request_seconds", service, hook).observe(elapsed)
        return response

    return metrics


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type: all workers' values under gunicorn, else this app's."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    own = metrics_of(current_app).registry  # so that a fresh process shows its (zero-valued) families
    alarms = _alarm_exposition(current_app)  # from the database, the same in every worker: not multiprocess
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + alarms, CONTENT_TYPE_LATEST
    return generate_latest(own) + alarms, CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- card rate alarms (Watch it)

def card_rate_alarms(app: Flask) -> tuple[list[tuple[str, str]], bool]:
    """The (card, measure) pairs alarming now and whether they could be computed: what /metrics exposes, from
    the same cache (the console's home page shows it)."""
    values, checked = _alarm_values(app)
    return sorted(key for key, on in values.items() if on), checked


def _alarm_values(app: Flask) -> tuple[dict[tuple[str, str], bool], bool]:
    """(card, measure) -> alarm, and whether they could be computed; cached ALARM_CACHE_SECONDS per app
    (a failure too, so that a database that is down is not waited for at every scrape)."""
    cache = app.extensions.setdefault(ALARM_EXTENSION, {"lock": threading.Lock(), "at": None, "value": ({}, False)})
    with cache["lock"]:
        if cache["at"] is not None and time.monotonic() - cache["at"] < ALARM_CACHE_SECONDS:
            return cache["value"]
        cache["value"] = _compute_alarms(app)
        cache["at"] = time.monotonic()
        return cache["value"]


def _compute_alarms(app: Flask) -> tuple[dict[tuple[str, str], bool], bool]:
    from cds_service.admin.watch import alarm_states, build_watch

    store = app.extensions.get("leg_cramp_store")
    engine = g.get("leg_cramp_engine") or app.extensions.get("leg_cramp_engine")
    if store is None:
        return {}, False
    ruleset = getattr(engine, "ruleset", None)
    try:
        report = build_watch(store, ruleset, details=False)
    except Exception as exc:  # never fail the scrape: the database may be down, locked or not migrated
        log.warning("card rate alarms not computed for /metrics", extra={"error_type": type(exc).__name__})
        return {}, False
    enabled = [card for card, s in ruleset.spec.cards.items() if s.enabled] if ruleset is not None else []
    return alarm_states(report, enabled), True


def _alarm_exposition(app: Flask) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    values, checked = _alarm_values(app)

    class AlarmCollector:
        def collect(self) -> Any:
            alarm = GaugeMetricFamily(
                "cramp_card_rate_alarm", "1: the card's weekly firing or override rate is far from its own history.",
                labels=["card", "measure"])
            for (card, measure), on in sorted(values.items()):
                alarm.add_metric([card, measure], 1.0 if on else 0.0)
            yield alarm
            yield GaugeMetricFamily("cramp_card_rate_alarm_checked",
                                    "1: the card rate alarms could be computed from the database.",
                                    value=1.0 if checked else 0.0)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AlarmCollector())
    return generate_latest(registry)


def mark_worker_dead(pid: int) -> None:
    """For gunicorn's ``child_exit`` hook: drop a dead worker's live gauges (counters are kept)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
