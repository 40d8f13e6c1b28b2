"""The image store in an object store (``T2I_IMAGE_STORE=fsspec:<url>``): S3 and S3-compatible stores
(MinIO, Ceph, R2...) through s3fs, or any other fsspec file system (``gs://`` with gcsfs installed,
``memory://`` in tests). Replicas on different machines share "url" images this way without a
shared volume.

Links stay proxied: the server reads the object and answers it, so the bucket stays private and
clients need no credentials (a presigned link would hand out the bucket's address and bypass expiry
and tombstones). Each object is named by its token, which starts with the time it was written
(microseconds, 14 hex digits), goes on with 24 random URL-safe characters (144 bits) and ends with the
store's tag (an HMAC of the whole under the store's secret, image_tokens.py): expiry and the size cap
read the time from the name, so a sweep lists the prefix once and reads no object, and the tag makes
the store touch (serve, expire, delete) only objects it wrote, never one someone else put under the
prefix. The secrets are objects under ``.keys/``, made by the first process to find none (replicas that
start together may each make one: a token verifies under any). Expired and dropped images leave an
empty tombstone object under ``.gone/`` (410 Gone rather than 404), kept as long as the images were
and at most ``max_tombstones``. The sweep runs at most every ``sweep_every_s`` per process.

Credentials and endpoint come from the usual places (s3fs: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` or fsspec's ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Any, Callable, Literal

from t2i_core.api.image_store import MAX_TOMBSTONES, StoredImage, to_drop
from t2i_core.api.image_tokens import KEY_BYTES, RANDOM_CHARS, TAG_CHARS, TokenSigner

_TOKEN = re.compile(rf"^[0-9a-f]{{14}}[A-Za-z0-9_-]{{{RANDOM_CHARS + TAG_CHARS}}}$")
_KEY_NAME = re.compile(r"^[0-9a-f]{32}$")
GONE = ".gone"
KEYS = ".keys"
#: at most this often (seconds) a token that verifies under no known key makes the store read its keys again
KEY_REFRESH_S = 1.0


class ObjectImageStore:
    def __init__(self, url: str, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.time,
                 sweep_every_s: float = 10.0, max_tombstones: int = MAX_TOMBSTONES, **storage_options: Any):
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_tombstones = max_tombstones
        self._clock = clock
        self.sweep_every_s = sweep_every_s
        self._last_sweep = 0.0
        self._lock = threading.Lock()
        self.signer = self._load_keys()
        self._keys_loaded = time.monotonic() - KEY_REFRESH_S  # the first unknown token may read them again at once

    def _load_keys(self) -> TokenSigner:
        """The store's secrets from ``.keys/``; one made first when there is none."""
        found = self._list_keys()
        if not found:
            self.fs.pipe_file(f"{self.root}/{KEYS}/{secrets.token_hex(16)}", secrets.token_bytes(KEY_BYTES))
            found = self._list_keys()
        return TokenSigner([key for _, key in sorted(found)])

    def _list_keys(self) -> list[tuple[str, bytes]]:
        keys_root = f"{self.root}/{KEYS}"
        self.fs.invalidate_cache(keys_root)
        try:
            paths = self.fs.ls(keys_root, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for path in paths:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if _KEY_NAME.match(name):
                key = self.fs.cat_file(f"{keys_root}/{name}")
                if len(key) == KEY_BYTES:
                    found.append((name, key))
        return found

    def _own(self, token: str, refresh: bool = True) -> bool:
        """Whether this store (any process sharing its prefix) made ``token``; a token under a key made
        since the keys were read (by a replica that started at the same time) reads them again."""
        if not _TOKEN.match(token):
            return False
        if self.signer.verify(token):
            return True
        if refresh and time.monotonic() - self._keys_loaded >= KEY_REFRESH_S:
            self.signer, self._keys_loaded = self._load_keys(), time.monotonic()
            return self.signer.verify(token)
        return False

    def _path(self, token: str) -> str:
        return f"{self.root}/{token}"

    def _gone_path(self, token: str) -> str:
        return f"{self.root}/{GONE}/{token}"

    def put(self, data: bytes, media_type: str) -> str:
        now = self._clock()
        token = self.signer.new(prefix=f"{int(now * 1e6):014x}")
        self.fs.pipe_file(self._path(token), media_type.encode("ascii") + b"\n" + data)
        self._sweep(now)
        return token

    def get(self, token: str) -> StoredImage | Literal["gone"] | None:
        if not self._own(token):
            return None
        written = written_at(token)
        if written + self.ttl_s <= self._clock():
            if self.fs.exists(self._path(token)):  # a tombstone only for an image that was there
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
        """Expired images and the oldest beyond the size cap become tombstones; tombstones older than the
        ttl or beyond their cap go. Only the store's own objects are looked at."""
        with self._lock:
            if now - self._last_sweep < self.sweep_every_s:
                return
            self._last_sweep = now
        self.signer, self._keys_loaded = self._load_keys(), time.monotonic()
        self.fs.invalidate_cache(self.root)
        images = []
        for entry in self.fs.ls(self.root, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "file" and self._own(name, refresh=False):
                images.append((written_at(name), int(entry.get("size") or 0), name))
        images.sort()
        for token in to_drop(images, now, self.ttl_s, self.max_bytes):
            self._drop(token)
        self._sweep_tombstones(now)

    def _sweep_tombstones(self, now: float) -> None:
        gone_root = f"{self.root}/{GONE}"
        self.fs.invalidate_cache(gone_root)
        if not self.fs.exists(gone_root):
            return
        tombstones = []
        for entry in self.fs.ls(gone_root, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if self._own(name, refresh=False):
                # dropped when the store says it was written (else when its image expired)
                dropped = modified_at(entry)
                tombstones.append((dropped if dropped is not None else written_at(name) + self.ttl_s, name))
        tombstones.sort()
        beyond_cap = len(tombstones) - self.max_tombstones
        for k, (dropped, name) in enumerate(tombstones):
            if k < beyond_cap or dropped + self.ttl_s < now:  # kept as long as the images were, at most the cap
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
