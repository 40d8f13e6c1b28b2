"""Image link tokens that carry an HMAC of the store's secret, so that a shared image store (a folder,
an object store prefix) recognises its own files by name and never serves, expires or deletes a file
someone else put there, whatever its name.

A token is ``<body><tag>``: the body is the store's (random, possibly with a time in flow) and the tag
the first 16 bytes of HMAC-SHA256(secret, body), URL-safe base64 (22 characters). Every process sharing
the store shares its secret, kept in the store itself: a folder holds one key file (0600, linked into
place on first use, so that concurrent first users agree on it); an object store, which has no atomic
create, holds a folder of keys (two replicas starting at once may each write one; a token verifies
under any of them, and all sign with the first by name once they have seen it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Sequence

KEY_BYTES = 32
TAG_CHARS = 22
#: the random part of a token: 18 bytes, 24 URL-safe characters (144 bits)
RANDOM_CHARS = 24
_DOMAIN = b"t2i image link\0"


def _tag(key: bytes, body: str) -> str:
    digest = hmac.new(key, _DOMAIN + body.encode("ascii"), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class TokenSigner:
    """Makes and recognises a store's tokens; ``keys[0]`` signs, any of ``keys`` verifies."""

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise ValueError("a token signer needs at least one key")
        self.keys = list(keys)

    def sign(self, body: str) -> str:
        return body + _tag(self.keys[0], body)

    def new(self, prefix: str = "") -> str:
        """A fresh token: ``prefix``, 24 random URL-safe characters, the tag."""
        return self.sign(prefix + secrets.token_urlsafe(RANDOM_CHARS * 3 // 4))

    def verify(self, token: str) -> bool:
        """Whether this store made ``token`` (checked in constant time against each key)."""
        if len(token) <= TAG_CHARS or not token.isascii():
            return False
        body, tag = token[:-TAG_CHARS], token[-TAG_CHARS:]
        return any(hmac.compare_digest(_tag(key, body), tag) for key in self.keys)


KEY_FILE = ".t2i-image-store.key"


def folder_key(folder: Path) -> bytes:
    """The secret of the image store in ``folder``: its key file, made on first use (0600, written under
    a temporary name and hard-linked into place, so that processes starting together agree on one; on
    a file system without hard links, created exclusively in place)."""
    path = folder / KEY_FILE
    if not path.exists():
        _make_key_file(path)
    for _ in range(100):  # a process that made it in place may still be writing it
        key = path.read_bytes()
        if len(key) >= KEY_BYTES:
            break
        time.sleep(0.01)
    if len(key) != KEY_BYTES:
        raise ValueError(f"the image store's key file {path} must hold {KEY_BYTES} bytes; it holds {len(key)}: "
                         f"remove it to make a new one (links made with the old one stop working)")
    return key


def _make_key_file(path: Path) -> None:
    key = secrets.token_bytes(KEY_BYTES)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_new(staging, key)
        try:
            os.link(staging, path)  # fails when another process made it first: its key is the one
        except FileExistsError:
            pass
        except OSError:  # no hard links here
            try:
                _write_new(path, key)
            except FileExistsError:
                pass
    finally:
        staging.unlink(missing_ok=True)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
