"""Who sent a request: the identity that owns its tasks and its A1111 jobs.

With API keys (``T2I_API_KEYS``), a caller is its key, kept only as a hash (no credential is ever
stored); the admin key (``T2I_ADMIN_KEY``) sees every caller's tasks. Without API keys the server is
open: tasks are not separated by caller (their ids are random and unguessable), and A1111 jobs, which
name no id, go by the client's address.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request


@dataclass(frozen=True)
class Caller:
    #: "key:<hash of the API key>", or None on a server without API keys
    owner: str | None
    #: sent the admin key: sees every caller's tasks
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may see and act on what ``owner`` made."""
        return self.admin or self.owner is None or owner == self.owner


def key_hash(secret: str) -> str:
    return "key:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def bearer_token(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def caller_of(request: Request, *, api_keys: bool, admin_key: str = "") -> Caller:
    """The caller of ``request`` on a server with (``api_keys``) or without API keys. The guard
    middleware has already refused a request whose key is wrong."""
    token = bearer_token(request)
    if admin_key and token is not None and hmac.compare_digest(token.encode(), admin_key.encode()):
        return Caller(owner=key_hash(token), admin=True)
    if not api_keys:
        return Caller(owner=None)
    return Caller(owner=key_hash(token or ""))
