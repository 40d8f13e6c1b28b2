"""Who is calling: an API key's hash, else the client's address. The A1111 routes find a caller's
latest job by it; the engine bounds each caller's live-preview wishes by it (one caller's stale polls
cannot switch previews off for the others). API keys are kept as hashes, never as given."""

from __future__ import annotations

import hashlib

from starlette.requests import Request


def caller_of(request: Request) -> str:
    auth = request.headers.get("authorization")
    if auth:
        return "key:" + hashlib.sha256(auth.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"addr:{request.client.host if request.client else ''}"
