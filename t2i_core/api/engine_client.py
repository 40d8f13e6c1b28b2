"""How the API reaches the engine: ``ServiceEngineClient`` over BentoML's inter-service client in the
server, ``LocalEngineClient`` (the engine in this process) in tests, notebooks and the benchmark.

Model operations answer ``{"ok": ...}`` or ``{"error": {...}}``: errors cross the process boundary as
data (BentoML hides the body of a 5xx).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from t2i_core.api.coalesce import Coalescer, Place
from t2i_core.api.retry import retry_dropped
from t2i_core.common.config import Settings
from t2i_core.common.schemas import EngineRequest, EngineResult, Endpoint, Preview


class EngineClient(Protocol):
    """What the request flow asks of the engine."""

    async def run(self, kind: Endpoint, requests: list[EngineRequest]) -> list[EngineResult]: ...
    async def model_states(self) -> list[dict[str, Any]]: ...
    async def addon_states(self) -> dict[str, list[dict[str, Any]]]: ...
    async def model_action(self, action: str, model_id: str) -> dict[str, Any]: ...
    async def cancel(self, request_ids: list[str]) -> None: ...
    async def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]: ...
    async def previews(self, request_id: str, since: int, want_next: bool = False, caller: str = "") -> list[Preview]: ...
    def where(self, request_id: str) -> Place | None: ...


class LocalEngineClient:
    """An ``EngineClient`` over an in-process ``Engine`` (tests, notebooks, the benchmark's raw mode)."""

    def __init__(self, engine: Any):
        self.engine = engine

    async def run(self, kind: Endpoint, requests: list[EngineRequest]) -> list[EngineResult]:
        return await asyncio.to_thread(self.engine.run, requests)

    async def model_states(self) -> list[dict[str, Any]]:
        return self.engine.model_states()

    def where(self, request_id: str) -> Place | None:
        return None  # no queue of its own: the engine's

    async def addon_states(self) -> dict[str, list[dict[str, Any]]]:
        return self.engine.addon_states()

    async def model_action(self, action: str, model_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.engine.model_action, action, model_id)

    async def cancel(self, request_ids: list[str]) -> None:
        self.engine.cancel(request_ids)

    async def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.engine.progress(request_ids)

    async def previews(self, request_id: str, since: int, want_next: bool = False, caller: str = "") -> list[Preview]:
        if want_next:
            self.engine.want_preview(request_id, caller)
        return self.engine.take_previews(request_id, since)



class ServiceEngineClient:
    """The request flow's ``EngineClient`` over BentoML's inter-service client; concurrent requests are
    merged into fewer engine calls (``T2I_COALESCE``, see t2i_core/api/coalesce.py)."""

    def __init__(self, engine: Any, settings: Settings):
        self.engine = engine
        self.coalescer = (
            Coalescer(self._send, settings.max_batch_size, max_outstanding=settings.coalesce,
                      linger_s=settings.coalesce_linger_ms / 1000, fair=bool(settings.fair_share),
                      batch_cap=settings.fair_batch_images)
            if settings.coalesce > 0 else None
        )

    async def run(self, kind: Endpoint, requests: list[EngineRequest]) -> list[EngineResult]:
        if self.coalescer is not None:
            return await self.coalescer.run(kind, requests)
        return await self._send(kind, requests)

    def where(self, request_id: str) -> Place | None:
        """A request's place in this worker's queue (None when it holds no such request)."""
        return self.coalescer.where(request_id) if self.coalescer is not None else None

    async def _send(self, kind: Endpoint, requests: list[EngineRequest]) -> list[EngineResult]:
        method = self.engine.to_async.generate if kind == "generate" else self.engine.to_async.edit
        return await retry_dropped(lambda: method(requests))

    async def model_states(self) -> list[dict[str, Any]]:
        return await retry_dropped(self.engine.to_async.model_states)

    async def addon_states(self) -> dict[str, list[dict[str, Any]]]:
        return await retry_dropped(self.engine.to_async.addon_states)

    async def model_action(self, action: str, model_id: str) -> dict[str, Any]:
        return await retry_dropped(lambda: self.engine.to_async.model_action(action=action, model_id=model_id))

    async def cancel(self, request_ids: list[str]) -> None:
        await retry_dropped(lambda: self.engine.to_async.cancel(request_ids=request_ids))

    async def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        return await retry_dropped(lambda: self.engine.to_async.progress(request_ids=request_ids))

    async def previews(self, request_id: str, since: int, want_next: bool = False, caller: str = "") -> list[Preview]:
        return await retry_dropped(lambda: self.engine.to_async.previews(
            request_id=request_id, since=since, want_next=want_next, caller=caller))
