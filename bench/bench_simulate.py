"""Population dry run (``rules simulate``) throughput: patients per second with 1 and 2 processes.

    python bench/bench_simulate.py [--patients 3100] [--quick]

The 31 shared Synthea bundles are replicated with fresh ids (every resource id replaced by a new
UUID, fullUrls and references rewritten with it) into a temporary folder until there are at least
``--patients`` patients (``--quick``: 100). The simulation code (``simulation.collect_tasks`` +
``simulation.simulate``, as the CLI runs it, without the progress bar) then runs over the folder with
the bundled rule set as of 2021-03-11, with --jobs 1 and --jobs 2; the card counts of both runs must be
equal. Prints patients/second for each and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

from cds_service.admin.simulation import collect_tasks, simulate
from cds_service.ruleset.loader import load_default_ruleset

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"
AS_OF = date(2021, 3, 11)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def replicate(target: Path, patients: int) -> int:
    """Write copies of the Synthea bundles, each with fresh ids, until ``patients`` are written."""
    sources = sorted(SYNTHEA.glob("*.json"))
    texts = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        bundle = json.loads(text)
        ids = {str(e["resource"]["id"]) for e in bundle["entry"] if e.get("resource", {}).get("id")}
        assert all(_UUID.fullmatch(i) for i in ids), f"{path.name}: non-UUID resource ids"
        texts.append((path.stem.rsplit("_", 1)[0], text, ids))
    written = 0
    copy = 0
    while written < patients:
        for stem, text, ids in texts:
            if written >= patients:
                break
            fresh = {old: str(uuid.uuid4()) for old in ids}
            new_text = _UUID.sub(lambda m: fresh.get(m.group(0), m.group(0)), text)
            (target / f"{stem}_copy{copy:03d}_{written:05d}.json").write_text(new_text, encoding="utf-8")
            written += 1
        copy += 1
    return written


def run(folder: Path, jobs: int) -> tuple[float, dict[str, int], int]:
    ruleset = load_default_ruleset()
    started = time.perf_counter()
    tasks = collect_tasks([str(folder)], [])
    simulation = simulate([None], [ruleset], tasks, AS_OF, jobs)
    elapsed = time.perf_counter() - started
    assert not simulation.errors, simulation.errors[:3]
    return elapsed, simulation.shown_counts(), len(simulation.evaluated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3100)
    parser.add_argument("--quick", action="store_true", help="100 patients: a smoke run")
    args = parser.parse_args()
    patients = 100 if args.quick else args.patients
    logging.disable(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="cramp-bench-"))
    try:
        started = time.perf_counter()
        written = replicate(folder, patients)
        print(f"replicated {written} patients with fresh ids in {time.perf_counter() - started:.1f} s "
              f"({os.cpu_count()} CPUs)")
        results = {}
        for jobs in (1, 2):
            elapsed, counts, evaluated = run(folder, jobs)
            results[jobs] = (elapsed, counts)
            print(f"jobs={jobs}: {evaluated} patients in {elapsed:.2f} s = {evaluated / elapsed:.1f} patients/s; "
                  f"cards shown: {counts}")
        assert results[1][1] == results[2][1], "the two runs disagree"
        print(f"speed-up with 2 jobs: {results[1][0] / results[2][0]:.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
