"""The state in this process's memory: one API worker and one engine worker (the default)."""

from __future__ import annotations

import bisect
import queue
import threading
from typing import Iterable

from t2i_core.state.store import Change, StateStore, Subscription, now

#: writes between two sweeps of expired keys (expired keys are also dropped when read)
SWEEP_EVERY = 512


class MemoryState(StateStore):
    kind = "memory"
    shared = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._values: dict[str, tuple[bytes, float | None]] = {}
        #: index -> member -> score, and the (score, member) pairs in order
        self._scores: dict[str, dict[str, float]] = {}
        self._ordered: dict[str, list[tuple[float, str]]] = {}
        #: index -> when it goes (indexes added to with a ttl)
        self._index_expires: dict[str, float] = {}
        self._writes = 0
        self._subscriptions: dict[str, list["MemorySubscription"]] = {}

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        found = self._values.get(key)
        if found is not None and found[1] is not None and found[1] <= now():
            del self._values[key]
            return None
        return found

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            t = now()
            for key in [k for k, (_, exp) in self._values.items() if exp is not None and exp <= t]:
                del self._values[key]
            for index in [i for i, exp in self._index_expires.items() if exp <= t]:
                self._drop_index(index)

    def _drop_index(self, index: str) -> None:
        self._scores.pop(index, None)
        self._ordered.pop(index, None)
        self._index_expires.pop(index, None)

    def _live_index(self, index: str) -> None:
        expires = self._index_expires.get(index)
        if expires is not None and expires <= now():
            self._drop_index(index)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._live(key)
            return None if found is None else found[0]

    def put(self, key: str, value: bytes, ttl_s: float | None = None, *, only_if_absent: bool = False) -> bool:
        with self._lock:
            if only_if_absent and self._live(key) is not None:
                return False
            self._values[key] = (bytes(value), None if ttl_s is None else now() + ttl_s)
            self._wrote()
            return True

    def delete(self, *keys: str) -> int:
        with self._lock:
            return sum(self._live(k) is not None and self._values.pop(k, None) is not None for k in keys)

    def update(self, key: str, change: Change, ttl_s: float | None = None) -> bytes | None:
        with self._lock:
            found = self._live(key)
            old, expires = (None, None) if found is None else found
            new = change(old)
            if new is None:
                return old
            self._values[key] = (bytes(new), expires if ttl_s is None else now() + ttl_s)
            self._wrote()
            return new

    def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        with self._lock:
            found = self._live(key)
            value = (int(found[0]) if found else 0) + by
            expires = found[1] if found else None
            self._values[key] = (str(value).encode(), expires if ttl_s is None else now() + ttl_s)
            self._wrote()
            return value

    def index_add(self, index: str, member: str, score: float, ttl_s: float | None = None) -> None:
        with self._lock:
            self._live_index(index)
            if ttl_s is not None:
                self._index_expires[index] = now() + ttl_s
            self._wrote()
            scores = self._scores.setdefault(index, {})
            ordered = self._ordered.setdefault(index, [])
            if member in scores:
                ordered.remove((scores[member], member))
            scores[member] = score
            bisect.insort(ordered, (score, member))

    def index_remove(self, index: str, *members: str) -> int:
        with self._lock:
            self._live_index(index)
            scores = self._scores.get(index, {})
            removed = 0
            for member in members:
                if member in scores:
                    self._ordered[index].remove((scores.pop(member), member))
                    removed += 1
            return removed

    def index_range(self, index: str, *, min_score: float = float("-inf"), max_score: float = float("inf"),
                    limit: int = 100, newest_first: bool = True) -> list[tuple[str, float]]:
        with self._lock:
            self._live_index(index)
            ordered = self._ordered.get(index, [])
            lo = bisect.bisect_left(ordered, (min_score, ""))
            hi = bisect.bisect_right(ordered, (max_score, "\U0010ffff"))
            picked: Iterable[tuple[float, str]] = reversed(ordered[lo:hi]) if newest_first else ordered[lo:hi]
            out = []
            for score, member in picked:
                if len(out) >= limit:
                    break
                out.append((member, score))
            return out

    def index_count(self, index: str) -> int:
        with self._lock:
            self._live_index(index)
            return len(self._scores.get(index, {}))

    def publish(self, channel: str, message: bytes) -> None:
        with self._lock:
            listeners = list(self._subscriptions.get(channel, []))
        for sub in listeners:
            sub.messages.put((channel, bytes(message)))

    def subscribe(self, *channels: str) -> "MemorySubscription":
        sub = MemorySubscription(self, channels)
        with self._lock:
            for channel in channels:
                self._subscriptions.setdefault(channel, []).append(sub)
        return sub

    def _unsubscribe(self, sub: "MemorySubscription") -> None:
        with self._lock:
            for channel in sub.channels:
                listeners = self._subscriptions.get(channel, [])
                if sub in listeners:
                    listeners.remove(sub)


class MemorySubscription(Subscription):
    def __init__(self, state: MemoryState, channels: tuple[str, ...]):
        self.state = state
        self.channels = channels
        self.messages: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()

    def get(self, timeout_s: float) -> tuple[str, bytes] | None:
        try:
            return self.messages.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.state._unsubscribe(self)
