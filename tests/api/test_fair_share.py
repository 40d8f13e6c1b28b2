"""Fair share in the coalescer: when more work waits than the engine takes, interactive work goes
before batch work, keys of a class share by weight (weighted fair queueing), one key's flood cannot
starve another, an interactive request waits only for the batch running (its own call beside it), and
T2I_FAIR_SHARE=0 keeps first come, first served."""

from __future__ import annotations

import asyncio

from t2i_core.api.coalesce import Coalescer
from t2i_core.api.keys.context import serving
from t2i_core.api.keys.records import ApiKey
from t2i_core.common.schemas import EngineRequest, EngineResult

A = ApiKey(name="flood-a", priority="batch")
A2 = ApiKey(name="flood-a2", priority="batch", weight=3.0)
B = ApiKey(name="interactive-b")


def item(seed: int, request_id: str = "") -> EngineRequest:
    return EngineRequest(model="m", prompt="p", steps=1, guidance_scale=0, width=64, height=64, seed=seed,
                         request_id=request_id or f"r{seed}")


class Engine:
    """Records each call's seeds; a call returns when the test releases it (one at a time)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gates: list[asyncio.Event] = []

    async def send(self, kind, items):
        self.calls.append([i.seed for i in items])
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return [EngineResult(model="m", seed=i.seed) for i in items]

    async def drain(self, *futures) -> None:
        """Release every call until ``futures`` are done."""
        k = 0
        while not all(f.done() for f in futures):
            await self.release(k)
            k += 1
        await asyncio.gather(*futures)

    async def release(self, call: int) -> None:
        while len(self.gates) <= call:
            await asyncio.sleep(0)
        self.gates[call].set()
        for _ in range(5):
            await asyncio.sleep(0)


async def submit(c: Coalescer, key: ApiKey, seed: int, priority=None) -> asyncio.Future:
    with serving(key, priority):
        future = asyncio.ensure_future(c.run("generate", [item(seed)]))
    for _ in range(3):  # its call, if one goes now, reaches the engine
        await asyncio.sleep(0)
    return future


def test_a_flood_does_not_starve_another_key_of_its_class():
    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=4, max_outstanding=1)
        ones = [await submit(c, A, 100 + i) for i in range(1)]  # the first call: A's
        flood = [await submit(c, A, 200 + i) for i in range(12)]
        other = await submit(c, ApiKey(name="other", priority="batch"), 1)
        await engine.drain(*ones, *flood, other)
        return engine.calls

    calls = asyncio.run(main())
    assert calls[0] == [100]
    assert 1 in calls[1], calls  # the other key's one request goes in the very next call, not after A's 12


def test_interactive_goes_before_batch_and_gets_a_call_beside_batch_work():
    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=4, max_outstanding=1)
        first = await submit(c, A, 100)
        flood = [await submit(c, A, 200 + i) for i in range(8)]
        b = await submit(c, B, 1)
        # B did not wait for A's call to end: its own call went beside it, with interactive work only
        assert engine.calls == [[100], [1]]
        await engine.release(1)
        assert (await b)[0].seed == 1 and not first.done()
        await engine.release(0)
        await engine.drain(first, *flood)
        return engine.calls

    calls = asyncio.run(main())
    assert calls[2:] == [[200, 201, 202, 203], [204, 205, 206, 207]]


def test_a_task_of_an_interactive_key_is_batch_work_unless_it_asks():
    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=2, max_outstanding=1)
        first = await submit(c, A, 100)
        task = await submit(c, B, 7, priority="batch")  # queued as batch: behind the running call
        asked = await submit(c, ApiKey(name="batch-key", priority="batch"), 8, priority="interactive")  # not allowed
        assert engine.calls == [[100]]
        await engine.drain(first, task, asked)
        return engine.calls

    assert asyncio.run(main())[1:] == [[7, 8]]


def test_weights_share_the_engine_in_proportion():
    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=4, max_outstanding=1)
        first = await submit(c, A, 0)
        light = [await submit(c, A, 100 + i) for i in range(12)]
        heavy = [await submit(c, A2, 200 + i) for i in range(12)]
        for k in range(1, 4):
            await engine.release(k - 1)
        sent = [seed for call in engine.calls[1:4] for seed in call]
        await engine.drain(first, *light, *heavy)
        return sent

    sent = asyncio.run(main())
    heavy = sum(1 for s in sent if s >= 200)
    light = sum(1 for s in sent if 100 <= s < 200)
    assert heavy >= 2.5 * light > 0, sent  # weight 3 against 1


def test_first_come_first_served_when_fair_share_is_off():
    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=4, max_outstanding=1, fair=False)
        first = await submit(c, A, 100)
        flood = [await submit(c, A, 200 + i) for i in range(8)]
        b = await submit(c, B, 1)
        assert engine.calls == [[100]]  # no lane
        await engine.drain(first, *flood, b)
        return engine.calls

    assert asyncio.run(main())[1:] == [[200, 201, 202, 203], [204, 205, 206, 207], [1]]


def test_where_a_request_waits():
    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=2, max_outstanding=1)
        first = await submit(c, A, 100)
        rest = [await submit(c, A, 200 + i) for i in range(5)]
        assert c.where("r100").state == "sent"
        place = c.where("r204")
        assert (place.state, place.requests_ahead, place.images_ahead, place.eta_s) == ("waiting", 4, 4, None)
        assert c.where("nope") is None
        await engine.release(0)
        place = c.where("r204")
        assert place.requests_ahead == 2 and place.eta_s is not None and place.eta_s > 0  # a rate now
        await engine.drain(first, *rest)

    asyncio.run(main())


def test_batch_work_goes_in_small_calls_while_interactive_work_is_about(monkeypatch):
    """A running batch is not interrupted: with ``batch_cap`` the batch work sent while an interactive
    caller is about goes in calls of at most that many images, so the interactive request waits for a
    small batch; with no interactive caller about, batch work fills whole calls again."""
    from t2i_core.api import coalesce

    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=8, max_outstanding=1, batch_cap=2)
        first = await submit(c, A, 100)
        flood = [await submit(c, A, 200 + i) for i in range(16)]
        b = await submit(c, B, 1)  # its lane call beside the running one
        await engine.release(1)
        await b
        await engine.release(0)  # the next call of batch work: capped, B was sent just now
        capped = engine.calls[2]
        monkeypatch.setattr(coalesce, "INTERACTIVE_RECENT_S", 0.0)  # B long gone
        await engine.release(2)
        whole = engine.calls[3]
        await engine.drain(first, *flood)
        return capped, whole

    capped, whole = asyncio.run(main())
    assert capped == [200, 201] and whole == [202, 203, 204, 205, 206, 207, 208, 209]


def test_without_interactive_work_the_cap_changes_nothing():
    async def main():
        engine = Engine()
        c = Coalescer(engine.send, max_items=4, max_outstanding=1, batch_cap=1)
        first = await submit(c, A, 100)
        flood = [await submit(c, A, 200 + i) for i in range(8)]
        await engine.drain(first, *flood)
        return engine.calls

    assert asyncio.run(main())[1:] == [[200, 201, 202, 203], [204, 205, 206, 207]]
