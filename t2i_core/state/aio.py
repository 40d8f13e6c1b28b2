"""The state from the API's event loop: a shared backend's calls (file or network I/O) run on threads,
the memory backend's (a dict under a lock) run inline."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

from t2i_core.state.store import StateStore

T = TypeVar("T")


async def call(state: StateStore, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, a method of ``state``, without holding the event loop on I/O."""
    if not state.shared:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
