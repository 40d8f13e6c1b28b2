"""Retry an engine call whose connection was dropped before an answer came back.

BentoML's inter-service client (aiohttp) keeps idle connections for 15 s, while the engine's server
(uvicorn) closes them after 5 s: a request sent on a connection the server just closed fails with
"Server disconnected" / "Cannot write to closing transport", which BentoML reports as a 500. Such a
call is safe to send again (a generation has no side effect but the work), so it is retried a few
times on a fresh connection. Timeouts are not retried: the work may still be running. An engine that
cannot be reached at all (its socket is gone: the server is stopping, or BentoML restarts a crashed
engine worker) is a 503, not a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, TypeVar

log = logging.getLogger("t2i.retry")
T = TypeVar("T")


def is_refused_connection(exc: BaseException) -> bool:
    """No connection could be made: nothing was sent, so the engine did no work."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - bentoml depends on aiohttp
        return False
    return isinstance(exc, aiohttp.ClientConnectorError)


def is_dropped_connection(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - bentoml depends on aiohttp
        return False
    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, asyncio.TimeoutError)


async def retry_dropped(call: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """``call()``, sent again when its connection dropped. BentoML's own 503 (its batching queue
    predicts it cannot start the work in time) becomes a 429 the client may retry."""
    from bentoml.exceptions import ServiceUnavailable

    from t2i_core.common.errors import EngineUnreachable, ShuttingDown, TooManyRequests
    from t2i_core.common.shutdown import DRAINING

    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except ServiceUnavailable:
            raise TooManyRequests("the engine's queue is full; retry shortly") from None
        except Exception as exc:
            if attempt == attempts and is_refused_connection(exc):
                if DRAINING.is_set():
                    raise ShuttingDown(
                        "the server is shutting down; send the request to another replica or retry") from None
                raise EngineUnreachable(f"the engine cannot be reached ({exc}); retry shortly") from None
            if attempt == attempts or not is_dropped_connection(exc):
                raise
            log.info("engine connection dropped (%s); retrying (%d/%d)", exc, attempt, attempts - 1)
    raise AssertionError("unreachable")
