"""The images behind ``response_format: "url"`` links kept in the shared state (``T2I_IMAGE_STORE=state``,
what ``auto`` picks when the state is Redis): a link made by one replica is served by any other, with
no shared volume or object store to set up.

| key                    | what                                      | lives |
| ---------------------- | ----------------------------------------- | ----- |
| ``image:<token>``      | the image (its media type, then its bytes) | ``T2I_IMAGE_URL_TTL_S``, or until the byte cap drops it |
| ``image-made:<token>`` | the link existed (an expired one: 410)     | twice as long |
| ``image-size:<token>`` | its size, counted in ``images:bytes``      | until it is dropped from the index |
| index ``images``, ``images:bytes`` | tokens by time, and their bytes (the cap drops the oldest) | as the images |

Redis memory is bounded by ``T2I_IMAGE_STORE_MAX_BYTES`` (plus ~150 bytes of bookkeeping per link).
An image is uncounted by the worker whose ``index_remove`` took it out of the index (one, however
many drop at once), by the size its size key kept (which does not expire before that): the counter
does not drift.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

from t2i_core.api.image_store import StoredImage
from t2i_core.state.store import StateStore


class StateImageStore:
    blocking_io = True  # the shared backends do I/O: called off the event loop (``off_loop``)

    def __init__(self, state: StateStore, ttl_s: float, max_bytes: int):
        self.state = state
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    def put(self, data: bytes, media_type: str) -> str:
        """Keep ``data``; return its token (unguessable, URL-safe)."""
        token = secrets.token_urlsafe(24)
        now = time.time()
        head = media_type.encode() + b"\n"
        self.state.put(f"image:{token}", head + data, ttl_s=self.ttl_s)
        self.state.put(f"image-made:{token}", b"1", ttl_s=2 * self.ttl_s)
        self.state.put(f"image-size:{token}", str(len(data)).encode())
        self.state.index_add("images", token, now)
        used = self.state.incr("images:bytes", len(data))
        self._drop(now, used)
        return token

    def get(self, token: str) -> StoredImage | Literal["gone"] | None:
        """The image, "gone" when its time has passed (or the cap dropped it), None when never known."""
        raw = self.state.get(f"image:{token}")
        if raw is None:
            return "gone" if self.state.get(f"image-made:{token}") is not None else None
        media_type, _, data = raw.partition(b"\n")
        return StoredImage(data=data, media_type=media_type.decode(), expires_at=float("inf"))

    def _drop(self, now: float, used: int) -> None:
        """Drop the expired images, then the oldest while the images take more than the cap (the newest
        stays whatever its size)."""
        while True:
            oldest = self.state.index_range("images", limit=32, newest_first=False)
            if len(oldest) <= 1:
                return
            dropped = False
            for token, written in oldest[:-1]:
                if written + self.ttl_s > now and used <= self.max_bytes:
                    return
                self.state.delete(f"image:{token}")
                if self.state.index_remove("images", token) == 1:  # this worker drops it: it uncounts it
                    size = int(self.state.get(f"image-size:{token}") or 0)
                    self.state.delete(f"image-size:{token}")
                    used = self.state.incr("images:bytes", -size)
                dropped = True
            if not dropped:
                return
