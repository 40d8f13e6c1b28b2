"""Merge concurrent requests into fewer engine calls, in the API process; choose fairly which go first.

Every engine call is an HTTP request with BentoML's whole per-request cost on both sides (middlewares,
tracing, uvicorn, pickle, the dispatcher). The engine batches calls anyway, so the API keeps at most
``max_outstanding`` calls in flight (one computing, one queued in the engine) and sends whatever
arrived meanwhile as one call when a call returns. Each image keeps its own seed, so merging changes
no pixel; each request gets back exactly its own results.

Which waiting requests go into the next call is the fair share's choice (``fair_share.py``): the
smallest tags first, interactive before batch, weighted fair queueing across key names within a
class; the call then takes, in that order, the requests of the first one's kind that fit. While the
calls in flight are all taken by batch work only, interactive work may still go in one more call of
its own (the interactive lane): it then waits only for the batch the engine is running, not for the
batch work queued here. With ``T2I_FAIR_SHARE=0``: first come, first served, and no lane.

A running batch is never interrupted, so an interactive request arriving during a flood waits for the
batch the engine is running. ``batch_cap`` (``T2I_FAIR_BATCH_IMAGES``) bounds that wait: while
interactive work is waiting, in flight or was sent in the last ``INTERACTIVE_RECENT_S`` seconds, a
call of batch work carries at most that many images (the flood's throughput pays for the interactive
latency only while interactive callers are there).

``linger_s`` (``T2I_COALESCE_LINGER_MS``): after a call of two or more images returns, the next call
waits up to that long for the clients it just answered to come back: until as many images wait as
that call carried plus those already waiting then (at most ``max_items``). Closed-loop clients come
back within milliseconds; waiting for them turns two alternating half-batches into one fuller batch.
A server that was idle, or served single images, sends at once.

``where(request_id)``: a request's place in this worker's queue (requests and images ahead of it) and
an estimate of when it is done, from the engine's recent rate here (images per second of the last
calls).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from t2i_core.api.fair_share import FairQueue, Tag, work_of
from t2i_core.api.keys.context import served
from t2i_core.common.schemas import Endpoint, EngineRequest, EngineResult

Send = Callable[[Endpoint, list[EngineRequest]], Awaitable[list[EngineResult]]]
#: calls whose rate the estimate averages
RATE_CALLS = 32
#: seconds after an interactive request was sent during which batch work goes in capped calls (a
#: closed-loop interactive caller comes back within this)
INTERACTIVE_RECENT_S = 2.0


@dataclass(eq=False)
class _Waiting:
    kind: Endpoint
    items: list[EngineRequest]
    future: asyncio.Future[list[EngineResult]]
    tag: Tag

    @property
    def request_id(self) -> str | None:
        return self.items[0].request_id if self.items else None


@dataclass(eq=False)
class _Call:
    images: int
    started: float
    request_ids: set[str | None] = field(default_factory=set)
    #: it carries interactive work
    interactive: bool = False


@dataclass(frozen=True)
class Place:
    """Where a request is in this worker's queue: ``waiting`` (with what is ahead) or ``sent``."""

    state: str
    requests_ahead: int
    images_ahead: int
    #: seconds until it is done, estimated from the engine's recent rate; None without a rate yet
    eta_s: float | None


