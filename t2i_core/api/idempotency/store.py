"""First answers to idempotency keys, in the shared state (so that a retry that reaches another API
worker or replica gets them too).

- ``idem:<key name>:<hash of the Idempotency-Key>``: while the first request runs, a marker (its
  fingerprint; it lapses after the request's time limit and a margin, should its worker die); then
  its answer (status, headers, body) for ``T2I_IDEMPOTENCY_TTL_S``, or a note that it was too large
  to keep;
- index ``idem:kept`` (member "<bytes>|<record key>", scored by expiry) and counter ``idem:bytes``:
  kept answers take at most ``T2I_IDEMPOTENCY_MAX_BYTES`` in all; past it the oldest are dropped
  (their records stay, as notes, until they expire).

Only a 2xx answer is kept: after an error (a bad field, a timeout, the client leaving) the key is
free again, so a retry runs the request (no image was delivered for it).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Literal

from t2i_core.state.store import StateStore

KEPT = "idem:kept"
BYTES = "idem:bytes"
Outcome = Literal["claimed", "running", "done", "reused", "dropped"]


def record_key(key_name: str, idempotency_key: str) -> str:
    return f"idem:{key_name}:{hashlib.sha256(idempotency_key.encode('utf-8', 'surrogateescape')).hexdigest()[:40]}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _pack(head: dict[str, object], body: bytes = b"") -> bytes:
    encoded = json.dumps(head, separators=(",", ":")).encode()
    return len(encoded).to_bytes(4, "big") + encoded + body


def _unpack(raw: bytes) -> tuple[dict[str, object], bytes]:
    size = int.from_bytes(raw[:4], "big")
    return json.loads(raw[4:4 + size]), raw[4 + size:]


class IdempotencyStore:
    """Synchronous, on any backend; the middleware calls it through ``state.aio.call``."""

    def __init__(self, state: StateStore, ttl_s: float, max_bytes: int, running_s: float):
        self.state = state
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.running_s = running_s

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def claim(self, key: str, fingerprint: str) -> tuple[Outcome, Answer | None]:
        """Take ``key`` for a first request (``claimed``), or say what holds it: ``running`` (the first
        with this body runs now), ``done`` (its answer), ``reused`` (another request had the key),
        ``dropped`` (its answer was not kept)."""
        marker = _pack({"state": "running", "fingerprint": fingerprint, "started": time.time()})
        if self.state.put(key, marker, ttl_s=self.running_s, only_if_absent=True):
            return "claimed", None
        raw = self.state.get(key)
        if raw is None:  # it lapsed between the two calls: take it now
            return self.claim(key, fingerprint)
        head, body = _unpack(raw)
        if head.get("fingerprint") != fingerprint:
            return "reused", None
        if head.get("state") == "running":
            return "running", None
        if head.get("state") == "dropped":
            return "dropped", None
        headers = [(str(k), str(v)) for k, v in head.get("headers", [])]  # type: ignore[union-attr]
        return "done", Answer(int(head.get("status", 200)), headers, body)  # type: ignore[arg-type]

    def keep(self, key: str, fingerprint: str, answer: Answer, now: float | None = None) -> bool:
        """Keep the first answer; returns whether its body was kept (else a note says it was not)."""
        now = time.time() if now is None else now
        head = {"state": "done", "fingerprint": fingerprint, "status": answer.status, "headers": answer.headers}
        packed = _pack(head, answer.body)
        if len(packed) > self.max_bytes:
            self.state.put(key, _pack({"state": "dropped", "fingerprint": fingerprint}), ttl_s=self.ttl_s)
            return False
        self.state.put(key, packed, ttl_s=self.ttl_s)
        self.state.index_add(KEPT, f"{len(packed)}|{key}", now + self.ttl_s)
        if self.state.incr(BYTES, len(packed)) > self.max_bytes:
            self._make_room(now)
        return True

    def release(self, key: str) -> None:
        """The first request did not answer 2xx: the key is free again."""
        self.state.delete(key)

    def _make_room(self, now: float) -> None:
        """Forget expired answers, then drop the oldest until the rest fit in 90% of the cap."""
        target = int(self.max_bytes * 0.9)
        used = int(self.state.get(BYTES) or 0)
        while used > target:
            oldest = self.state.index_range(KEPT, limit=32, newest_first=False)
            if not oldest:
                break
            for member, expires in oldest:
                size, _, key = member.partition("|")
                if expires > now:  # still kept: its body goes, a note stays
                    raw = self.state.get(key)
                    if raw is not None:
                        head, _ = _unpack(raw)
                        self.state.put(key, _pack({"state": "dropped", "fingerprint": head.get("fingerprint")}),
                                       ttl_s=max(1.0, expires - now))
                self.state.index_remove(KEPT, member)
                used = self.state.incr(BYTES, -int(size or 0))
                if used <= target:
                    break
