"""Load on loopback: the gunicorn-served service against a baseline app on the same stack.

    python bench/bench_load.py [--duration 20] [--connections 16] [--workers N] [--threads N] [--quick]

Starts, on 127.0.0.1, the service (``cramp-cds serve --dev``: gunicorn with cds_service/serve/gunicorn_conf.py,
its defaults or CRAMP_WORKERS / CRAMP_THREADS / CRAMP_WORKER_CLASS / CRAMP_KEEPALIVE from the environment,
unless --workers / --threads) and the baseline (bench/baseline_app.py: the same gunicorn
settings, a Flask view that only parses the body with the same JSON library and returns a fixed card).
Both get patient-view requests with full prefetch built from the 31 Synthea patients, round robin.

1. Maximum throughput: ``wrk`` (closed loop, --connections connections, one wrk thread) against each:
   requests/s and p50 / p95 / p99; the ratio service / baseline (target >= 0.25).
2. Half the service's maximum throughput, paced (open loop, fixed inter-arrival times, latency counted
   from each request's due time), against each: p50 / p95 / p99 (target: service p99 < 50 ms).
3. The RSS of each service worker at the end (target: none above 250 MB).

--quick: a ~5 s smoke run (short phases, fewer patients). Exit status 1 when a request failed.
Needs ``wrk`` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    have_wrk, paced_load, rss_mib, run_wrk, start_server, synthea_bodies, warm_up, write_bodies,
)

TARGET_RATIO = 0.25
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 250.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each wrk run [20]")
    parser.add_argument("--paced-duration", type=float, default=20.0, help="seconds of each paced run [20]")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections [16]")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers [gunicorn_conf: cores + 1]")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker [gunicorn_conf]")
    parser.add_argument("--quick", action="store_true", help="a ~5 s smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.paced_duration = 1.0, 1.0
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2

    bodies = synthea_bodies(limit=8 if args.quick else None)
    body_paths = write_bodies(bodies, Path(tempfile.mkdtemp(prefix="cramp-bench-bodies-")))
    mean_kib = sum(map(len, bodies)) / len(bodies) / 1024
    servers = []
    failed = False
    try:
        service = start_server("service", workers=args.workers, threads=args.threads)
        servers.append(service)
        baseline = start_server("baseline", workers=args.workers, threads=args.threads)
        servers.append(baseline)
        workers = len(service.worker_pids())
        from cds_service.serve import gunicorn_conf  # the settings both servers start with (same environment)

        conf = gunicorn_conf.build()
        threads = args.threads or conf["threads"]
        print(f"bodies: {len(bodies)} Synthea patients, mean {mean_kib:.0f} KiB; gunicorn per server: "
              f"{workers} {conf['worker_class']} workers x {threads} thread(s), keepalive {conf['keepalive']} s, "
              f"max_requests {conf['max_requests']}; wrk -c{args.connections} -t1")
        for server in (service, baseline):
            warm_up(server, bodies, rounds=1 if args.quick else 3)

        print(f"\n1. maximum throughput (wrk, {args.duration:.0f} s each)")
        peak = {}
        for server in (service, baseline):
            figures = run_wrk(server, body_paths, duration=args.duration, connections=args.connections)
            peak[server.name] = figures
            failed |= figures["errors"] > 0
            print(f"   {server.name:8s} {figures['rps']:8.1f} req/s   p50 {figures['p50_us'] / 1000:6.2f} ms"
                  f"   p95 {figures['p95_us'] / 1000:6.2f} ms   p99 {figures['p99_us'] / 1000:6.2f} ms"
                  f"   errors {figures['errors']}")
        ratio = peak["service"]["rps"] / peak["baseline"]["rps"]
        print(f"   ratio service / baseline throughput: {ratio:.2f}  (target >= {TARGET_RATIO})"
              f"  {'OK' if ratio >= TARGET_RATIO else 'MISSED'}")

        rate = peak["service"]["rps"] / 2
        print(f"\n2. paced at half the service's maximum: {rate:.1f} req/s, {args.paced_duration:.0f} s each "
              "(latency from each request's due time)")
        paced = {}
        for server in (service, baseline):
            result = paced_load(server, bodies, rate=rate, duration=args.paced_duration)
            paced[server.name] = result
            failed |= result.errors > 0
            print(f"   {server.name:8s} sent {result.sent:6d}   p50 {ms(result.p(0.5))}   p95 {ms(result.p(0.95))}"
                  f"   p99 {ms(result.p(0.99))}   errors {result.errors} {result.error_kinds or ''}")
        p99_ms = paced["service"].p(0.99) * 1000
        print(f"   service p99 {p99_ms:.2f} ms  (target < {TARGET_P99_MS:.0f} ms)"
              f"  {'OK' if p99_ms < TARGET_P99_MS else 'MISSED'}")

        rss = [rss_mib(pid) for pid in service.worker_pids()]
        rss = [r for r in rss if r is not None]
        print(f"\n3. service worker RSS: {', '.join(f'{r:.0f}' for r in rss)} MiB; max {max(rss):.0f} MiB"
              f"  (target <= {TARGET_RSS_MB:.0f} MB)  {'OK' if max(rss) * 1.048576 <= TARGET_RSS_MB else 'MISSED'}")
    finally:
        for server in servers:
            code = server.stop()
            if code != 0:
                print(f"{server.name} exited with {code}; log: {server.log_path}", file=sys.stderr)
                failed = True
    if failed:
        print("FAILED: some requests failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
