"""Cost against chart size: 10 / 100 / 1,000 / 5,000 resources per patient.

    python bench/bench_scaling.py [--sizes 10,100,1000,5000] [--repeat 5] [--quick]

Each chart is synthesised from the Synthea patients' resources that the rules read (Conditions,
MedicationRequests, and Observations with the LOINC codes in the rule set), copied with fresh ids and
pointed at one patient, in the proportions the Synthea charts have. For each size, in-process:

* time per evaluation: ``parse_hook_request`` + ``Engine.run`` (prefetch, validation, facts, rules,
  cards), best of --repeat;
* peak memory of one evaluation (tracemalloc);
* the baseline in the same run: ``json.loads`` of the same request body (time and peak memory).

Prints the ratio to the baseline per size and the growth factor from one size to the next (linear
cost: about 10x per 10x resources). Target: 1,000 resources in under 100 ms.

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
TARGET_MS_AT_1000 = 100.0


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
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 100, one repeat")
    parser.add_argument("--attack-sizes", default="5000,10000,20000,200000")
    parser.add_argument("--attack-cap", type=int, default=1_000_000, help="the raised CRAMP_MAX_RESOURCES")
    parser.add_argument("--no-freeze", action="store_true", help="attack without gc.freeze() of the startup heap")
    args = parser.parse_args(argv)
    sizes = [10, 100] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    logging.disable(logging.WARNING)

    engine = Engine.default(clock=fixed_clock(NOW))
    service = engine.registry.get("leg-cramp-patient-view")
    found = source_resources(engine)

    def evaluate(raw: bytes) -> None:
        engine.run(service, parse_hook_request(json.loads(raw)))

    print(f"{'resources':>9} {'KiB':>7} {'evaluation':>11} {'json.loads':>11} {'ratio':>6} "
          f"{'peak MiB':>9} {'loads MiB':>9} {'growth':>7}")
    previous = None
    rows = []
    for size in sizes:
        raw = json.dumps(synthesise(found, size)).encode()
        evaluate(raw)  # warm: imports, caches
        loads = best_of(repeat * 3, lambda: json.loads(raw))
        total = best_of(repeat, lambda: evaluate(raw))
        peak = peak_bytes(lambda: evaluate(raw))
        loads_peak = peak_bytes(lambda: json.loads(raw))
        growth = f"{total / previous[1]:.1f}x/{size / previous[0]:.0f}x" if previous else "-"
        print(f"{size:9d} {len(raw) / 1024:7.0f} {total * 1000:8.2f} ms {loads * 1000:8.2f} ms {total / loads:6.1f} "
              f"{peak / 2**20:9.1f} {loads_peak / 2**20:9.1f} {growth:>7}")
        rows.append((size, total))
        previous = (size, total)
    at_1000 = dict(rows).get(1000)
    if at_1000 is not None:
        print(f"1,000 resources: {at_1000 * 1000:.1f} ms (target < {TARGET_MS_AT_1000:.0f} ms)"
              f"  {'OK' if at_1000 * 1000 < TARGET_MS_AT_1000 else 'MISSED'}")
    if len(rows) >= 2:
        (s0, t0), (s1, t1) = rows[-2], rows[-1]
        print(f"growth {s0} -> {s1}: cost x{t1 / t0:.1f} for resources x{s1 / s0:.0f} "
              f"(per resource: {t0 / s0 * 1e6:.0f} us -> {t1 / s1 * 1e6:.0f} us)")
    if args.quick:
        attack([100, 1000], cap=500, raised_cap=args.attack_cap, repeat=1)
    else:
        attack([int(s) for s in args.attack_sizes.split(",")], cap=DEFAULT_MAX_RESOURCES,
               raised_cap=args.attack_cap, repeat=min(repeat, 3), freeze=not args.no_freeze)
    return 0


if __name__ == "__main__":
    sys.exit(main())
