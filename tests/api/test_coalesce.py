"""Coalescing: concurrent requests share engine calls, each gets exactly its own results, a
cancelled request's items are not sent, and errors reach every request of the failed call."""

from __future__ import annotations

import asyncio


from t2i_core.api.coalesce import Coalescer
from t2i_core.common.schemas import EngineRequest, EngineResult


def item(seed: int) -> EngineRequest:
    return EngineRequest(model="m", prompt="p", steps=1, guidance_scale=0, width=64, height=64, seed=seed)


class FakeEngine:
    def __init__(self, delay: float = 0.05, fail: bool = False):
        self.calls: list[list[int]] = []
        self.delay, self.fail = delay, fail

    async def send(self, kind, items):
        self.calls.append([i.seed for i in items])
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("engine down")
        return [EngineResult(model="m", seed=i.seed) for i in items]


def test_concurrent_requests_share_calls_and_get_their_own_results():
    engine = FakeEngine()

    async def main():
        c = Coalescer(engine.send, max_items=16)
        return c, await asyncio.gather(*(c.run("generate", [item(10 * r + k) for k in range(r % 3 + 1)]) for r in range(12)))

    c, results = asyncio.run(main())
    for r, got in enumerate(results):
        assert [x.seed for x in got] == [10 * r + k for k in range(r % 3 + 1)]
    assert c.calls == len(engine.calls) < 12  # merged
    assert all(len(call) <= 16 for call in engine.calls)


def test_kinds_are_never_mixed_and_cancelled_requests_are_skipped():
    engine = FakeEngine()

    async def main():
        c = Coalescer(engine.send, max_items=16, max_outstanding=1)
        first = asyncio.ensure_future(c.run("generate", [item(1)]))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(c.run("generate", [item(2)]))
        edit = asyncio.ensure_future(c.run("edit", [item(3)]))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(first, edit)
        return engine.calls

    calls = asyncio.run(main())
    assert calls == [[1], [3]]


def test_an_engine_error_reaches_every_request_of_the_call():
    engine = FakeEngine(fail=True)

    async def main():
        c = Coalescer(engine.send, max_items=16)
        return await asyncio.gather(*(c.run("generate", [item(i)]) for i in range(5)), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_linger_waits_for_returning_clients_after_a_multi_image_call():
    engine = FakeEngine(delay=0.01)

    async def main():
        c = Coalescer(engine.send, max_items=8, max_outstanding=1, linger_s=5.0)
        # idle: a lone request goes at once (no linger before the first call)
        await c.run("generate", [item(0)])
        # a call of one image does not open the window either
        await c.run("generate", [item(1)])
        assert engine.calls == [[0], [1]]
        # a call of two images opens it: the next call waits for two images (that call's clients
        # coming back), long before the 5 s window ends
        await c.run("generate", [item(2), item(3)])
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.ensure_future(c.run("generate", [item(10)]))
        await asyncio.sleep(0.05)
        assert len(engine.calls) == 3  # one of two back: still waiting
        await asyncio.gather(first, c.run("generate", [item(11)]))
        assert loop.time() - started < 1.0
        return engine.calls

    calls = asyncio.run(main())
    assert calls[2] == [2, 3] and calls[3] == [10, 11]


def test_linger_ends_at_its_deadline():
    engine = FakeEngine(delay=0.0)

    async def main():
        c = Coalescer(engine.send, max_items=16, max_outstanding=1, linger_s=0.05)
        await c.run("generate", [item(1), item(2)])
        loop = asyncio.get_running_loop()
        started = loop.time()
        await c.run("generate", [item(3)])  # alone: sent when the window closes
        return loop.time() - started

    waited = asyncio.run(main())
    assert 0.04 <= waited < 1.0
