"""A hanging FHIR server must not starve requests that carry their prefetch (issue 11 item 10).

    python bench/bench_hanging_fhir.py [--requests 40] [--hanging 8] [--workers N] [--threads N] [--quick]

Starts, on 127.0.0.1, a FHIR server that drip-feeds every answer (headers at once, then one byte every
100 ms, for ever) and the service under real gunicorn (``cramp-cds serve --dev``, cds_service/serve/gunicorn_conf.py
defaults unless --workers / --threads; that server on its allowlist, ``CRAMP_FHIR_DEADLINE_SECONDS`` 3 s).

1. alone: ``--requests`` patient-view requests with full prefetch (Synthea patients), one at a time: p50/p95/max;
2. hanging: the same (for at least two deadlines) while ``--hanging`` clients keep a no-prefetch request each
   in flight against the dripping server (each waits for the deadline, gets its 412, and sends the next):
   p50/p95/max, and the ratio of
   the p50s (target: about 1, at most 2: the hanging requests hold threads, not the whole service).
3. the service's threads and open TCP connections per worker after the hanging clients stop: the fetch
   threads abandoned at each deadline have ended and their sockets are closed.

--quick: a ~15 s smoke run (fewer requests, 1 s deadline). Exit status 1 when a full-prefetch request failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile, start_server, synthea_bodies  # noqa: E402

DRIP_SECONDS = 0.1
TARGET_RATIO = 2.0


class DrippingFhir:
    """Every GET: 200 and headers at once, then one byte of body every DRIP_SECONDS until stopped."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        stopping = self.stopping

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(10**7))
                self.end_headers()
                try:
                    while not stopping.wait(DRIP_SECONDS):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:
                    pass  # the service closed it: its deadline
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def post(port: int, path: str, body: bytes, timeout: float = 60.0) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def no_prefetch_body(fhir_server: str, index: int) -> bytes:
    return json.dumps({
        "hook": "patient-view", "hookInstance": f"hanging-{index}",
        "context": {"userId": "Practitioner/example", "patientId": f"hang-{index}"},
        "fhirServer": fhir_server,
    }).encode()


def timed(port: int, path: str, bodies: list[bytes], count: int, at_least: float = 0.0) -> tuple[list[float], int]:
    """``count`` requests one after another, and more until ``at_least`` seconds have passed."""
    latencies, failures = [], 0
    until = time.monotonic() + at_least
    while len(latencies) < count or time.monotonic() < until:
        status, seconds = post(port, path, bodies[len(latencies) % len(bodies)])
        latencies.append(seconds)
        failures += status != 200
    return latencies, failures


def figures(latencies: list[float]) -> str:
    return (f"p50 {percentile(latencies, 0.5) * 1000:8.1f} ms   p95 {percentile(latencies, 0.95) * 1000:8.1f} ms"
            f"   max {max(latencies) * 1000:8.1f} ms")


def threads_and_sockets(pid: int) -> tuple[int, int]:
    """(threads, open TCP sockets) of one process, from /proc."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return threads, sockets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="full-prefetch requests per phase [40]")
    parser.add_argument("--hanging", type=int, default=8, help="clients hanging on the dripping server [8]")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers [gunicorn_conf]")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker [gunicorn_conf]")
    parser.add_argument("--deadline", type=float, default=3.0, help="CRAMP_FHIR_DEADLINE_SECONDS [3]")
    parser.add_argument("--quick", action="store_true", help="a ~15 s smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.deadline = 10, 1.0

    bodies = synthea_bodies(limit=8 if args.quick else None)
    fhir = DrippingFhir()
    env = {"CRAMP_FHIR_ALLOWLIST": fhir.base_url, "CRAMP_FHIR_ALLOW_HTTP_LOOPBACK": "true",
           "CRAMP_FHIR_DEADLINE_SECONDS": str(args.deadline)}
    service = start_server("service", workers=args.workers, threads=args.threads, extra_env=env)
    failed = False
    try:
        from cds_service.serve import gunicorn_conf

        conf = gunicorn_conf.build()
        workers = service.worker_pids()
        print(f"service: {len(workers)} {conf['worker_class']} workers x {args.threads or conf['threads']} thread(s); "
              f"FHIR deadline {args.deadline:g} s; dripping server: 1 byte / {DRIP_SECONDS * 1000:.0f} ms; "
              f"{len(bodies)} Synthea bodies")
        timed(service.port, service.path, bodies, len(bodies))  # warm-up: every worker imports what it needs

        alone, failures = timed(service.port, service.path, bodies, args.requests)
        failed |= failures > 0
        print(f"1. alone:            {figures(alone)}   failures {failures}")

        stop = threading.Event()
        hung: list[int] = []

        def hang(index: int) -> None:
            while not stop.is_set():
                status, _ = post(service.port, service.path, no_prefetch_body(fhir.base_url, index))
                hung.append(status)

        clients = [threading.Thread(target=hang, args=(i,), daemon=True) for i in range(args.hanging)]
        for client in clients:
            client.start()
        time.sleep(min(1.0, args.deadline / 2))  # every hanging request is in flight
        during, failures = timed(service.port, service.path, bodies, args.requests, at_least=2 * args.deadline)
        failed |= failures > 0
        print(f"2. {args.hanging} hanging:        {figures(during)}   failures {failures}   requests {len(during)}"
              f"   (hanging requests answered: {len(hung)}, {sorted(set(hung))})")
        ratio = percentile(during, 0.5) / percentile(alone, 0.5)
        print(f"   ratio p50 hanging / alone: {ratio:.2f}  (target <= {TARGET_RATIO:g})"
              f"  {'OK' if ratio <= TARGET_RATIO else 'MISSED'}")

        stop.set()
        for client in clients:
            client.join(timeout=args.deadline * 3 + 30)
        time.sleep(0.5)
        counts = [threads_and_sockets(pid) for pid in workers if os.path.isdir(f"/proc/{pid}")]
        print("3. after the hanging clients stopped, per worker: "
              + ", ".join(f"{t} threads / {s} sockets" for t, s in counts))
    finally:
        code = service.stop()
        fhir.stop()
        if code != 0:
            print(f"service exited with {code}; log: {service.log_path}", file=sys.stderr)
            failed = True
    if failed:
        print("FAILED: a full-prefetch request failed, or the server did not stop cleanly", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
