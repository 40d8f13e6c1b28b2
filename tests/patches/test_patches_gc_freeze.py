"""t2i_core/patches/gc_freeze.py: the objects alive at start-up are frozen, so full collections skip them."""

from __future__ import annotations

import gc

from t2i_core.patches.gc_freeze import freeze_startup_objects


class Marker:
    pass


def test_startup_objects_are_frozen_and_later_ones_are_not() -> None:
    before = Marker()
    try:
        frozen = freeze_startup_objects()
        assert frozen > 1000  # the interpreter, pytest and this package at least
        # frozen objects can still be freed by reference counting (threads left by other tests drop
        # theirs at any time), so the count only falls, and only by a few
        assert 0 <= frozen - gc.get_freeze_count() < 1000
        after = Marker()
        tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert id(before) not in tracked  # a full collection does not walk it
        assert id(after) in tracked
        # a cycle made after the freeze is still collected
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()

