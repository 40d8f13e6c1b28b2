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
