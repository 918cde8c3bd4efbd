"""Patient-view with no prefetch: the service fetches everything from a FHIR server that adds 100 ms to
every call. Issue 3's target: a request finishes within 1.3x the slowest single FHIR call, not their sum.

    /work/venv/bin/python bench/bench_fetch_latency.py [--requests 20] [--delay-ms 100] [--patient FILE] [--quick]

A real HTTP server (stdlib ``ThreadingHTTPServer``) on 127.0.0.1 serves the searches the service makes
(``Patient/{id}``, ``Condition?patient=``, ``MedicationRequest?...``, ``MedicationStatement?...``,
``Observation?...``) for one Synthea patient from ../shared/data/synthea-r4, each answer held back by
``--delay-ms``. The service runs in-process (Flask test client, development mode, that server on its
allowlist with ``fhir_allow_http_loopback``); its FHIR calls are timed on the client side, in the same run.
Prints p50/p95 of the request time, the slowest single FHIR call, the sum of a request's calls, and the
ratios. One warm-up request (imports, first connections) is made first and reported apart.
``--quick``: 3 requests, a smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from cds_service.admin.population import PatientRecord, latest_record_date, read_bundle_file, searchset
from cds_service.clock import fixed_clock
from cds_service.engine.pipeline import Engine
from cds_service.fhir.client import FhirFetcher, build_session
from cds_service.settings import Settings
from cds_service.web.app import create_app

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"
SERVICE_URL = "/cds-services/leg-cramp-patient-view"
SEARCH_KEYS = {
    "Condition": "conditions",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "Observation": "observations",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_fhir_server(record: PatientRecord, delay: float) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``record``'s data as a FHIR server at ``http://127.0.0.1:<port>/fhir``, ``delay`` s per call."""
    patient = record.prefetch["patient"]
    searches = {
        kind: searchset([e["resource"] for e in (record.prefetch.get(key) or {}).get("entry", [])])
        for kind, key in SEARCH_KEYS.items()
    }
    bodies = {kind: json.dumps(bundle).encode() for kind, bundle in searches.items()}
    bodies["Patient"] = json.dumps(patient).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real FHIR server
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            time.sleep(delay)
            parts = urlsplit(self.path)
            segments = [s for s in parts.path.split("/") if s]
            query = parse_qs(parts.query)
            body: bytes | None = None
            if segments[:1] == ["fhir"] and len(segments) == 3 and segments[1] == "Patient":
                body = bodies["Patient"] if segments[2] == record.patient_id else None
            elif segments[:1] == ["fhir"] and len(segments) == 2 and segments[1] in searches:
                body = bodies[segments[1]] if query.get("patient") == [record.patient_id] else None
            status = 200 if body is not None else 404
            body = body if body is not None else b'{"resourceType":"OperationOutcome","issue":[]}'
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/fhir"


class TimedSession(requests.Session):
    """The fetcher's session, recording how long each FHIR call took (headers to body read)."""

    def __init__(self) -> None:
        super().__init__()
        template = build_session()
        self.adapters = template.adapters
        self.cookies = template.cookies
        self.auth = template.auth
        self.calls: list[float] = []
        self._lock = threading.Lock()

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        started = time.perf_counter()
        response = super().get(url, **kwargs)
        response.content  # the fetcher streams; read it here so the timing covers the body
        with self._lock:
            self.calls.append(time.perf_counter() - started)
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--patient", type=Path, default=None, help="a Synthea bundle (default: the first)")
    parser.add_argument("--quick", action="store_true", help="3 requests: a smoke run")
    args = parser.parse_args()
    count = 3 if args.quick else args.requests
    logging.disable(logging.WARNING)  # development mode warns on every request; fetches log at INFO

    path = args.patient or sorted(SYNTHEA.glob("*.json"))[0]
    record = read_bundle_file(path)
    server, base = start_fhir_server(record, args.delay_ms / 1000)
    settings = Settings(development_mode=True, fhir_server_allowlist=(base,), fhir_allow_http_loopback=True)
    session = TimedSession()
    engine = Engine.default(clock=fixed_clock(f"{latest_record_date(record)}T12:00:00Z"),
                            fetcher=FhirFetcher(settings, session=session))
    client = create_app(settings, engine=engine).test_client()

    request_times, slowest_calls, call_sums = [], [], []
    try:
        for index in range(count + 1):  # the first request warms up (imports, connections) and is not counted
            body = {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": base,
                "context": {"userId": "Practitioner/example", "patientId": record.patient_id},
            }
            session.calls.clear()
            started = time.perf_counter()
            response = client.post(SERVICE_URL, json=body)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.get_data(as_text=True)[:500]
            assert "Could not be checked" not in response.get_data(as_text=True), "a fetch failed"
            assert len(session.calls) == 5, session.calls
            if index == 0:
                warmup = elapsed
                continue
            request_times.append(elapsed)
            slowest_calls.append(max(session.calls))
            call_sums.append(sum(session.calls))
    finally:
        server.shutdown()

    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    ratios = [r / s for r, s in zip(request_times, slowest_calls)]
    slowest = max(slowest_calls)
    print(f"patient {path.name}: {count} patient-view requests, no prefetch, 5 FHIR calls each, "
          f"+{args.delay_ms:.0f} ms per call (server on {base})")
    print(f"warm-up request   {ms(warmup)} (not counted)")
    print(f"request           p50 {ms(percentile(request_times, 0.5))}  p95 {ms(percentile(request_times, 0.95))}")
    print(f"slowest FHIR call {ms(slowest)} (in the run); per request p50 {ms(percentile(slowest_calls, 0.5))}")
    print(f"sum of calls      p50 {ms(percentile(call_sums, 0.5))} per request (what a serial fetch would cost)")
    print(f"ratio request / slowest call in that request: p50 {percentile(ratios, 0.5):.2f}x  "
          f"p95 {percentile(ratios, 0.95):.2f}x  max {max(ratios):.2f}x   (target <= 1.3x)")
    print(f"ratio p95 request / slowest call in the run: {percentile(request_times, 0.95) / slowest:.2f}x")
    print(f"ratio p50 request / p50 sum of calls: {percentile(request_times, 0.5) / percentile(call_sums, 0.5):.2f}x")


if __name__ == "__main__":
    main()
