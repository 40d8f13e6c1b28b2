"""One API key's record: who it is (a name, never the key), what it may do and how its work is queued.

Keys are kept as SHA-256 digests: the keys file holds ``key_sha256`` (``python -m t2i_core key-new``
makes a key and its entry), and a key sent with a request is hashed once and looked up. API keys are
long random strings, so a plain SHA-256 (no salt, no slow hash) is what they need: nothing can be
guessed from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["admin", "user"]
Priority = Literal["interactive", "batch"]
ROLES: tuple[Role, ...] = ("admin", "user")
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
#: the name of every caller of a server without API keys
ANONYMOUS = "anonymous"
#: the name of ``T2I_ADMIN_KEY``
ADMIN = "admin"


def digest(key: str) -> str:
    """The SHA-256 of a key, hex (what the keys file stores as ``key_sha256``)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    #: what logs, metrics, usage and task ownership name (unique in a server's keys)
    name: str
    role: Role = "user"
    #: the highest class its work is queued in: "interactive" work goes before "batch" work (a task is
    #: "batch" unless its submit asks "interactive" and the key allows it)
    priority: Priority = "interactive"
    #: its share of the engine against other keys of its class while they all wait (fair queueing)
    weight: float = 1.0
    #: images it may have made per minute (None: no limit); 429 beyond
    images_per_minute: int | None = None
    #: generation requests (running tasks included) it may have in flight (None: no limit); 429 beyond
    max_concurrent: int | None = None
    #: where its tasks' webhooks go when a submit names none, and which events
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None
    #: its webhooks' signing secret (Standard Webhooks, "whsec_<base64>"); None: ``T2I_WEBHOOK_SECRET``
    webhook_secret: str | None = field(default=None, repr=False)
    #: the SHA-256 digests of its keys (several while a key is rotated)
    digests: tuple[str, ...] = field(default=(), repr=False)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner(self) -> str:
        """Who owns its tasks (``Caller.owner``)."""
        return f"key:{self.name}"

    def public(self) -> dict[str, object]:
        """What the admin API shows of it: never a digest or a secret."""
        return {"name": self.name, "role": self.role, "priority": self.priority, "weight": self.weight,
                "images_per_minute": self.images_per_minute, "max_concurrent": self.max_concurrent,
                "webhook_url": self.webhook_url, "webhook_events": list(self.webhook_events or ()) or None,
                "webhook_secret_set": self.webhook_secret is not None}


#: the record of every request to a server without API keys
ANONYMOUS_KEY = ApiKey(name=ANONYMOUS)
