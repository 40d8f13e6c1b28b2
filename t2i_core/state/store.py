"""The interface of the state shared by a server's workers (and, with Redis, by its replicas).

A small subset of what Redis offers, so that the Redis backend is a thin mapping and the embedded
ones (memory, SQLite) are easy to check against it:

- values: ``get`` / ``put`` (optionally only if absent) / ``delete``, each with an optional expiry;
- ``update``: an atomic read-modify-write of one key (Redis: WATCH/MULTI; SQLite: ``BEGIN IMMEDIATE``;
  memory: a lock), the one way to change a record that several workers may change at once (a task's
  status: its cancel and its completion race);
- ``incr``: counters;
- sorted indexes: ``index_add`` / ``index_remove`` / ``index_range`` (members ordered by a score, e.g.
  a time: newest-first listings, oldest-first eviction);
- messages: ``publish`` / ``subscribe``, a push to whoever listens now (Redis pub/sub: fire and forget,
  a subscriber that is away misses it). Whatever must not be missed is also written as a value (a
  cancel is a key, and its message only wakes the workers early).

Every call is synchronous and thread-safe; the API's event loop calls the shared backends through
``asyncio.to_thread`` (``t2i_core/state/aio.py``). Values are bytes; records are JSON
(``t2i_core/state/records.py``). What is stored under which key is listed in ``t2i_core/state/__init__.py``.
"""

from __future__ import annotations

import abc
import time
from typing import Callable, Iterable

from t2i_core.common.errors import StateUnavailable  # noqa: F401 - raised by the backends

#: An ``update`` change: the key's current value (None: absent) -> its new value, or None to leave it
#: as it is. It may be called more than once (a Redis transaction retried after a concurrent write), so
#: it must not have side effects.
Change = Callable[[bytes | None], bytes | None]


class StateStore(abc.ABC):
    #: "memory", "sqlite" or "redis"
    kind: str = ""
    #: whether other processes see what this one writes
    shared: bool = False

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The key's value; None when absent or expired."""

    def get_many(self, keys: Iterable[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    @abc.abstractmethod
    def put(self, key: str, value: bytes, ttl_s: float | None = None, *, only_if_absent: bool = False) -> bool:
        """Write ``value`` (expiring after ``ttl_s`` seconds; None: never). ``only_if_absent``: write
        only when the key does not exist. Returns whether it wrote."""

    def put_many(self, values: dict[str, bytes], ttl_s: float | None = None) -> None:
        """Write several keys at once (one round trip on the shared backends)."""
        for key, value in values.items():
            self.put(key, value, ttl_s)

    @abc.abstractmethod
    def delete(self, *keys: str) -> int:
        """Remove the keys; returns how many existed."""

    @abc.abstractmethod
    def update(self, key: str, change: Change, ttl_s: float | None = None) -> bytes | None:
        """Atomically replace the key's value by ``change(value)`` (see ``Change``); returns the value
        after the call. ``ttl_s``: the expiry of a written value (None: the key keeps its expiry)."""

    @abc.abstractmethod
    def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        """Add ``by`` to the integer at ``key`` (0 when absent) and return it; ``ttl_s`` sets the
        key's expiry when given."""

    @abc.abstractmethod
    def index_add(self, index: str, member: str, score: float, ttl_s: float | None = None) -> None:
        """Put ``member`` in the sorted index at ``score`` (replacing its score). ``ttl_s``: the whole
        index goes that long after this call unless added to again (None: it stays)."""

    @abc.abstractmethod
    def index_remove(self, index: str, *members: str) -> int:
        """Take members out of the index; returns how many were in it."""

    @abc.abstractmethod
    def index_range(self, index: str, *, min_score: float = float("-inf"), max_score: float = float("inf"),
                    limit: int = 100, newest_first: bool = True) -> list[tuple[str, float]]:
        """Members with ``min_score <= score <= max_score``, by score (highest first when
        ``newest_first``), at most ``limit``."""

    @abc.abstractmethod
    def index_count(self, index: str) -> int:
        """How many members the index has."""

    @abc.abstractmethod
    def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to the current subscribers of ``channel`` (in every process)."""

    @abc.abstractmethod
    def subscribe(self, *channels: str) -> "Subscription":
        """Messages published on ``channels`` from now on."""

    def close(self) -> None:
        """Release connections (the state itself stays)."""


class Subscription(abc.ABC):
    @abc.abstractmethod
    def get(self, timeout_s: float) -> tuple[str, bytes] | None:
        """The next message (channel, message), waiting at most ``timeout_s``; None when none came."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening."""


def now() -> float:
    """Wall-clock seconds: expiry times are compared across processes (and machines, with Redis)."""
    return time.time()
