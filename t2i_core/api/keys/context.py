"""The key of the request being served, set once by the guard (``GuardMiddleware``) and read by the
routes, the request flow (limits, usage), the coalescer's fair share, logs and metrics: always by its
name, never the key itself.

A context variable: it follows the request into the tasks it starts (a task's runner then sets the
class its work is queued in, ``batch`` unless its submit asked ``interactive``).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Iterator

from t2i_core.api.keys.records import ANONYMOUS_KEY, ApiKey, Priority

#: the ASGI scope entry the guard puts the request's key in
SCOPE_KEY = "t2i.key"


@dataclass(frozen=True)
class Served:
    """Who a piece of work is for and how it is queued."""

    key: ApiKey = ANONYMOUS_KEY
    #: the class it is queued in: the key's, or lower (a task)
    priority: Priority = "interactive"
    #: its images were already counted against the key's images per minute (a task, at submit)
    counted: bool = False

    @property
    def interactive(self) -> bool:
        return self.priority == "interactive"


_SERVED: ContextVar[Served] = ContextVar("t2i_served", default=Served())


def served() -> Served:
    return _SERVED.get()


def current_key() -> ApiKey:
    return _SERVED.get().key


def lower_class(key: ApiKey, asked: Priority | None) -> Priority:
    """The class a piece of work of ``key`` runs in when it asks ``asked`` (None: the key's own): never
    above the key's (a batch key's work is batch whatever it asks)."""
    if asked is None or key.priority == "batch":
        return key.priority
    return asked


@contextmanager
def serving(key: ApiKey, priority: Priority | None = None, counted: bool = False) -> Iterator[Served]:
    """Serve the code inside for ``key``, queued as ``priority`` (default: the key's class)."""
    value = Served(key, lower_class(key, priority), counted)
    token = _SERVED.set(value)
    try:
        yield value
    finally:
        _SERVED.reset(token)


def with_priority(value: Served, priority: Priority) -> Served:
    return replace(value, priority=lower_class(value.key, priority))
