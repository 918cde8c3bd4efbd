"""In-process time per patient-view request over the shared Synthea patients.

    python bench/bench_patient_view.py [--rounds 20] [--quick]

Each round sends every patient once through the Flask test client (full HTTP handling: JSON parsing,
validation with fhir.resources, facts, rules, cards, response serialisation), with the clock at the
data's last date. The baseline, measured in the same process on the same bodies, is ``json.loads`` of
the request body plus ``json.dumps`` of a fixed card: the floor any JSON service pays. Prints p50 / p99
per request and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from cds_service.admin.population import iter_bundle_files, latest_record_date
from cds_service.clock import fixed_clock
from cds_service.settings import Settings
from cds_service.web.app import create_app

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"
FIXED_CARD = {"cards": [{"summary": "baseline", "indicator": "info", "source": {"label": "bench"}}]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one round: a smoke run")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    logging.disable(logging.WARNING)  # development mode warns on every request

    records = list(iter_bundle_files([SYNTHEA]))
    as_of = max(latest_record_date(r) for r in records)
    bodies = [json.dumps(r.hook_request()).encode() for r in records]
    client = create_app(Settings(development_mode=True), clock=fixed_clock(f"{as_of}T12:00:00Z")).test_client()

    service, baseline = [], []
    for _ in range(rounds):
        for body in bodies:
            started = time.perf_counter()
            response = client.post("/cds-services/leg-cramp-patient-view", data=body, content_type="application/json")
            service.append(time.perf_counter() - started)
            assert response.status_code == 200, response.get_data(as_text=True)
            started = time.perf_counter()
            json.loads(body)
            json.dumps(FIXED_CARD)
            baseline.append(time.perf_counter() - started)

    def ms(value: float) -> str:
        return f"{value * 1000:.2f} ms"

    print(f"patients {len(bodies)} x rounds {rounds} = {len(service)} requests; mean body {statistics.mean(map(len, bodies)) / 1024:.0f} KiB")
    print(f"service  p50 {ms(percentile(service, 0.5))}  p99 {ms(percentile(service, 0.99))}")
    print(f"baseline p50 {ms(percentile(baseline, 0.5))}  p99 {ms(percentile(baseline, 0.99))}  (json.loads + dumps)")
    print(f"ratio p50 {percentile(service, 0.5) / percentile(baseline, 0.5):.1f}x")


if __name__ == "__main__":
    main()
