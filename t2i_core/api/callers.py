"""Who sent a request: the identity that owns its tasks, its A1111 jobs and its live-preview wishes.

A caller is its API key, kept only as a hash (no credential is ever stored), else its address
(``caller_id``). Tasks (``caller_of``): with API keys a task belongs to its key's name ("key:<name>")
and admin keys (``T2I_ADMIN_KEY``, role admin in the keys file) see every caller's tasks; without
API keys the server is open and tasks are not separated by caller (their ids are random and unguessable). The A1111 routes find a
caller's latest job by ``caller_id`` (their calls name no job); the engine bounds each caller's
live-preview wishes by it, so one caller's stale polls cannot switch previews off for the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from starlette.requests import Request

from t2i_core.api.keys.context import SCOPE_KEY
from t2i_core.api.keys.records import ANONYMOUS, ANONYMOUS_KEY


@dataclass(frozen=True)
class Caller:
    #: "key:<name of the API key>", or None on a server without API keys
    owner: str | None
    #: sent the admin key: sees every caller's tasks
    admin: bool = False
    #: the key's name (logs, listings); None without a key
    name: str | None = None

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may see and act on what ``owner`` made."""
        return self.admin or self.owner is None or owner == self.owner


def key_hash(secret: str) -> str:
    return "key:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def bearer_token(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def caller_id(request: Request) -> str:
    """"key:<hash of the bearer token>" (or of the whole Authorization header), else "addr:<client address>"."""
    token = bearer_token(request)
    if token is not None:
        return key_hash(token)
    auth = request.headers.get("authorization")
    if auth:
        return key_hash(auth)
    return f"addr:{request.client.host if request.client else ''}"


def caller_of(request: Request) -> Caller:
    """The caller of ``request``, from the key the guard middleware resolved (``keys.context``): on a
    server without API keys, tasks are not separated by caller (owner None) unless the admin key
    was sent."""
    key = request.scope.get(SCOPE_KEY, ANONYMOUS_KEY)
    if key is ANONYMOUS_KEY or key.name == ANONYMOUS:
        return Caller(owner=None)
    return Caller(owner=key.owner, admin=key.admin, name=key.name)
