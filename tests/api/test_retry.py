"""A dropped engine connection is retried; other errors and timeouts are not."""

import asyncio

import aiohttp
import pytest

from t2i_core.api.retry import retry_dropped


def flaky(errors):
    calls = []

    async def call():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    return call, calls


def test_retries_a_dropped_connection():
    call, calls = flaky([aiohttp.ServerDisconnectedError(), aiohttp.ClientOSError(None, "closing transport")])
    assert asyncio.run(retry_dropped(call)) == "ok" and len(calls) == 3


@pytest.mark.parametrize("error", [aiohttp.ServerTimeoutError("slow"), ValueError("bad")])
def test_does_not_retry_timeouts_or_other_errors(error):
    call, calls = flaky([error])
    with pytest.raises(type(error)):
        asyncio.run(retry_dropped(call))
    assert len(calls) == 1


def test_gives_up_after_the_attempts():
    call, calls = flaky([aiohttp.ServerDisconnectedError()] * 5)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(retry_dropped(call, attempts=3))
    assert len(calls) == 3


def _refused() -> aiohttp.ClientConnectorError:
    """What BentoML's client raises when the engine's socket file is gone (the server stops, or a
    crashed engine worker is being restarted)."""
    from aiohttp.client_exceptions import UnixClientConnectorError
    from aiohttp.client_reqrep import ConnectionKey

    key = ConnectionKey("localhost", 80, False, True, None, None, None)
    return UnixClientConnectorError("/tmp/gone.sock", key, FileNotFoundError(2, "No such file or directory"))


def test_an_engine_that_cannot_be_reached_is_a_503_and_while_draining_shutting_down():
    from t2i_core.common.errors import EngineUnreachable, ShuttingDown
    from t2i_core.common.shutdown import DRAINING

    call, calls = flaky([_refused()] * 5)
    with pytest.raises(EngineUnreachable) as caught:
        asyncio.run(retry_dropped(call, attempts=3))
    assert len(calls) == 3 and caught.value.status == 503 and "gone.sock" in caught.value.message
    DRAINING.set()
    try:
        with pytest.raises(ShuttingDown):
            asyncio.run(retry_dropped(flaky([_refused()] * 5)[0], attempts=3))
    finally:
        DRAINING.clear()
    assert asyncio.run(retry_dropped(flaky([_refused()])[0])) == "ok"  # refused once, then reached
