"""engine/gc_pause.py: the cyclic collector is held off while any large chart is read, in any thread, and
runs again (only if it ran before) when the last one is done."""

from __future__ import annotations

import gc
import threading

from cds_service.engine import gc_pause


def test_a_large_chart_holds_the_collector_and_a_small_one_does_not():
    assert gc.isenabled()
    with gc_pause.held_for(gc_pause.LARGE_CHART - 1):
        assert gc.isenabled()
    with gc_pause.held_for(gc_pause.LARGE_CHART):
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_runs_again_when_the_last_of_overlapping_holds_ends():
    inside, release = threading.Event(), threading.Event()

    def other_call() -> None:
        with gc_pause.cyclic_gc_held():
            inside.set()
            assert release.wait(10)

    thread = threading.Thread(target=other_call)
    with gc_pause.cyclic_gc_held():
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other call still holds it
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with gc_pause.cyclic_gc_held():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_error_inside_still_ends_the_hold():
    try:
        with gc_pause.cyclic_gc_held():
            raise ValueError("a bad record")
    except ValueError:
        pass
    assert gc.isenabled()
