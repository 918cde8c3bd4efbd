"""The cyclic garbage collector held off while one call reads a large chart.

A full collection walks every live container object. While a call holds the parsed body of a chart of
20,000 resources (hundreds of thousands of dicts and lists, none in a reference cycle), a full collection
triggered while reading it walks all of it: 223 ms of a 635 ms evaluation at 20,000 resources, 1.3 s of
3.9 s at 200,000 (bench/bench_scaling.py; with the collector held off, 18 and 16 us a resource, as at
1,000). The chart's records hold no cycles either: nothing is lost by collecting after.

The collector is process-wide, so the hold is counted across threads: it runs again when the last holding
call ends (and only if it was running when the first began). Only charts of at least ``LARGE_CHART``
resources hold it: an ordinary call allocates too little to trigger a full collection, and other
threads' cyclic garbage should not wait on it.

    with held_for(resource_count):
        ...
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator

LARGE_CHART = 2_000

_lock = threading.Lock()
_holding = 0
_resume = False


@contextmanager
def cyclic_gc_held() -> Iterator[None]:
    global _holding, _resume
    with _lock:
        if _holding == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holding += 1
    try:
        yield
    finally:
        with _lock:
            _holding -= 1
            if _holding == 0 and _resume:
                gc.enable()


def held_for(resources: int) -> ContextManager[None]:
    """The hold for a chart of ``resources`` resources: none below ``LARGE_CHART``."""
    return cyclic_gc_held() if resources >= LARGE_CHART else nullcontext()
