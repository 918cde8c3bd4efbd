"""PrometheusMetrics.labelled (web/metrics.py): each labelled child looked up once, and counted as labels() would."""

from __future__ import annotations

from prometheus_client import generate_latest

from cds_service.web.metrics import PrometheusMetrics


def test_a_child_is_looked_up_once_and_counts_like_labels():
    metrics = PrometheusMetrics()
    child = metrics.labelled("requests", "leg-cramp-patient-view", "patient-view", "200")
    assert metrics.labelled("requests", "leg-cramp-patient-view", "patient-view", "200") is child
    assert child is metrics.families.requests.labels("leg-cramp-patient-view", "patient-view", "200")
    for _ in range(3):
        metrics.prefetch_keys_resolved("leg-cramp-patient-view", {"patient": "sent", "conditions": "fetched"})
    text = generate_latest(metrics.registry).decode()
    assert 'cramp_prefetch_keys_total{key="patient",outcome="sent",service="leg-cramp-patient-view"} 3.0' in text
    assert 'cramp_prefetch_keys_total{key="conditions",outcome="fetched",service="leg-cramp-patient-view"} 3.0' in text
