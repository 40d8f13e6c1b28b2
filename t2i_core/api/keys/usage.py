"""Usage per key name: images, pixels and engine-seconds, for an operator to bill or cap.

Each delivered request adds to the metrics at once (``t2i_key_*_total``, per process, summed by
Prometheus) and to a buffer that is written to the shared state about once a second (a few
counters per key, in all and per UTC day, kept ``DAYS_KEPT`` days), which ``GET /admin/usage`` reads
for every API worker and replica together. A worker that is killed loses at most its last second.
Engine-seconds: each image counts its share of its engine batch's time (the batch's time divided by
its images), so a key's figures add up to the engine's busy time.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from typing import Any

from t2i_core.common import metrics
from t2i_core.state.aio import call
from t2i_core.state.store import StateStore

log = logging.getLogger("t2i.usage")
#: key names with usage, by when they last had some
NAMES = "usage:keys"
FIELDS = ("images", "pixels", "engine_ms", "requests")
FLUSH_EVERY_S = 1.0
DAYS_KEPT = 40


def counter(name: str, field: str, day: str | None = None) -> str:
    return f"usage:{name}:{field}" if day is None else f"usage:{name}:{day}:{field}"


def utc_day(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime("%Y-%m-%d")


class UsageMeter:
    def __init__(self, state: StateStore):
        self.state = state
        self._lock = threading.Lock()
        #: what is not written yet: counter key -> (amount to add, its ttl)
        self._pending: dict[str, tuple[int, float | None]] = {}
        #: key names not added to ``NAMES`` yet
        self._names: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None

    def record(self, name: str, images: int, pixels: int, engine_seconds: float) -> None:
        """A request of key ``name`` was answered with ``images`` images of ``pixels`` pixels in all."""
        metrics.record_key_usage(name, images, pixels, engine_seconds)
        day = utc_day(time.time())
        row = {"images": images, "pixels": pixels, "engine_ms": round(engine_seconds * 1000), "requests": 1}
        with self._lock:
            for field, value in row.items():
                if value:
                    self._add(counter(name, field), value, None)
                    self._add(counter(name, field, day), value, DAYS_KEPT * 86400)
            self._names.add(name)
        self._ensure_flusher()

    def _add(self, key: str, value: int, ttl_s: float | None) -> None:
        self._pending[key] = (self._pending.get(key, (0, ttl_s))[0] + value, ttl_s)

    def flush(self) -> None:
        """Write the buffered usage to the shared state (blocking; ``state.aio.call`` from the loop).
        A write that fails part way keeps only the counters not written yet for the next round: each
        amount is added once, never twice."""
        with self._lock:
            pending, self._pending = self._pending, {}
            names, self._names = self._names, set()
        written: set[str] = set()
        indexed: set[str] = set()
        try:
            for key, (value, ttl_s) in pending.items():
                self.state.incr(key, value, ttl_s=ttl_s)
                written.add(key)
            for name in names:
                self.state.index_add(NAMES, name, time.time())
                indexed.add(name)
        except Exception:
            with self._lock:  # the rest kept for the next round
                for key, (value, ttl_s) in pending.items():
                    if key not in written:
                        self._add(key, value, ttl_s)
                self._names |= names - indexed
            raise

    def read(self, day: str | None = None) -> dict[str, dict[str, Any]]:
        """Per key name: images, pixels, engine_seconds, requests (in all, or on one UTC ``day``)."""
        names = [name for name, _ in self.state.index_range(NAMES, limit=100_000)]
        rows: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            values = self.state.get_many([counter(name, f, day) for f in FIELDS])
            row = {f: int(v or 0) for f, v in zip(FIELDS, values)}
            if day is not None and not any(row.values()):
                continue
            rows[name] = {"images": row["images"], "pixels": row["pixels"],
                          "engine_seconds": round(row["engine_ms"] / 1000, 3), "requests": row["requests"]}
        return rows

    def _ensure_flusher(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on an event loop (a test, a script): flush() by hand
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                await call(self.state, self.flush)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("usage not written to the shared state; trying again in %ss", FLUSH_EVERY_S,
                            exc_info=True)
