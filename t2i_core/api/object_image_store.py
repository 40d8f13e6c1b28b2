"""The image store in an object store (``T2I_IMAGE_STORE=fsspec:<url>``): S3 and S3-compatible stores
(MinIO, Ceph, R2...) through s3fs, or any other fsspec file system (``gs://`` with gcsfs installed,
``memory://`` in tests). Replicas on different machines share "url" images this way without a
shared volume.

Links stay proxied: the server reads the object and answers it, so the bucket stays private and
clients need no credentials (a presigned link would hand out the bucket's address and bypass expiry
and tombstones). Each object is named by its token, which starts with the time it was written
(microseconds, 14 hex digits) and goes on with 24 random URL-safe characters (144 bits): expiry and
the size cap read the time from the name, so a sweep lists the prefix once and reads no object.
Expired and dropped images leave an empty tombstone object under ``.gone/`` (410 Gone rather than
404), kept as long as the images were. The sweep runs at most every ``sweep_every_s`` per process.

Credentials and endpoint come from the usual places (s3fs: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` or fsspec's ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Any, Callable, Literal

from t2i_core.api.image_store import StoredImage, to_drop

_TOKEN = re.compile(r"^[0-9a-f]{14}[A-Za-z0-9_-]{24}$")
GONE = ".gone"


class ObjectImageStore:
    def __init__(self, url: str, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.time,
                 sweep_every_s: float = 10.0, **storage_options: Any):
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self.sweep_every_s = sweep_every_s
        self._last_sweep = 0.0
        self._lock = threading.Lock()

    def _path(self, token: str) -> str:
        return f"{self.root}/{token}"

    def _gone_path(self, token: str) -> str:
        return f"{self.root}/{GONE}/{token}"

    def put(self, data: bytes, media_type: str) -> str:
        now = self._clock()
        token = f"{int(now * 1e6):014x}{secrets.token_urlsafe(18)}"
        self.fs.pipe_file(self._path(token), media_type.encode("ascii") + b"\n" + data)
        self._sweep(now)
        return token

    def get(self, token: str) -> StoredImage | Literal["gone"] | None:
        if not _TOKEN.match(token):
            return None
        written = written_at(token)
        if written + self.ttl_s <= self._clock():
            if self.fs.exists(self._path(token)):  # never a tombstone for a token this store did not make
                self._drop(token)
                return "gone"
            return "gone" if self.fs.exists(self._gone_path(token)) else None
        try:
            head, _, data = self.fs.cat_file(self._path(token)).partition(b"\n")
        except FileNotFoundError:
            return "gone" if self.fs.exists(self._gone_path(token)) else None
        return StoredImage(data, head.decode("ascii", "replace"), written + self.ttl_s)

    def _drop(self, token: str) -> None:
        self.fs.pipe_file(self._gone_path(token), b"")
        try:
            self.fs.rm_file(self._path(token))
        except FileNotFoundError:
            pass

    def _sweep(self, now: float) -> None:
        """Expired images and the oldest beyond the size cap become tombstones; old tombstones go."""
        with self._lock:
            if now - self._last_sweep < self.sweep_every_s:
                return
            self._last_sweep = now
        self.fs.invalidate_cache(self.root)
        images = []
        for entry in self.fs.ls(self.root, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "file" and _TOKEN.match(name):
                images.append((written_at(name), int(entry.get("size") or 0), name))
        images.sort()
        for token in to_drop(images, now, self.ttl_s, self.max_bytes):
            self._drop(token)
        gone_root = f"{self.root}/{GONE}"
        self.fs.invalidate_cache(gone_root)
        if not self.fs.exists(gone_root):
            return
        for entry in self.fs.ls(gone_root, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            # a tombstone is kept as long as the image was (from its drop, as the store reports it)
            dropped = modified_at(entry)
            if _TOKEN.match(name) and (dropped if dropped is not None else written_at(name) + self.ttl_s) + self.ttl_s < now:
                try:
                    self.fs.rm_file(f"{gone_root}/{name}")
                except FileNotFoundError:
                    pass


def written_at(token: str) -> float:
    return int(token[:14], 16) / 1e6


def modified_at(entry: dict[str, Any]) -> float | None:
    """When an object was written, from an fsspec listing entry (S3: LastModified; local: mtime;
    memory: created); None when the file system does not say."""
    for key in ("LastModified", "mtime", "created"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return None
