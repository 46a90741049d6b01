"""freeze_startup_heap: objects alive at start-up leave the collector's generations (full passes stay short)."""

from __future__ import annotations

import gc

from unifiedserve.gc_heap import freeze_startup_heap


def test_objects_alive_at_start_up_are_no_longer_walked_by_the_collector() -> None:
    startup = [[i] for i in range(20_000)]  # stands in for a loaded model's Python objects
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(startup)
        tracked = {id(o) for o in gc.get_objects()}  # what a full collection walks
        assert not any(id(o) in tracked for o in startup)
        later = [[0]]
        assert id(later[0]) in {id(o) for o in gc.get_objects()}  # objects made afterwards are collected as usual
    finally:
        gc.unfreeze()
