"""The garbage collector in served workers: collections per 1,000 requests by generation, and their time.

    python bench/bench_gc_served.py [--paths dev,redis] [--rate 100] [--duration 30] [--workers N] [--threads N]

Starts the service (``cramp-cds serve``, gunicorn_conf defaults unless --workers / --threads; ``dev``: development
mode, ``sqlite`` / ``redis``: the production path with signed requests) with bench/gc_probe on PYTHONPATH,
which times every collection in each worker (gc.callbacks). After a warm-up, sends --rate requests a second
for --duration seconds (discovery bodies, paced) and prints, per generation, the collections per 1,000
requests, their mean and longest time, and the GC milliseconds per 1,000 requests; with the paced p50 / p99
and how many objects each worker froze at start (serve/gunicorn_conf.worker_ready). Times are wall clock:
on a loaded machine a collection is sometimes preempted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ProductionPath, paced_load, start_server, synthea_discovery_bodies, warm_up  # noqa: E402

PROBE = Path(__file__).resolve().parent / "gc_probe"


def snapshot(directory: str) -> dict[int, dict]:
    return {int(Path(p).name.split(".")[0]): json.loads(Path(p).read_text()) for p in glob.glob(f"{directory}/*.json")}


def measure(path: str, args, bodies: list[bytes]) -> None:
    probe_dir = tempfile.mkdtemp(prefix="cramp-gcprobe-")
    production = None if path == "dev" else ProductionPath(replay="redis" if path == "redis" else "database")
    env = {"PYTHONPATH": os.pathsep.join([str(PROBE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "GCPROBE_DIR": probe_dir}
    server = start_server("service", workers=args.workers, threads=args.threads, production=production, extra_env=env)
    server.name = f"service {path}"
    try:
        warm_up(server, bodies, production=production)
        time.sleep(1)
        workers = [pid for pid in server.worker_pids()
                   if b"--parent-pid" not in Path(f"/proc/{pid}/cmdline").read_bytes()]  # not the job worker
        before = snapshot(probe_dir)
        tokens = production.tokens(server, int(args.rate * args.duration) + 1) if production else None
        result = paced_load(server, bodies, rate=args.rate, duration=args.duration, tokens=tokens)
        time.sleep(1)  # the probe writes every 0.5 s
        after = snapshot(probe_dir)
        load = open("/proc/loadavg").read().split()[0]
        frozen = [after[pid]["frozen"] for pid in workers if pid in after]
        print(f"== {server.name}: {result.sent} requests at {args.rate:g}/s, errors {result.errors}; paced p50 "
              f"{result.p(0.5) * 1000:.2f} ms, p99 {result.p(0.99) * 1000:.2f} ms; frozen per worker {frozen}; load {load}")
        for generation in range(3):
            count = sum(after[p]["count"][generation] - before.get(p, after[p])["count"][generation]
                        for p in workers if p in after)
            seconds = sum(after[p]["seconds"][generation] - before.get(p, after[p])["seconds"][generation]
                          for p in workers if p in after)
            longest = max((after[p]["max"][generation] for p in workers if p in after), default=0.0)
            per_thousand = 1000 / max(1, result.sent)
            print(f"   gen {generation}: {count * per_thousand:7.1f} per 1,000 requests, mean "
                  f"{seconds / max(1, count) * 1000:6.3f} ms, GC {seconds * 1000 * per_thousand:7.1f} ms per 1,000 "
                  f"requests; longest since start {longest * 1000:.1f} ms")
    finally:
        server.stop()
        shutil.rmtree(probe_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="dev,redis")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (2 s at 50/s, dev only)")
    args = parser.parse_args(argv)
    if args.quick:
        args.paths, args.rate, args.duration = "dev", 50.0, 2.0
    bodies = synthea_discovery_bodies()
    for path in args.paths.split(","):
        measure(path, args, bodies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
