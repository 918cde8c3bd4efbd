"""Cost against chart size: 10 / 100 / 1,000 / 5,000 / 20,000 / 200,000 resources per patient.

    python bench/bench_scaling.py [--sizes 10,100,1000,5000,20000,200000] [--repeat 5] [--quick]

Each chart is synthesised from the Synthea patients' resources that the rules read (Conditions,
MedicationRequests, and Observations with the LOINC codes in the rule set), copied with fresh ids and
pointed at one patient, in the proportions the Synthea charts have. For each size, in-process:

* time per evaluation: ``parse_hook_request`` + ``Engine.run`` (prefetch, reading the chart, facts, rules,
  cards) of the parsed body, best of --repeat (the ratio adds the parse: json.loads + evaluation);
* peak memory of one evaluation (tracemalloc; up to 20,000 resources, tracing a larger one takes long);
* the baseline in the same run: ``json.loads`` of the same request body (time and peak memory), and with
  the cyclic garbage collector paused ("GC paused": past ~20,000 resources most of a parse is the
  collector walking the tree being built, a cost of the parse, not of the engine).

The start-up heap (rule set, models) is frozen out of the garbage collector first, as a gunicorn worker
does (serve/gunicorn_conf.worker_ready; --no-freeze: not). Sizes above the default CRAMP_MAX_RESOURCES
(20,000) are evaluated with the cap raised. Prints the ratio to the baseline and the cost per resource
per size, and the growth factor from one size to the next (linear cost: about 10x per 10x resources).
Targets (issue 15): 1,000 resources <= 10x ``json.loads`` of the same body; linear to 200,000 (the cost per
resource at every size from 1,000 up within 1.5x of its cost at 1,000).

Then the attack of issue 11 item 5: a Bundle of minimal Observations (``{"resourceType": "Observation"}``,
about 45 bytes each; 200,000 of them are ~9 MB, inside the 16 MiB body limit), POSTed through the Flask
test client (body read, JSON parsed, request model, cap, chart): with the default cap
(``CRAMP_MAX_RESOURCES`` 20,000) the 200,000 point must be a 413 answered in about the time of parsing
its JSON; with the cap raised (--attack-cap) every point is evaluated, and the cost per resource must stay
flat (linear). --attack-sizes 5000,10000,20000,200000 by default.
--quick: sizes 10 and 100, one repeat; attack sizes 100 and 1,000 with a cap of 500.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.web.app import create_app  # noqa: E402
from cds_service.clock import fixed_clock  # noqa: E402
from cds_service.hooks.request import parse_hook_request  # noqa: E402
from cds_service.engine.pipeline import Engine  # noqa: E402
from cds_service.admin.population import iter_bundle_files, searchset  # noqa: E402
from cds_service.settings import DEFAULT_MAX_RESOURCES, Settings  # noqa: E402

SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
PATIENT_ID = "scaling-patient"
NOW = "2021-06-15T12:00:00Z"
TARGET_RATIO_AT_1000 = 10.0
TARGET_LINEARITY = 1.5  # the cost per resource at a larger size, at most this times its cost at 1,000
MEMORY_UP_TO = 20_000


def source_resources(engine: Engine) -> dict[str, list[dict]]:
    """The Synthea resources the rules can read, by type."""
    codes = set(engine.ruleset.observation_codes)
    found: dict[str, list[dict]] = {"Condition": [], "MedicationRequest": [], "Observation": [], "Patient": []}
    for record in iter_bundle_files([SYNTHEA]):
        found["Patient"].append(record.prefetch["patient"])
        for key, value in record.prefetch.items():
            if key == "patient":
                continue
            for entry in value.get("entry", []):
                resource = entry["resource"]
                kind = resource.get("resourceType")
                if kind == "Observation" and not any(
                    (c.get("system"), c.get("code")) in codes for c in resource.get("code", {}).get("coding", [])
                ):
                    continue
                if kind in found:
                    found[kind].append(resource)
    return found


def synthesise(found: dict[str, list[dict]], size: int) -> dict:
    """A patient-view request whose prefetch holds ``size`` resources (plus the Patient)."""
    kinds = ["Condition", "MedicationRequest", "Observation"]
    total = sum(len(found[k]) for k in kinds)
    shares = {k: max(1, round(size * len(found[k]) / total)) for k in kinds}
    shares["Observation"] = size - shares["Condition"] - shares["MedicationRequest"]
    by_key = {"Condition": "conditions", "MedicationRequest": "medicationRequests", "Observation": "observations"}
    prefetch: dict = {"patient": {**copy.deepcopy(found["Patient"][0]), "id": PATIENT_ID}}
    for kind in kinds:
        resources = []
        for index in range(shares[kind]):
            resource = copy.deepcopy(found[kind][index % len(found[kind])])
            resource["id"] = f"{kind.lower()}-{index}"
            for field in ("subject", "patient"):
                if field in resource:
                    resource[field] = {"reference": f"Patient/{PATIENT_ID}"}
            resources.append(resource)
        prefetch[by_key[kind]] = searchset(resources)
    prefetch["medicationStatements"] = searchset([])
    prefetch["procedures"] = searchset([])
    return {
        "hook": "patient-view",
        "hookInstance": "00000000-0000-4000-8000-00000000000a",
        "context": {"userId": "Practitioner/bench", "patientId": PATIENT_ID},
        "prefetch": prefetch,
    }


def minimal_observations_body(count: int) -> bytes:
    """The report's body: a patient-view request whose observations Bundle holds ``count`` bare Observations."""
    patient = {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": "1960-01-01"}
    entries = [{"resource": {"resourceType": "Observation"}}] * count
    return json.dumps({
        "hook": "patient-view", "hookInstance": "00000000-0000-4000-8000-00000000000b",
        "context": {"userId": "Practitioner/bench", "patientId": PATIENT_ID},
        "prefetch": {"patient": patient, "conditions": searchset([]),
                     "observations": {"resourceType": "Bundle", "type": "searchset", "entry": entries}},
    }).encode()


def attack(sizes: list[int], cap: int, raised_cap: int, repeat: int, freeze: bool = True) -> None:
    """Minimal-Observation Bundles over HTTP (Flask test client), with the cap and with it raised; with the
    startup heap frozen out of the garbage collector, as a gunicorn worker does (gunicorn_conf.worker_ready)."""
    apps = {}
    for label, max_resources in (("cap", cap), ("raised", raised_cap)):
        settings = Settings(development_mode=True, database_url="sqlite://", max_resources=max_resources,
                            max_body_bytes=256 * 2**20)
        apps[label] = create_app(settings, clock=fixed_clock(NOW)).test_client()
    logging.disable(logging.WARNING)
    if freeze:
        gc.collect()
        gc.freeze()
    print(f"\nminimal Observations over HTTP (cap {cap:,}; raised {raised_cap:,}; startup heap "
          f"{'frozen' if freeze else 'not frozen'}); times best of {repeat}")
    print(f"{'run':>7} {'resources':>10} {'MiB':>6} {'status':>6} {'time':>10} {'json.loads':>11} {'ratio':>6} "
          f"{'us/resource':>11}")
    for label, client in apps.items():
        for size in sizes:
            raw = minimal_observations_body(size)
            statuses = []

            def post() -> None:
                statuses.append(client.post("/cds-services/leg-cramp-patient-view", data=raw,
                                            content_type="application/json").status_code)

            post()  # warm: imports, caches
            loads = best_of(repeat, lambda: json.loads(raw))
            took = best_of(repeat, post)
            print(f"{label:>7} {size:>10,} {len(raw) / 2**20:6.1f} {statuses[-1]:>6} {took * 1000:7.0f} ms "
                  f"{loads * 1000:8.0f} ms {took / loads:6.1f} {took / size * 1e6:11.1f}")


def best_of(repeat: int, action) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def peak_bytes(action) -> int:
    gc.collect()
    tracemalloc.start()
    action()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000,20000,200000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 100, one repeat")
    parser.add_argument("--attack-sizes", default="5000,10000,20000,200000")
    parser.add_argument("--attack-cap", type=int, default=1_000_000, help="the raised CRAMP_MAX_RESOURCES")
    parser.add_argument("--no-freeze", action="store_true", help="without gc.freeze() of the startup heap")
    args = parser.parse_args(argv)
    sizes = [10, 100] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    logging.disable(logging.WARNING)

    engine = Engine.default(clock=fixed_clock(NOW), max_resources=max(DEFAULT_MAX_RESOURCES, *sizes) + 1)
    service = engine.registry.get("leg-cramp-patient-view")
    found = source_resources(engine)
    if not args.no_freeze:
        gc.collect()
        gc.freeze()

    def evaluate(body: dict) -> None:
        engine.run(service, parse_hook_request(body))

    def loads_gc_paused(raw: bytes) -> None:
        gc.disable()
        try:
            json.loads(raw)
        finally:
            gc.enable()

    print(f"{'resources':>9} {'KiB':>7} {'json.loads':>11} {'GC paused':>10} {'evaluation':>11} {'ratio':>6} "
          f"{'us/resource':>11} {'peak MiB':>9} {'loads MiB':>9} {'growth':>7}")
    previous = None
    rows = []
    for size in sizes:
        raw = json.dumps(synthesise(found, size)).encode()
        body = json.loads(raw)
        evaluate(body)  # warm: imports, caches
        runs = repeat if size <= MEMORY_UP_TO else min(repeat, 2)
        loads = best_of(runs * 3, lambda: json.loads(raw))
        paused = best_of(runs * 3, lambda: loads_gc_paused(raw))
        took = best_of(runs, lambda: evaluate(body))  # the engine alone: the body is parsed once, above
        total = loads + took
        if size <= MEMORY_UP_TO:
            peak = peak_bytes(lambda: evaluate(json.loads(raw)))
            memory = f"{peak / 2**20:9.1f} {peak_bytes(lambda: json.loads(raw)) / 2**20:9.1f}"
        else:
            memory = f"{'-':>9} {'-':>9}"
        growth = f"{took / previous[1]:.1f}x/{size / previous[0]:.0f}x" if previous else "-"
        print(f"{size:9d} {len(raw) / 1024:7.0f} {loads * 1000:8.2f} ms {paused * 1000:7.2f} ms {took * 1000:8.2f} ms "
              f"{total / loads:6.1f} {took / size * 1e6:11.1f} {memory} {growth:>7}", flush=True)
        rows.append((size, took, loads))
        previous = (size, took)
        del raw, body
    by_size = {size: (took, loads) for size, took, loads in rows}
    if 1000 in by_size:
        took, loads = by_size[1000]
        ratio = (loads + took) / loads
        print(f"1,000 resources: json.loads + evaluation {(loads + took) * 1000:.1f} ms, {ratio:.1f}x json.loads of "
              f"the same body (target <= {TARGET_RATIO_AT_1000:.0f}x)  {'OK' if ratio <= TARGET_RATIO_AT_1000 else 'MISSED'}")
        per_1000 = took / 1000
        larger = [(size, took / size) for size, took, _ in rows if size > 1000]
        if larger:
            worst_size, worst = max(larger, key=lambda row: row[1])
            print(f"linear: evaluation per resource {per_1000 * 1e6:.1f} us at 1,000, at most {worst * 1e6:.1f} us up "
                  f"to {max(size for size, _ in larger):,} ({worst / per_1000:.2f}x, at {worst_size:,}; target <= "
                  f"{TARGET_LINEARITY}x)  {'OK' if worst / per_1000 <= TARGET_LINEARITY else 'MISSED'}")
    if len(rows) >= 2:
        (s0, t0, _), (s1, t1, _) = rows[-2], rows[-1]
        print(f"growth {s0} -> {s1}: evaluation x{t1 / t0:.1f} for resources x{s1 / s0:.0f} "
              f"(per resource: {t0 / s0 * 1e6:.0f} us -> {t1 / s1 * 1e6:.0f} us)")
    if args.quick:
        attack([100, 1000], cap=500, raised_cap=args.attack_cap, repeat=1)
    else:
        attack([int(s) for s in args.attack_sizes.split(",")], cap=DEFAULT_MAX_RESOURCES,
               raised_cap=args.attack_cap, repeat=min(repeat, 3), freeze=not args.no_freeze)
    return 0


if __name__ == "__main__":
    sys.exit(main())
