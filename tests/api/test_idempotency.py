"""Idempotency-Key (t2i_core/api/idempotency/): a retry with the same key and request gets the first
answer byte for byte and runs nothing; another request under the key is a 422; a retry while the first
runs waits for its answer; a first request that fails frees the key; a multipart retry with a new
boundary is the same request; keys are per caller."""

from __future__ import annotations

import asyncio
import os

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from t2i_core.api.idempotency.middleware import IdempotencyMiddleware
from t2i_core.api.idempotency.store import IdempotencyStore
from t2i_core.api.keys.context import SCOPE_KEY
from t2i_core.api.keys.records import ApiKey
from t2i_core.state.memory import MemoryState


class Generator:
    def __init__(self) -> None:
        self.runs = 0
        self.gate: asyncio.Event | None = None
        self.fail_next = False

    async def generate(self, request: Request) -> Response:
        await request.body()
        self.runs += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            return Response(b'{"error": "engine"}', status_code=503, media_type="application/json")
        return Response(os.urandom(32), media_type="image/png", headers={"X-Seed": str(self.runs)})


def app_for(gen: Generator):
    inner = Starlette(routes=[Route("/generate", gen.generate, methods=["POST"])])
    app = IdempotencyMiddleware(inner, IdempotencyStore(MemoryState(), ttl_s=60, max_bytes=10**6, running_s=30),
                                wait_s=5)

    async def with_key(scope, receive, send):  # what the guard does: the caller's key in the scope
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"alice").decode()
            scope[SCOPE_KEY] = ApiKey(name=auth)
        await app(scope, receive, send)

    return with_key


def client(gen: Generator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(gen)), base_url="http://t")


def test_a_retry_gets_the_first_answer_and_runs_nothing():
    gen = Generator()

    async def main():
        async with client(gen) as c:
            first = await c.post("/generate", json={"prompt": "a"}, headers={"Idempotency-Key": "k1"})
            again = await c.post("/generate", json={"prompt": "a"}, headers={"Idempotency-Key": "k1"})
            other = await c.post("/generate", json={"prompt": "b"}, headers={"Idempotency-Key": "k1"})
            fresh = await c.post("/generate", json={"prompt": "a"}, headers={"Idempotency-Key": "k2"})
            bob = await c.post("/generate", json={"prompt": "a"}, headers={"Idempotency-Key": "k1", "Authorization": "bob"})
            plain = [await c.post("/generate", json={"prompt": "a"}) for _ in range(2)]
            return first, again, other, fresh, bob, plain

    first, again, other, fresh, bob, plain = asyncio.run(main())
    assert first.status_code == again.status_code == 200 and again.content == first.content
    assert again.headers["x-seed"] == first.headers["x-seed"] and again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert fresh.content != first.content and bob.content != first.content  # another key; another caller
    assert plain[0].content != plain[1].content  # no header: nothing kept
    assert gen.runs == 5


def test_a_retry_while_the_first_runs_waits_for_its_answer():
    gen = Generator()

    async def main():
        gen.gate = asyncio.Event()
        async with client(gen) as c:
            first = asyncio.create_task(c.post("/generate", json={"p": 1}, headers={"Idempotency-Key": "k"}))
            while gen.runs == 0:
                await asyncio.sleep(0.01)
            retry = asyncio.create_task(c.post("/generate", json={"p": 1}, headers={"Idempotency-Key": "k"}))
            await asyncio.sleep(0.2)
            assert not retry.done()
            gen.gate.set()
            return await first, await retry

    first, retry = asyncio.run(main())
    assert retry.status_code == 200 and retry.content == first.content and gen.runs == 1


def test_a_failed_first_request_frees_the_key_for_its_retry():
    gen = Generator()
    gen.fail_next = True

    async def main():
        async with client(gen) as c:
            failed = await c.post("/generate", json={"p": 1}, headers={"Idempotency-Key": "k"})
            retried = await c.post("/generate", json={"p": 1}, headers={"Idempotency-Key": "k"})
            again = await c.post("/generate", json={"p": 1}, headers={"Idempotency-Key": "k"})
            return failed, retried, again

    failed, retried, again = asyncio.run(main())
    assert failed.status_code == 503 and retried.status_code == 200 and again.content == retried.content
    assert gen.runs == 2


def test_a_multipart_retry_with_a_new_boundary_is_the_same_request():
    gen = Generator()

    async def main():
        async with client(gen) as c:
            answers = [await c.post("/generate", files={"image": ("a.png", b"pixels")}, data={"prompt": "x"},
                                    headers={"Idempotency-Key": "m"}) for _ in range(2)]
            other = await c.post("/generate", files={"image": ("a.png", b"other")}, data={"prompt": "x"},
                                 headers={"Idempotency-Key": "m"})
            return answers, other

    answers, other = asyncio.run(main())
    assert answers[0].content == answers[1].content and gen.runs == 1 and other.status_code == 422


def test_a_key_that_is_no_token_is_refused():
    async def main():
        async with client(Generator()) as c:
            return await c.post("/generate", json={}, headers={"Idempotency-Key": "x" * 300})

    r = asyncio.run(main())
    assert r.status_code == 400 and r.json()["param"] == "Idempotency-Key"
