"""Per-key limits from the keys file, counted in the shared state (so that they hold across API workers
and replicas): 429 with ``Retry-After`` and a message naming the limit, the key and the figures.

- ``images_per_minute``: images counted per calendar minute (a counter per key and minute); a
  request asking more than is left this minute is refused whole, before the engine is asked (429);
  one asking more than the limit itself is a 400 (it could never fit). A task counts at submit.
- ``max_concurrent``: generation requests in flight, running tasks included: one member per request
  in a sorted index per key, scored by when it lapses (so that a worker that dies holds no slot past
  ``T2I_REQUEST_TIMEOUT_S`` + a minute).
"""

from __future__ import annotations

import math
import time

from t2i_core.api.keys.context import Served
from t2i_core.api.keys.records import ApiKey
from t2i_core.common import metrics
from t2i_core.common.errors import InvalidRequest, TooManyRequests
from t2i_core.state.aio import call
from t2i_core.state.store import StateStore

WINDOW_S = 60


def images_key(name: str, window: int) -> str:
    return f"limits:images:{name}:{window}"


def in_flight_index(name: str) -> str:
    return f"limits:inflight:{name}"


class KeyLimits:
    def __init__(self, state: StateStore, slot_s: float):
        self.state = state
        #: how long a slot is held at most (a request's time limit, and a margin)
        self.slot_s = slot_s

    # ---- images per minute -----------------------------------------------------------------------
    def take_images_now(self, key: ApiKey, images: int, now: float | None = None) -> None:
        limit = key.images_per_minute
        if limit is None or images <= 0:
            return
        if images > limit:  # never fits, whenever retried: not a 429
            raise InvalidRequest(
                f"n={images} images in one request is more than key {key.name!r}'s limit of {limit} images per minute "
                f"(images_per_minute in the keys file); ask for at most {limit}", param="n",
                code="n_over_images_per_minute")
        now = time.time() if now is None else now
        window = int(now // WINDOW_S)
        counter = images_key(key.name, window)
        used = self.state.incr(counter, images, ttl_s=2 * WINDOW_S)
        if used > limit:
            self.state.incr(counter, -images)
            retry = max(1, math.ceil((window + 1) * WINDOW_S - now))
            metrics.record_key_limited(key.name, "images_per_minute")
            raise TooManyRequests(
                f"key {key.name!r} is over its limit of {limit} images per minute (images_per_minute in the keys "
                f"file): {used - images} made this minute, {images} asked; retry after {retry}s",
                code="images_per_minute", retry_after_s=retry)

    async def take_images(self, served: Served, images: int) -> None:
        """Count ``images`` against the key's images per minute (not again for a task's work, counted
        at its submit); TooManyRequests when they do not fit."""
        if served.counted or served.key.images_per_minute is None:
            return
        await call(self.state, self.take_images_now, served.key, images)

    # ---- requests in flight ------------------------------------------------------------------------
    def enter_now(self, key: ApiKey, slot: str, retry_after_s: int, now: float | None = None) -> None:
        limit = key.max_concurrent
        if limit is None:
            return
        now = time.time() if now is None else now
        index = in_flight_index(key.name)
        lapsed = self.state.index_range(index, max_score=now, limit=64, newest_first=False)
        if lapsed:
            self.state.index_remove(index, *(member for member, _ in lapsed))
        self.state.index_add(index, slot, now + self.slot_s)
        held = len(self.state.index_range(index, min_score=now, limit=limit + 1))
        if held > limit:
            self.state.index_remove(index, slot)
            metrics.record_key_limited(key.name, "max_concurrent")
            raise TooManyRequests(
                f"key {key.name!r} has {held - 1} requests in flight; its limit is {limit} (max_concurrent in the "
                f"keys file); retry after {retry_after_s}s", code="max_concurrent", retry_after_s=retry_after_s)

    def leave_now(self, key: ApiKey, slot: str) -> None:
        if key.max_concurrent is not None:
            self.state.index_remove(in_flight_index(key.name), slot)

    async def enter(self, key: ApiKey, slot: str, retry_after_s: int) -> None:
        if key.max_concurrent is not None:
            await call(self.state, self.enter_now, key, slot, retry_after_s)

    async def leave(self, key: ApiKey, slot: str) -> None:
        if key.max_concurrent is not None:
            await call(self.state, self.leave_now, key, slot)
