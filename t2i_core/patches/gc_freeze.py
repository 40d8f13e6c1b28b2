"""The API process's start-up objects kept out of Python's full garbage collections.

Under load the API process ran a full (generation 2) collection every ~2.6 s that took 52-83 ms and
freed nothing (``collected=0``: a ``gc.callbacks`` probe at 16 clients on the tiny model). Such a
collection walks every object the process holds, ~130,000 of them after start-up (the modules,
classes and functions of BentoML, Starlette, pydantic, aiohttp and this package), while the event
loop, and so every request, waits; in the lock step of a batched server the engine waits too.
``gc.freeze()`` moves the objects alive after start-up to a permanent generation that collections
skip: a full collection then walks only what was made since.

Only for the API process: the engine holds the pipelines, which the model manager unloads; frozen
objects caught in reference cycles would never be freed, and its full collections did not recur under
load (only while loading).
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect once, then freeze what is left; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