class Coalescer:
    def __init__(self, send: Send, max_items: int, max_outstanding: int = 2, linger_s: float = 0.0,
                 fair: bool = True, batch_cap: int = 0):
        self._send = send
        self.max_items = max(1, max_items)
        #: images per call of batch work while interactive work is about (0: no cap; fair share only)
        self.batch_cap = max(0, batch_cap) if fair else 0
        self._interactive_at = float("-inf")  # when interactive work was last waiting or sent
        self.max_outstanding = max(1, max_outstanding)
        self.linger_s = max(0.0, linger_s)
        self.queue = FairQueue(fair)
        self._linger_until = 0.0
        self._linger_target = 0  # images to wait for while the window is open
        self._linger_timer: asyncio.TimerHandle | None = None
        self._pending: list[_Waiting] = []
        self._outstanding = 0
        self._lane: _Call | None = None  # the interactive lane's call in flight
        self._calls: set[_Call] = set()
        self._rates: deque[tuple[int, float]] = deque(maxlen=RATE_CALLS)
        self.calls = 0  # engine calls made (for tests and stats)

    async def run(self, kind: Endpoint, items: list[EngineRequest]) -> list[EngineResult]:
        future: asyncio.Future[list[EngineResult]] = asyncio.get_running_loop().create_future()
        who = served()
        tag = self.queue.tag(who.key.name, who.key.weight, who.priority, work_of(items))
        self._pending.append(_Waiting(kind, items, future, tag))
        self._pump()
        return await future  # cancelling the caller cancels the future: its items are then skipped

    # ---- choosing what goes next ---------------------------------------------------------------------
    def _live(self) -> list[_Waiting]:
        """The waiting requests in the order they go (cancelled ones dropped)."""
        self._pending = [w for w in self._pending if not w.future.done()]
        self._pending.sort(key=lambda w: w.tag)
        return self._pending

    def _pump(self) -> None:
        while True:
            live = self._live()
            if not live:
                return
            head = live[0]
            if self._outstanding < self.max_outstanding:
                if self._lingering():
                    return
                lane = False
            elif self.queue.fair and head.tag.rank == 0 and not any(c.interactive for c in self._calls):
                lane = True  # interactive work behind batch work only: one call of its own beside them
            else:
                return
            kind, group = self._take(interactive_only=lane)
            if not group:
                return
            call = _Call(sum(len(w.items) for w in group), time.monotonic(), {w.request_id for w in group},
                         interactive=any(w.tag.rank == 0 for w in group))
            if lane:
                self._lane = call
            else:
                self._outstanding += 1
            self._calls.add(call)
            self.calls += 1
            for waiting in group:
                self.queue.sent(waiting.tag)
            asyncio.ensure_future(self._flush(kind, group, call, lane))

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
        return sum(len(w.items) for w in self._pending if not w.future.done())

    def _take(self, interactive_only: bool = False) -> tuple[Endpoint, list[_Waiting]]:
        """The first waiting request's kind, and as many waiting requests of that kind as fit, in order."""
        live = self._live()
        kind = live[0].kind
        limit = self._call_limit(live[0])
        group: list[_Waiting] = []
        size = 0
        for waiting in live:
            if interactive_only and waiting.tag.rank > 0:
                break  # sorted: the rest are batch work
            if waiting.kind == kind and (not group or size + len(waiting.items) <= limit):
                group.append(waiting)
                size += len(waiting.items)
        taken = set(map(id, group))
        self._pending = [w for w in live if id(w) not in taken]
        return kind, group

    def _call_limit(self, head: _Waiting) -> int:
        """The most images the next call takes: ``batch_cap`` for batch work while interactive work is
        waiting, in flight or recent; else ``max_items``."""
        now = time.monotonic()
        if any(w.tag.rank == 0 for w in self._pending) or any(c.interactive for c in self._calls):
            self._interactive_at = now
        if head.tag.rank == 0 or not self.batch_cap or now - self._interactive_at > INTERACTIVE_RECENT_S:
            return self.max_items
        return min(self.max_items, self.batch_cap)

    async def _flush(self, kind: Endpoint, group: list[_Waiting], call: _Call, lane: bool) -> None:
        try:
            results = await self._send(kind, [item for w in group for item in w.items])
            self._rates.append((call.images, time.monotonic() - call.started))
            start = 0
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_result(results[start:start + len(waiting.items)])
                start += len(waiting.items)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._calls.discard(call)
            if lane:
                self._lane = None
            else:
                self._outstanding -= 1
            if self.linger_s and call.images >= 2 and not lane:
                self._linger_until = asyncio.get_running_loop().time() + self.linger_s
                self._linger_target = min(self.max_items, call.images + self._waiting())
            self._pump()

    # ---- where a request is ------------------------------------------------------------------------
    def rate(self) -> float | None:
        """Images per second of the engine's recent calls from here; None before the first."""
        seconds = sum(s for _, s in self._rates)
        return sum(n for n, _ in self._rates) / seconds if self._rates and seconds > 0 else None

    def where(self, request_id: str) -> Place | None:
        """``request_id``'s place here; None when this worker does not hold it."""
        rate = self.rate()
        now = time.monotonic()
        # what the calls in flight have left, estimated from the rate
        running_left = sum(max(0.0, c.images / rate - (now - c.started)) for c in self._calls) if rate else 0.0
        for call in self._calls:
            if request_id in call.request_ids:
                return Place("sent", 0, 0, round(max(0.0, call.images / rate - (now - call.started)), 3) if rate else None)
        ahead_requests = ahead_images = 0
        for waiting in self._live():
            if waiting.request_id == request_id:
                eta = None if not rate else round(running_left + (ahead_images + len(waiting.items)) / rate, 3)
                return Place("waiting", ahead_requests, ahead_images, eta)
            ahead_requests += 1
            ahead_images += len(waiting.items)
        return None
