"""In-process CPU time per patient-view request over the shared Synthea patients, on the development and
the production paths, against the floor of the same stack.

    python bench/bench_patient_view.py [--rounds 20] [--paths dev,sqlite,redis] [--body discovery|full] [--quick]

Each round sends every patient once through the Flask test client (full HTTP handling: JSON parsing,
reading the chart, facts, rules, cards, response serialisation), with the clock at the data's last date.
``--body discovery`` (default): the body an EHR sends after reading our discovery (Observations of the
codes we ask for, active MedicationRequests: bench/_common.discovery_prefetch; ~29 KiB mean); ``full``:
every resource of each type the prefetch holds (~150 KiB mean). Paths: ``dev`` (development mode, its
per-request warning not logged), ``sqlite`` and ``redis``: the production path (no development mode; each
request carries a signed ES384 client JWT with a fresh jti, made ahead with auth/client_keys.py; the replay
check on the SQLite card store or on Redis at 127.0.0.1:6379; logging as in production: JSON lines at INFO,
written to /dev/null here).

The floor, measured in the same process on the same bodies, interleaved request by request: the same stack
doing the least a CDS service can do, bench/baseline_app.py (Flask, ``orjson.loads`` of the body, a fixed
card) through the same test client. Both apps' start-up heaps are frozen out of the garbage collector, as
a gunicorn worker's are (serve/gunicorn_conf.worker_ready). One untimed round per path first. Prints CPU
p50 / p99 per request per path (``time.process_time``) and the p50 ratio to the floor (target <= 4x, issue 15).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_app  # noqa: E402
from _common import discovery_prefetch  # noqa: E402

from cds_service.admin.population import iter_bundle_files, latest_record_date
from cds_service.auth import client_keys
from cds_service.clock import fixed_clock
from cds_service.engine.pipeline import Engine
from cds_service.settings import Settings
from cds_service.web.app import create_app
from cds_service.web.logs import configure_logging

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"
TARGET_RATIO = 4.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


PATHS = ("dev", "sqlite", "redis")
BASE_URL = "http://bench.example"
SERVICE = "/cds-services/leg-cramp-patient-view"
ISSUER = "https://ehr.bench.example"


def production_settings(path: str, workdir: Path, key) -> Settings:
    (workdir / "jwks.json").write_text(json.dumps(client_keys.public_jwks(key)))
    entry = client_keys.trusted_client_entry(ISSUER, algorithm="ES384", jwks_file="jwks.json")
    (workdir / "trusted-clients.yaml").write_text(yaml.safe_dump({"clients": [entry]}))
    return Settings(trusted_clients_path=workdir / "trusted-clients.yaml", public_base_urls=BASE_URL,
                    database_url=f"sqlite:///{workdir / 'cards.sqlite3'}",
                    patient_key_secret="bench-patient-key-secret-0123456789",
                    redis_url="redis://127.0.0.1:6379/0" if path == "redis" else None)


def measure(path: str, bodies: list[bytes], rounds: int, as_of: str) -> tuple[list[float], list[float]]:
    """Per-request CPU seconds of the service on ``path`` and of the floor, interleaved."""
    clock = fixed_clock(f"{as_of}T12:00:00Z")
    tokens: list[str] = []
    if path == "dev":
        logging.disable(logging.WARNING)  # development mode warns on every request
        workdir = Path(tempfile.mkdtemp(prefix="cramp-bench-pv-"))  # its card store: not ./leg-cramp-cds.sqlite3
        app = create_app(Settings(development_mode=True, database_url=f"sqlite:///{workdir / 'cards.sqlite3'}"),
                         clock=clock)
    else:
        logging.disable(logging.NOTSET)
        configure_logging("INFO")
        logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # production lines, not shown
        key = client_keys.generate_private_key("ES384")
        app = create_app(production_settings(path, Path(tempfile.mkdtemp(prefix="cramp-bench-pv-")), key))
        # Made ahead (signing is the client's cost); the JWT's iat/exp are checked against the real time.
        tokens = [client_keys.make_client_token(key, issuer=ISSUER, audience=BASE_URL + SERVICE)
                  for _ in range((rounds + 1) * len(bodies))]
    client = app.test_client()
    floor = baseline_app.create_app().test_client()
    gc.collect()
    gc.freeze()  # as each gunicorn worker does once started
    service, baseline = [], []
    warm_up = len(bodies)  # one untimed round first: imports, caches, the database's first writes
    for index in range((rounds + 1) * len(bodies)):
        body = bodies[index % len(bodies)]
        headers = {"Authorization": f"Bearer {tokens[index]}"} if tokens else {}
        started = time.process_time()
        response = client.post(SERVICE, data=body, content_type="application/json", headers=headers,
                               base_url=BASE_URL)
        service.append(time.process_time() - started)
        assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:500])
        started = time.process_time()
        response = floor.post(baseline_app.BASELINE_PATH, data=body, content_type="application/json")
        baseline.append(time.process_time() - started)
        assert response.status_code == 200
        if index < warm_up:
            service.pop(), baseline.pop()
    gc.unfreeze()
    return service, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--paths", default="dev,sqlite,redis", help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--body", choices=("discovery", "full"), default="discovery",
                        help="what each request's prefetch holds [discovery]")
    parser.add_argument("--quick", action="store_true", help="one round: a smoke run")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := [p for p in paths if p not in PATHS]:
        parser.error(f"--paths: unknown {', '.join(unknown)}")

    records = list(iter_bundle_files([SYNTHEA]))
    as_of = max(latest_record_date(r) for r in records)
    templates = Engine.default().registry.get("leg-cramp-patient-view").templates \
        if args.body == "discovery" else None
    bodies = [json.dumps({**r.hook_request(), **({"prefetch": discovery_prefetch(r.prefetch, templates)}
                                                 if templates else {})}).encode() for r in records]

    def ms(value: float) -> str:
        return f"{value * 1000:.2f} ms"

    print(f"{args.body} bodies: patients {len(bodies)} x rounds {rounds} = {rounds * len(bodies)} requests per "
          f"path; mean body {statistics.mean(map(len, bodies)) / 1024:.0f} KiB; load average {os.getloadavg()[0]:.2f}")
    for path in paths:
        service, baseline = measure(path, bodies, rounds, as_of)
        ratio = percentile(service, 0.5) / percentile(baseline, 0.5)
        print(f"{path:7s} CPU per request: service p50 {ms(percentile(service, 0.5))}  p99 "
              f"{ms(percentile(service, 0.99))}   baseline (Flask + orjson) p50 {ms(percentile(baseline, 0.5))}  p99 "
              f"{ms(percentile(baseline, 0.99))}   ratio p50 {ratio:.1f}x  (target <= {TARGET_RATIO:.0f}x)  "
              f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
