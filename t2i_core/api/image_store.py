"""Images kept for a while and served from a link (OpenAI's ``response_format: "url"``).

``ImageStore`` keeps them in memory, in the API process; ``DirectoryImageStore`` in a folder that several
API workers, server processes or replicas share (a shared volume), so that a link made by one is
served by any other (``T2I_IMAGE_STORE=dir:/path``); ``ObjectImageStore`` (object_image_store.py) in an
object store such as S3, for replicas without a shared volume. All are bounded in bytes (oldest dropped first)
and in time. A link past its time answers 410 Gone for as long as its tombstone is remembered (as long
as the images are kept, and at most ``MAX_TOMBSTONES``), an unknown link 404. The shared stores touch
only files they wrote: their names carry an HMAC of the store's secret (image_tokens.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

from t2i_core.api.image_tokens import RANDOM_CHARS, TAG_CHARS, TokenSigner, folder_key

T = TypeVar("T")
#: tombstones (410 rather than 404 for an expired link) each store keeps at most, besides their age limit
MAX_TOMBSTONES = 10_000


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str
    expires_at: float


class ImageStore:
    blocking_io = False

    def __init__(self, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic,
                 max_tombstones: int = MAX_TOMBSTONES):
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        #: tombstones (token -> when it was dropped), oldest first: kept as long as the images were, at most
        #: ``max_tombstones``
        self._gone: OrderedDict[str, float] = OrderedDict()
        self.max_tombstones = max_tombstones
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
        while self._gone and next(iter(self._gone.values())) + self.ttl_s <= now:
            self._gone.popitem(last=False)

    def _drop(self, token: str) -> None:
        item = self._items.pop(token)
        self._bytes -= len(item.data)
        self._gone[token] = self._clock()
        while len(self._gone) > self.max_tombstones:
            self._gone.popitem(last=False)


#: a folder store's token: 24 random URL-safe characters and the store's tag (image_tokens.py)
_TOKEN = re.compile(rf"^[A-Za-z0-9_-]{{{RANDOM_CHARS + TAG_CHARS}}}$")


def to_drop(images: list[tuple[float, int, T]], now: float, ttl_s: float, max_bytes: int) -> list[T]:
    """Of ``images`` (written, size, key), oldest first: the expired ones and the oldest beyond
    ``max_bytes``; the newest stays whatever its size. The shared stores' sweeps drop these."""
    total = sum(size for _, size, _ in images)
    dropped = []
    for written, size, key in images[:-1]:
        if written + ttl_s > now and total <= max_bytes:
            break
        dropped.append(key)
        total -= size
    return dropped


class DirectoryImageStore:
    """The same store in a folder shared by processes: one file per image (its media type on the first
    line), written under a temporary name and renamed into place, so a reader never sees half an
    image. The store reads, expires and deletes only its own files: their names are tokens signed with
    the folder's key (image_tokens.py), so a file someone else put in the folder is never served or
    touched, whatever its name. Files are the server user's alone (0600; the folder 0700 when the store
    makes it). Expiry uses the file's modification time and the wall clock (the same on every process
    of a machine; keep replicas' clocks in sync). Tombstones are empty files in ``.gone/``, kept as long
    as the images were and at most ``max_tombstones``. The size cap is checked at most once a second, by
    whichever process writes."""

    def __init__(self, folder: str | os.PathLike[str], ttl_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time, max_tombstones: int = MAX_TOMBSTONES):
        self.folder = Path(folder)
        self.gone_folder = self.folder / ".gone"
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.gone_folder.mkdir(mode=0o700, exist_ok=True)
        self.signer = TokenSigner([folder_key(self.folder)])
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_tombstones = max_tombstones
        self._clock = clock
        self._last_sweep = 0.0
        self._lock = threading.Lock()

    def _own(self, name: str) -> bool:
        return bool(_TOKEN.match(name)) and self.signer.verify(name)

    def put(self, data: bytes, media_type: str) -> str:
        token = self.signer.new()
        staging = self.folder / f".{token}.tmp"
        _write_private(staging, media_type.encode("ascii") + b"\n" + data)
        now = self._clock()
        os.utime(staging, (now, now))
        os.replace(staging, self.folder / token)
        self._sweep(now)
        return token

    def get(self, token: str) -> StoredImage | Literal["gone"] | None:
        if not self._own(token):
            return None
        path = self.folder / token
        try:
            written = path.stat().st_mtime
            if written + self.ttl_s <= self._clock():
                self._drop(path)
                return "gone"
            head, _, data = path.read_bytes().partition(b"\n")
        except FileNotFoundError:
            return "gone" if (self.gone_folder / token).exists() else None
        return StoredImage(data, head.decode("ascii", "replace"), written + self.ttl_s)

    def _drop(self, path: Path) -> None:
        tombstone = self.gone_folder / path.name
        _write_private(tombstone, b"", exclusive=False)
        now = self._clock()
        os.utime(tombstone, (now, now))
        path.unlink(missing_ok=True)

    def _sweep(self, now: float) -> None:
        """Expired images and the oldest beyond the size cap become tombstones; tombstones older than the
        ttl or beyond their cap go, and so do temporary files left by a writer that died. Only the
        store's own files are looked at."""
        with self._lock:
            if now - self._last_sweep < 1.0:
                return
            self._last_sweep = now
        images, staged = [], []
        for entry in os.scandir(self.folder):
            own = self._own(entry.name)
            left = entry.name.startswith(".") and entry.name.endswith(".tmp") and self._own(entry.name[1:-4])
            if not (own or left) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            (images if own else staged).append((info.st_mtime, info.st_size, Path(entry.path)))
        images.sort()
        for path in to_drop(images, now, self.ttl_s, self.max_bytes):
            self._drop(path)
        for written, _, path in staged:
            if written + self.ttl_s < now:
                path.unlink(missing_ok=True)
        self._sweep_tombstones(now)

    def _sweep_tombstones(self, now: float) -> None:
        tombstones = []
        for entry in os.scandir(self.gone_folder):
            if self._own(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    tombstones.append((entry.stat(follow_symlinks=False).st_mtime, entry.path))
                except FileNotFoundError:
                    continue
        tombstones.sort()
        beyond_cap = len(tombstones) - self.max_tombstones
        for k, (dropped, path) in enumerate(tombstones):
            if k < beyond_cap or dropped + self.ttl_s < now:  # kept as long as the images were, at most the cap
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue


def _write_private(path: Path, data: bytes, exclusive: bool = True) -> None:
    """Write ``path`` readable by this user only (0600)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def off_loop(store: Any, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, on a thread when ``store`` does I/O (a folder, an object store), so that a slow
    disk or bucket never stalls the API's event loop; in place for the in-memory store."""
    if getattr(store, "blocking_io", True):
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
