"""Soak: the gunicorn-served service at half its maximum throughput for --minutes (default 10).

    python bench/soak.py [--minutes 10] [--rate R] [--workers N] [--quick]

1. Calibration (skipped with --rate): maximum throughput of the service and, as the baseline in the
   same run, of bench/baseline_app.py, each with a short wrk run (or the paced generator's ceiling
   when wrk is missing).
2. The soak: a paced, open-loop load (fixed inter-arrival times, latency from each request's due time)
   at half the service's maximum, with the Synthea patient-view requests round robin. Every 30 s it
   prints that window's requests, errors, p50 / p99 and the RSS of each worker.
3. The end: total errors and each worker's RSS drift, last window against the first (targets: no
   error, drift under 10 %).

Workers are not recycled during a soak (CRAMP_MAX_REQUESTS=0; production recycles every ~1,000
requests), so that RSS drift shows a leak instead of a restart. --quick: 20 s, windows of 5 s.
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

TARGET_DRIFT = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=None, help="requests/s (default: half the measured max)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per report line [30]")
    parser.add_argument("--quick", action="store_true", help="20 s, 5 s windows")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.window = 20 / 60, 5.0

    bodies = synthea_bodies(limit=8 if args.quick else None)
    body_paths = write_bodies(bodies, Path(tempfile.mkdtemp(prefix="cramp-soak-bodies-")))
    servers = []
    errors = 0
    try:
        service = start_server("service", workers=args.workers, threads=args.threads,
                               extra_env={"CRAMP_MAX_REQUESTS": "0"})
        servers.append(service)
        warm_up(service, bodies, rounds=1 if args.quick else 3)
        rate = args.rate
        if rate is None:
            baseline = start_server("baseline", workers=args.workers, threads=args.threads)
            servers.append(baseline)
            warm_up(baseline, bodies, rounds=1)
            seconds = 2.0 if args.quick else 5.0
            peaks = {}
            for server in (service, baseline):
                if have_wrk():
                    peaks[server.name] = run_wrk(server, body_paths, duration=seconds, connections=16)["rps"]
                else:  # the paced generator, asked for more than the server can do, measures its ceiling
                    result = paced_load(server, bodies, rate=2000, duration=seconds)
                    peaks[server.name] = len(result.latencies) / result.duration
            baseline.stop()
            servers.remove(baseline)
            rate = peaks["service"] / 2
            print(f"calibration: service max {peaks['service']:.1f} req/s, baseline max {peaks['baseline']:.1f} "
                  f"req/s (ratio {peaks['service'] / peaks['baseline']:.2f}); soak at {rate:.1f} req/s")
        pids = service.worker_pids()
        print(f"soak: {args.minutes:g} min at {rate:.1f} req/s, {len(pids)} workers (pids {', '.join(map(str, pids))})")
        print(f"{'t (s)':>6} {'sent':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8}  worker RSS MiB")
        first_rss: dict[int, float] = {}
        last_rss: dict[int, float] = {}

        def report(index: int, window) -> None:
            rss = {pid: rss_mib(pid) for pid in service.worker_pids()}
            rss = {pid: value for pid, value in rss.items() if value is not None}
            if not first_rss:
                first_rss.update(rss)
            last_rss.clear()
            last_rss.update(rss)
            print(f"{(index + 1) * args.window:6.0f} {window.sent:6d} {window.errors:6d} "
                  f"{window.p(0.5) * 1000:8.2f} {window.p(0.99) * 1000:8.2f}  "
                  + " ".join(f"{rss[pid]:.1f}" for pid in sorted(rss)), flush=True)

        result = paced_load(service, bodies, rate=rate, duration=args.minutes * 60, on_window=report,
                            window_seconds=args.window)
        errors = result.errors
        print(f"\ntotal: {result.sent} requests, {result.errors} errors {result.error_kinds or ''}; "
              f"p50 {result.p(0.5) * 1000:.2f} ms, p99 {result.p(0.99) * 1000:.2f} ms")
        drifts = []
        for pid in sorted(first_rss):
            if pid in last_rss:
                drift = (last_rss[pid] - first_rss[pid]) / first_rss[pid] * 100
                drifts.append(drift)
                print(f"worker {pid}: RSS {first_rss[pid]:.1f} -> {last_rss[pid]:.1f} MiB, drift {drift:+.1f} %")
            else:
                print(f"worker {pid}: gone (replaced) during the soak")
                errors += 1
        worst = max(drifts, default=0.0)
        print(f"max RSS drift {worst:+.1f} % (target < {TARGET_DRIFT:.0f} %)  {'OK' if worst < TARGET_DRIFT else 'MISSED'};"
              f" errors {errors} (target 0)  {'OK' if errors == 0 else 'MISSED'}")
    finally:
        for server in servers:
            if server.stop() != 0:
                print(f"{server.name} did not exit cleanly; log: {server.log_path}", file=sys.stderr)
                errors += 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
