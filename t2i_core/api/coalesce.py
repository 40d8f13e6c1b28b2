"""Merge concurrent requests into fewer engine calls, in the API process.

Every engine call is an HTTP request with BentoML's whole per-request cost on both sides (middlewares,
tracing, uvicorn, pickle, the dispatcher). The engine batches calls anyway, so the API keeps at most
``max_outstanding`` calls in flight (one computing, one queued in the engine) and sends whatever
arrived meanwhile as one call when a call returns. Each image keeps its own seed, so merging changes
no pixel; each request gets back exactly its own results.

``linger_s`` (``T2I_COALESCE_LINGER_MS``): after a call of two or more images returns, the next call
waits up to that long for the clients it just answered to come back: until as many images wait as
that call carried plus those already waiting then (at most ``max_items``). Closed-loop clients come
back within milliseconds; waiting for them turns two alternating half-batches into one fuller batch.
A server that was idle, or served single images, sends at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable

from t2i_core.common.schemas import Endpoint, EngineRequest, EngineResult

Send = Callable[[Endpoint, list[EngineRequest]], Awaitable[list[EngineResult]]]


class Coalescer:
    def __init__(self, send: Send, max_items: int, max_outstanding: int = 2, linger_s: float = 0.0):
        self._send = send
        self.max_items = max(1, max_items)
        self.max_outstanding = max(1, max_outstanding)
        self.linger_s = max(0.0, linger_s)
        self._linger_until = 0.0
        self._linger_target = 0  # images to wait for while the window is open
        self._linger_timer: asyncio.TimerHandle | None = None
        self._pending: deque[tuple[Endpoint, list[EngineRequest], asyncio.Future[list[EngineResult]]]] = deque()
        self._outstanding = 0
        self.calls = 0  # engine calls made (for tests and stats)

    async def run(self, kind: Endpoint, items: list[EngineRequest]) -> list[EngineResult]:
        future: asyncio.Future[list[EngineResult]] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, items, future))
        self._pump()
        return await future  # cancelling the caller cancels the future: its items are then skipped

    def _pump(self) -> None:
        while self._outstanding < self.max_outstanding and self._pending:
            if self._lingering():
                return
            kind, group = self._take()
            if not group:
                continue
            self._outstanding += 1
            self.calls += 1
            asyncio.ensure_future(self._flush(kind, group))

    def _lingering(self) -> bool:
        """True while the linger window is open and fewer than ``max_items`` wait (a timer pumps at its end)."""
        loop = asyncio.get_running_loop()
        remaining = self._linger_until - loop.time()
        if remaining <= 0 or self._waiting() >= self._linger_target:
            return False
        if self._linger_timer is None:
            def wake() -> None:
                self._linger_timer = None
                self._pump()

            self._linger_timer = loop.call_later(remaining, wake)
        return True

    def _waiting(self) -> int:
        return sum(len(items) for _, items, future in self._pending if not future.done())

    def _take(self) -> tuple[Endpoint, list[tuple[list[EngineRequest], asyncio.Future[list[EngineResult]]]]]:
        """The oldest waiting request's kind, and as many waiting requests of that kind as fit."""
        kind = self._pending[0][0]
        group: list[tuple[list[EngineRequest], asyncio.Future[list[EngineResult]]]] = []
        size = 0
        keep: deque[tuple[Endpoint, list[EngineRequest], asyncio.Future[list[EngineResult]]]] = deque()
        while self._pending:
            entry = self._pending.popleft()
            k, items, future = entry
            if future.done():  # cancelled while waiting (timeout, client gone)
                continue
            if k == kind and (not group or size + len(items) <= self.max_items):
                group.append((items, future))
                size += len(items)
            else:
                keep.append(entry)
        self._pending = keep
        return kind, group

    async def _flush(self, kind: Endpoint, group: list[tuple[list[EngineRequest], asyncio.Future[list[EngineResult]]]]) -> None:
        try:
            results = await self._send(kind, [item for items, _ in group for item in items])
            start = 0
            for items, future in group:
                if not future.done():
                    future.set_result(results[start:start + len(items)])
                start += len(items)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._outstanding -= 1
            sent = sum(len(items) for items, _ in group)
            if self.linger_s and sent >= 2:
                self._linger_until = asyncio.get_running_loop().time() + self.linger_s
                self._linger_target = min(self.max_items, sent + self._waiting())
            self._pump()
