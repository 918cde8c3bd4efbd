"""A garbage-collector probe for bench/bench_gc_served.py, loaded by any Python started with this directory on
PYTHONPATH and GCPROBE_DIR set (nothing otherwise). In each process forked from it (the gunicorn workers), it
counts and times every collection by generation (gc.callbacks) and writes the totals to
$GCPROBE_DIR/<pid>.json every half second, with the number of frozen objects. Benchmarks only."""

import gc
import json
import os
import threading
import time

_DIR = os.environ.get("GCPROBE_DIR")


def _install() -> None:
    stats = {"count": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "max": [0.0, 0.0, 0.0]}
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        generation, seconds = info["generation"], time.perf_counter() - started[0]
        stats["count"][generation] += 1
        stats["seconds"][generation] += seconds
        stats["max"][generation] = max(stats["max"][generation], seconds)

    def dump() -> None:
        path = os.path.join(_DIR, f"{os.getpid()}.json")
        while True:
            time.sleep(0.5)
            with open(path + ".tmp", "w") as handle:
                json.dump({**stats, "frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}, handle)
            os.replace(path + ".tmp", path)

    def in_child() -> None:
        stats.update(count=[0, 0, 0], seconds=[0.0, 0.0, 0.0], max=[0.0, 0.0, 0.0])
        threading.Thread(target=dump, daemon=True).start()

    gc.callbacks.append(timed)
    os.register_at_fork(after_in_child=in_child)


if _DIR:
    _install()
