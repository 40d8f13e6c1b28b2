"""The creative controls' listings: ``GET /v1/adapters`` (LoRA adapters) and ``GET /v1/controlnets``,
each entry with the pipeline family it fits, its defaults and its state (loaded, available,
unavailable with the reason), in the OpenAI list shape ``{"object": "list", "data": [...]}``."""

from __future__ import annotations

from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.api.request_flow import RequestFlow


def addon_listing_routes(get_flow: Callable[[], RequestFlow]) -> list[Route]:
    def listing(kind: str) -> Callable[[Request], object]:
        async def handler(request: Request) -> Response:
            rows = (await get_flow().addon_states())[kind]
            return JSONResponse({"object": "list", "data": [{"object": kind[:-1], **row} for row in rows]})

        return handler

    return [
        Route("/v1/adapters", listing("adapters"), methods=["GET"]),
        Route("/v1/controlnets", listing("controlnets"), methods=["GET"]),
    ]
