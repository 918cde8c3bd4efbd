"""Load on loopback: the gunicorn-served service, on the development and the production paths, against a
baseline app on the same stack, in one run.

    python bench/bench_load.py [--duration 20] [--paced-duration 20] [--connections 16] [--workers N]
                               [--threads N] [--paths dev,sqlite,redis[,postgres]] [--body full|discovery]
                               [--runs 1] [--quick]

Starts, on 127.0.0.1, the baseline (bench/baseline_app.py: the same gunicorn settings, a Flask view that only
parses the body with the same JSON library and returns a fixed card) and, one after the other, the service
(``cramp-cds serve``: gunicorn with cds_service/serve/gunicorn_conf.py, its defaults or CRAMP_WORKERS /
CRAMP_THREADS / CRAMP_WORKER_CLASS / CRAMP_KEEPALIVE from the environment, unless --workers / --threads) on
each path of --paths:

- ``dev``: development mode (``--dev``: no authentication, a warning per request);
- ``sqlite``, ``postgres``, ``redis``: the production path: no --dev, every request signed (ES384 client
  JWT, a fresh jti each, made ahead with auth/client_keys.py, so signing is not timed), the replay check on
  the card store's database (SQLite file; PostgreSQL on 127.0.0.1:5432, a fresh database dropped after)
  or on Redis (127.0.0.1:6379), production logging (JSON lines, one ``hook answered`` per request).

All get patient-view requests built from the 31 Synthea patients, round robin: ``--body full`` (default)
every resource of each type the prefetch holds (~150 KiB mean), ``--body discovery`` what an EHR sends after
reading our discovery (Observations of the codes we ask for, active MedicationRequests; ~29 KiB mean).
Per path:

1. Maximum throughput: ``wrk`` (closed loop, --connections connections, one wrk thread): requests/s and
   p50 / p95 / p99; the ratio service / baseline, the baseline's wrk run made just before the path's (so
   both see the same machine: other work on a shared machine swings absolute figures 2-5x); and the
   workers' CPU a request answered (``/proc``), the service's against the baseline's.
2. Half that path's maximum, paced (open loop, fixed inter-arrival times, latency counted from each
   request's due time), against the service and then the baseline at the same rate: p50 / p95 / p99, the
   p99 ratio (targets: service p99 <= 2x the baseline's and < 50 ms).
3. The RSS of each service worker at the end (target: none above 250 MB).

A table at the end shows every path's throughput and paced p99 ratios beside each other; with ``--runs N``
the whole sequence runs N times, alternating the paths, and the table gives min / median / max of each
figure over the runs (with the load average at each run's start).
--quick: a smoke run (1 s phases, fewer patients). Exit status 1 when a request failed.
Needs ``wrk`` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ProductionPath, have_wrk, paced_load, postgres_database, rss_mib, run_wrk, start_server, synthea_bodies,
    synthea_discovery_bodies, warm_up, write_bodies,
)

PATHS = ("dev", "sqlite", "postgres", "redis")
TARGET_RATIOS = {"discovery": 0.3, "full": 0.5}  # throughput, service / baseline (issue 15 item 2)
TARGET_P99_MS = 50.0
TARGET_P99_RATIO = 2.0
TARGET_RSS_MB = 250.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.2f} ms"


def _line(name: str, figures: dict) -> str:
    return (f"   {name:14s} {figures['rps']:8.1f} req/s   p50 {figures['p50_us'] / 1000:6.2f} ms"
            f"   p95 {figures['p95_us'] / 1000:6.2f} ms   p99 {figures['p99_us'] / 1000:6.2f} ms"
            f"   errors {figures['errors']}   worker CPU {figures['cpu_ms']:.2f} ms/request")


def measure_path(path: str, production: ProductionPath | None, args, bodies, body_paths, baseline,
                 baseline_peak: dict, expected_rps: float) -> tuple[dict, bool]:
    """One service path against the baseline: its max throughput, then paced at half of it (both)."""
    failed = False
    service = start_server("service", workers=args.workers, threads=args.threads, production=production)
    service.name = f"service {path}"
    try:
        warm_up(service, bodies, rounds=1 if args.quick else 3, production=production)
        print(f"\n== {service.name}")
        # Made ahead, twice the fastest path so far: past the last one, requests are 401s (counted as errors).
        tokens = production.tokens(service, int(expected_rps * 2 * args.duration) + 200) if production else None
        figures = run_wrk(service, body_paths, duration=args.duration, connections=args.connections, tokens=tokens)
        failed |= figures["errors"] > 0
        print(f"1. maximum throughput (wrk, {args.duration:.0f} s)")
        print(_line(service.name, figures))
        print(_line("baseline", baseline_peak))
        ratio = figures["rps"] / baseline_peak["rps"]
        target = TARGET_RATIOS[args.body]
        print(f"   ratio service / baseline throughput: {ratio:.2f}  (target >= {target})"
              f"  {'OK' if ratio >= target else 'MISSED'}")
        cpu_ratio = figures["cpu_ms"] / baseline_peak["cpu_ms"] if baseline_peak["cpu_ms"] else float("nan")
        print(f"   worker CPU a request, service / baseline: {cpu_ratio:.1f}x")

        rate = figures["rps"] / 2
        print(f"2. paced at half its maximum: {rate:.1f} req/s, {args.paced_duration:.0f} s each "
              "(latency from each request's due time)")
        paced = {}
        for server in (service, baseline):
            tokens = production.tokens(server, int(rate * args.paced_duration) + 1) \
                if production and server is service else None
            result = paced_load(server, bodies, rate=rate, duration=args.paced_duration, tokens=tokens)
            paced[server.name] = result
            failed |= result.errors > 0
            print(f"   {server.name:14s} sent {result.sent:6d}   p50 {ms(result.p(0.5))}   p95 {ms(result.p(0.95))}"
                  f"   p99 {ms(result.p(0.99))}   errors {result.errors} {result.error_kinds or ''}")
        p99 = paced[service.name].p(0.99) * 1000
        p99_ratio = p99 / (paced["baseline"].p(0.99) * 1000)
        print(f"   service p99 {p99:.2f} ms  (target < {TARGET_P99_MS:.0f} ms)"
              f"  {'OK' if p99 < TARGET_P99_MS else 'MISSED'}; p99 ratio service / baseline {p99_ratio:.2f}"
              f"  (target <= {TARGET_P99_RATIO:.0f})  {'OK' if p99_ratio <= TARGET_P99_RATIO else 'MISSED'}")

        rss = [r for r in (rss_mib(pid) for pid in service.worker_pids()) if r is not None]
        print(f"3. service worker RSS: {', '.join(f'{r:.0f}' for r in rss)} MiB; max {max(rss):.0f} MiB"
              f"  (target <= {TARGET_RSS_MB:.0f} MB)  {'OK' if max(rss) * 1.048576 <= TARGET_RSS_MB else 'MISSED'}")
        row = {"path": path, "rps": figures["rps"], "ratio": ratio, "rate": rate, "p99": p99,
               "baseline_p99": paced["baseline"].p(0.99) * 1000, "p99_ratio": p99_ratio,
               "cpu_ms": figures["cpu_ms"], "cpu_ratio": cpu_ratio}
    finally:
        code = service.stop()
        if code != 0:
            print(f"{service.name} exited with {code}; log: {service.log_path}", file=sys.stderr)
            failed = True
    return row, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each wrk run [20]")
    parser.add_argument("--paced-duration", type=float, default=20.0, help="seconds of each paced run [20]")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections [16]")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers [gunicorn_conf: cores + 1]")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker [gunicorn_conf]")
    parser.add_argument("--paths", default="dev,sqlite,redis",
                        help=f"service paths to measure, comma-separated, of {', '.join(PATHS)} [dev,sqlite,redis]")
    parser.add_argument("--body", choices=("full", "discovery"), default="full",
                        help="what each request's prefetch holds [full]")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole sequence this many times, paths alternating; min/median/max [1]")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := [p for p in paths if p not in PATHS]:
        parser.error(f"--paths: unknown {', '.join(unknown)} (expected {', '.join(PATHS)})")
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if args.quick:
        args.duration, args.paced_duration = 1.0, 1.0
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2

    bodies = (synthea_discovery_bodies if args.body == "discovery" else synthea_bodies)(limit=8 if args.quick else None)
    body_paths = write_bodies(bodies, Path(tempfile.mkdtemp(prefix="cramp-bench-bodies-")))
    mean_kib = sum(map(len, bodies)) / len(bodies) / 1024
    failed = False
    runs: list[list[dict]] = []
    baseline = start_server("baseline", workers=args.workers, threads=args.threads)
    try:
        from cds_service.serve import gunicorn_conf  # the settings both servers start with (same environment)

        conf = gunicorn_conf.build()
        print(f"{args.body} bodies: {len(bodies)} Synthea patients, mean {mean_kib:.0f} KiB; gunicorn per server: "
              f"{len(baseline.worker_pids())} {conf['worker_class']} workers x {args.threads or conf['threads']} "
              f"thread(s), keepalive {conf['keepalive']} s, max_requests {conf['max_requests']}; "
              f"wrk -c{args.connections} -t1; load average {os.getloadavg()[0]:.2f}")
        warm_up(baseline, bodies, rounds=1 if args.quick else 3)
        expected_rps = 0.0  # tokens to make for a production wrk run: from the fastest run so far
        for run in range(args.runs):
            order = paths if run % 2 == 0 else paths[::-1]  # alternate, so no path always runs first
            if args.runs > 1:
                print(f"\n#### run {run + 1} of {args.runs} ({', '.join(order)}); load average {os.getloadavg()[0]:.2f}")
            rows = []
            for path in order:
                # The baseline's maximum just before each path: the ratio compares two neighbouring runs.
                baseline_peak = run_wrk(baseline, body_paths, duration=args.duration, connections=args.connections)
                failed |= baseline_peak["errors"] > 0
                expected_rps = max(expected_rps, baseline_peak["rps"] / 4)
                with _production(path) as production:
                    row, path_failed = measure_path(path, production, args, bodies, body_paths, baseline,
                                                    baseline_peak, expected_rps)
                failed |= path_failed
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                expected_rps = max(expected_rps, row["rps"])
            runs.append(sorted(rows, key=lambda row: paths.index(row["path"])))
    finally:
        if baseline.stop() != 0:
            print(f"baseline exited with an error; log: {baseline.log_path}", file=sys.stderr)
            failed = True

    _print_summary(runs, args.body)
    if failed:
        print("FAILED: some requests failed", file=sys.stderr)
    return 1 if failed else 0


def _print_summary(runs: list[list[dict]], body: str) -> None:
    """One row per path: the figure of a single run, or min / median / max over --runs runs."""
    loads = [row["load"] for rows in runs for row in rows]
    print(f"\nsummary ({len(runs)} run(s); load average {min(loads):.2f}-{max(loads):.2f}; targets: throughput "
          f"ratio >= {TARGET_RATIOS[body]}, p99 < {TARGET_P99_MS:.0f} ms and p99 ratio <= {TARGET_P99_RATIO:.0f})")
    if len(runs) == 1:
        print(f"   {'path':10s} {'req/s':>8s} {'ratio':>6s} {'paced at':>9s} {'p99':>9s} {'baseline p99':>13s} {'p99 ratio':>9s}"
              f" {'CPU/req':>10s} {'CPU ratio':>9s}")
        for row in runs[0]:
            print(f"   {row['path']:10s} {row['rps']:8.1f} {row['ratio']:6.2f} {row['rate']:7.1f}/s {row['p99']:6.2f} ms"
                  f" {row['baseline_p99']:10.2f} ms {row['p99_ratio']:9.2f} {row['cpu_ms']:7.2f} ms {row['cpu_ratio']:8.1f}x")
        return
    print("   path: min / median / max over the runs")
    for index, first in enumerate(runs[0]):
        rows = [rows[index] for rows in runs]

        def spread(key: str, fmt: str) -> str:
            values = sorted(row[key] for row in rows)
            return " / ".join(format(v, fmt) for v in (values[0], statistics.median(values), values[-1]))

        print(f"   {first['path']:10s} req/s {spread('rps', '.0f')}; ratio {spread('ratio', '.2f')}; "
              f"p99 {spread('p99', '.1f')} ms vs baseline {spread('baseline_p99', '.1f')} ms; "
              f"p99 ratio {spread('p99_ratio', '.2f')}; worker CPU {spread('cpu_ms', '.2f')} ms a request, "
              f"{spread('cpu_ratio', '.1f')}x the baseline's")


@contextmanager
def _production(path: str):
    if path == "dev":
        yield None
    elif path == "postgres":
        with postgres_database() as url:
            yield ProductionPath(replay="database", database_url=url)
    else:
        yield ProductionPath(replay=path if path == "redis" else "database")


if __name__ == "__main__":
    sys.exit(main())
