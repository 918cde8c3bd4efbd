"""Population dry run (``rules simulate``) over bulk NDJSON: patients per second with 1 and 2 jobs.

    python bench/bench_simulate.py [--patients 1000] [--rounds 1] [--quick]

The 31 shared Synthea bundles are replicated with fresh ids (every resource id replaced by a new UUID,
``urn:uuid:`` references made ``Type/id`` as a bulk export writes them) into one NDJSON file per resource
type, until there are ``--patients`` patients (``--quick``: 40). The simulation code as the CLI runs it
(``simulation.collect_tasks`` + ``simulation.simulate``, without the progress bar) then runs over the
folder with the bundled rule set as of 2021-03-11, with --jobs 1 and --jobs 2, ``--rounds`` times
alternating; the card counts of every run must be equal.

Baseline, from the same run: ``json.loads`` of every line of the same files in one process (the floor of
any reader that parses each resource), as patients/s. Prints min / median / max patients/s per setting,
the CPU time a patient costs in all processes (this process and the pools' workers: the figure the other
load of a shared machine changes least), the load average each round, and the target (>= 300 patients/s
with 2 jobs: a million patients in under an hour).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

from cds_service.admin.simulation import collect_tasks, simulate
from cds_service.ruleset.loader import load_default_ruleset

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"
AS_OF = date(2021, 3, 11)
TARGET_PER_SECOND = 300.0
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _templates() -> list[tuple[str, set[str]]]:
    """Each Synthea bundle as the text of its resources (``urn:uuid:`` made ``Type/id``) and its ids."""
    templates = []
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        refs = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle["entry"] if str(e.get("fullUrl", "")).startswith("urn:uuid:")}
        lines = []
        for entry in bundle["entry"]:
            text = json.dumps(entry["resource"], separators=(",", ":"))
            lines.append(text)
        text = "\n".join(lines)
        for urn, ref in refs.items():
            text = text.replace(f'"{urn}"', json.dumps(ref))
        ids = {str(e["resource"]["id"]) for e in bundle["entry"] if e["resource"].get("id")}
        assert all(_UUID.fullmatch(i) for i in ids), f"{path.name}: non-UUID resource ids"
        templates.append((text, ids))
    return templates


def replicate_ndjson(target: Path, patients: int) -> int:
    """Write ``patients`` copies of the Synthea patients, fresh ids each, as ``<Type>.ndjson`` files."""
    templates = _templates()
    handles: dict[str, object] = {}
    type_of = re.compile(r'^\{"resourceType":"([A-Za-z]+)"')
    try:
        for written in range(patients):
            text, ids = templates[written % len(templates)]
            fresh = {old: str(uuid.uuid4()) for old in ids}
            for line in _UUID.sub(lambda m: fresh.get(m.group(0), m.group(0)), text).split("\n"):
                kind = type_of.match(line).group(1)
                if kind not in handles:
                    handles[kind] = (target / f"{kind}.ndjson").open("w", encoding="utf-8")
                handles[kind].write(line + "\n")
    finally:
        for handle in handles.values():
            handle.close()
    return patients


def baseline(folder: Path) -> float:
    """Seconds to ``json.loads`` every line of the NDJSON files."""
    started = time.perf_counter()
    for path in sorted(folder.glob("*.ndjson")):
        with path.open("rb") as handle:
            for line in handle:
                json.loads(line)
    return time.perf_counter() - started


def _cpu_seconds() -> float:
    """CPU time of this process and of its ended children (the pools' workers, joined at shutdown)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(folder: Path, jobs: int) -> tuple[float, float, dict[str, int], int]:
    """Wall and CPU seconds of the run as the CLI does it (locate the patients, then evaluate them)."""
    ruleset = load_default_ruleset()
    started, cpu = time.perf_counter(), _cpu_seconds()
    tasks = collect_tasks([str(folder)], [], jobs)
    simulation = simulate([None], [ruleset], tasks, AS_OF, jobs)
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    assert not simulation.errors, simulation.errors[:3]
    return elapsed, cpu, simulation.shown_counts(), len(simulation.evaluated)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def summary(rates: list[float]) -> str:
    return f"min {min(rates):7.1f}  median {statistics.median(rates):7.1f}  max {max(rates):7.1f} patients/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of baseline, 1 and 2 jobs [1]")
    parser.add_argument("--quick", action="store_true", help="40 patients, one round: a smoke run")
    args = parser.parse_args()
    patients, rounds = (40, 1) if args.quick else (args.patients, args.rounds)
    logging.disable(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="cramp-bench-ndjson-"))
    try:
        started = time.perf_counter()
        written = replicate_ndjson(folder, patients)
        size = sum(p.stat().st_size for p in folder.glob("*.ndjson")) / 2**20
        print(f"replicated {written} patients with fresh ids as NDJSON ({size:.0f} MiB) in "
              f"{time.perf_counter() - started:.1f} s ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
        rates: dict[str, list[float]] = {"baseline json.loads": [], "jobs=1": [], "jobs=2": []}
        cpu_ms: dict[str, list[float]] = {"jobs=1": [], "jobs=2": []}
        counts = []
        for round_ in range(rounds):
            rates["baseline json.loads"].append(written / baseline(folder))
            for jobs in (1, 2):
                elapsed, cpu, shown, evaluated = run(folder, jobs)
                assert evaluated == written, (evaluated, written)
                rates[f"jobs={jobs}"].append(evaluated / elapsed)
                cpu_ms[f"jobs={jobs}"].append(cpu * 1000 / evaluated)
                counts.append(shown)
                print(f"round {round_ + 1} jobs={jobs}: {evaluated / elapsed:.1f} patients/s, "
                      f"CPU {cpu * 1000 / evaluated:.2f} ms a patient (load {_load()}); cards shown: {shown}")
        assert all(c == counts[0] for c in counts), "the runs disagree"
        print()
        for name, values in rates.items():
            print(f"{name:20s} {summary(values)}")
        for name, values in cpu_ms.items():  # what the machine's other load does not change much
            print(f"{name + ' CPU':20s} min {min(values):7.2f}  median {statistics.median(values):7.2f}  "
                  f"max {max(values):7.2f} ms a patient (all processes)")
        best = statistics.median(rates["jobs=2"])
        print(f"ratio jobs=2 / baseline json.loads (median): {best / statistics.median(rates['baseline json.loads']):.2f}")
        print(f"speed-up jobs=2 / jobs=1 (median): {best / statistics.median(rates['jobs=1']):.2f}x")
        print(f"jobs=2 median {best:.1f} patients/s (target >= {TARGET_PER_SECOND:.0f}: "
              f"{'OK' if best >= TARGET_PER_SECOND else 'MISSED'}); a million patients in {1e6 / best / 3600:.2f} h")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
