"""Each benchmark in bench/ once at a tiny size (--quick), as CI runs them: they start, measure, print
their figures and the baseline of the same run, and stop what they started (a server that does not
exit 0 on SIGTERM makes the benchmark exit non-zero). Not a performance test:
the bounds are loose (a shared 2-core machine); the README's figures come from the full runs.

The wrk-based load benchmark is skipped when wrk is missing, unless CRAMP_REQUIRE_WRK=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench_smoke, pytest.mark.synthea]
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, *args: str, timeout: float = 60) -> str:
    started = time.monotonic()
    # Run in this test's temporary directory (conftest.py): a benchmark building Settings() without a
    # database URL writes ./leg-cramp-cds.sqlite3 there, never into the working tree.
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                         timeout=timeout, cwd=Path.cwd())
    assert out.returncode == 0, f"{script} exited {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    assert time.monotonic() - started < timeout
    return out.stdout


def test_bench_scaling_quick(shared_dir):
    out = _run("bench_scaling.py", "--quick")
    assert "json.loads" in out and "growth" in out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["10", "100"]


def test_bench_patient_view_quick(shared_dir):
    out = _run("bench_patient_view.py", "--quick")
    assert "baseline" in out and "ratio" in out
    # the development path and the production path (signed requests, replay check on SQLite and Redis)
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["dev", "sqlite", "redis"]


def test_bench_simulate_quick(shared_dir):
    out = _run("bench_simulate.py", "--quick", timeout=120)
    assert "baseline json.loads" in out and "jobs=1" in out and "jobs=2" in out and "patients/s" in out


def test_bench_store_ops_quick():
    out = _run("bench_store_ops.py", "--quick")
    names = [line.split(" cpu ")[0].strip() for line in out.splitlines()[1:]]
    assert names == ["bare sqlite3 replay insert (baseline)", "CardStore.seen_before",
                     "CardStore.record_shown (1 card)", "CardStore.overridden_rules (2 rules)"]
    ratios = [float(line.split("cpu / baseline")[1].strip().rstrip("x")) for line in out.splitlines()[1:]]
    assert ratios[0] == 1.0 and all(ratio > 0 for ratio in ratios)


def test_bench_gc_served_quick(shared_dir):
    out = _run("bench_gc_served.py", "--quick", timeout=120)
    assert "gen 0:" in out and "gen 2:" in out and "frozen per worker" in out


def test_bench_load_quick(shared_dir):
    if shutil.which("wrk") is None:
        if os.environ.get("CRAMP_REQUIRE_WRK") == "1":
            pytest.fail("wrk is required (CRAMP_REQUIRE_WRK=1) but not installed: apt-get install wrk")
        pytest.skip("wrk not installed (apt-get install wrk); set CRAMP_REQUIRE_WRK=1 to make this a failure")
    out = _run("bench_load.py", "--quick", "--workers", "2", "--threads", "2", "--paths", "dev,sqlite,redis,postgres",
               timeout=150)
    assert "ratio service / baseline throughput" in out
    assert "service p99" in out and "worker RSS" in out and "p99 ratio service / baseline" in out
    summary = out[out.index("summary"):].splitlines()[2:]
    assert [row.split()[0] for row in summary] == ["dev", "sqlite", "redis", "postgres"]  # errors 0: exit 0
    # every path's workers' CPU a request, against the baseline's, as numbers (a server that did no work: 0)
    cpu_ratios = [float(row.split()[-1].rstrip("x")) for row in summary]
    assert all(ratio > 0 for ratio in cpu_ratios), summary


def test_soak_quick(shared_dir):
    out = _run("soak.py", "--quick", "--rate", "20", "--workers", "2", "--threads", "2", timeout=90)
    assert "max RSS drift" in out and "errors 0" in out


def test_bench_hanging_fhir_quick(shared_dir):
    out = _run("bench_hanging_fhir.py", "--quick", timeout=120)
    assert "1. alone:" in out and "8 hanging:" in out and "ratio p50 hanging / alone" in out
    assert "threads /" in out and "sockets" in out
