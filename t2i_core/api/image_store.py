"""Images kept for a while and served from a link (OpenAI's ``response_format: "url"``).

In memory, in the API process: bounded in bytes (oldest dropped first) and in time. A link past its
time answers 410 Gone for as long as its tombstone is remembered, an unknown link 404.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Literal


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str
    expires_at: float


class ImageStore:
    def __init__(self, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, media_type: str) -> str:
        """Keep ``data``; return its token (unguessable, URL-safe)."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._expire()
            self._items[token] = StoredImage(data, media_type, self._clock() + self.ttl_s)
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._drop(next(iter(self._items)))
        return token

    def get(self, token: str) -> StoredImage | Literal["gone"] | None:
        """The image, "gone" when its time has passed (or it was dropped), None when never known."""
        with self._lock:
            self._expire()
            if token in self._items:
                return self._items[token]
            return "gone" if token in self._gone else None

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            token, item = next(iter(self._items.items()))
            if item.expires_at > now:
                break
            self._drop(token)

    def _drop(self, token: str) -> None:
        item = self._items.pop(token)
        self._bytes -= len(item.data)
        self._gone[token] = None
        while len(self._gone) > 100_000:
            self._gone.popitem(last=False)
