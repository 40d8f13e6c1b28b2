"""The routes of the five servers this product replaces, each as its README documents it.

- seed 000: POST /api/image/generate and /api/image/edit -> {"image": base64, "time": s, "format": "PNG"}
- seed 001: POST /generate-image -> raw PNG bytes
- seed 002: the OpenAI-style /v1 routes (openai_routes.py)
- seed 003: POST /generate, the native route (service.py)
- seed 004: POST /image/generate -> {"message": "Image generated successfully", "image_data": base64}

Errors are ``{"error": "<message naming the field and value>"}``. Unset settings take the model's
registry defaults (the seeds' own defaults were tuned for their one model).
"""

from __future__ import annotations

import base64
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.request_flow import RequestFlow, client_left, parse
from t2i_core.api.responses import image_response
from t2i_core.common.schemas import EditRequest, GenerateRequest
from t2i_core.api.surfaces.reading import image_bytes_from_json, read_json_object


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _seed000_body(image: RenderedImage) -> dict[str, object]:
    return {"image": _b64(image.data), "time": round(image.total_s, 4), "format": image.format.upper(),
            "seed": image.seed, "model": image.model}


def replaced_server_routes(get_flow: Callable[[], RequestFlow]) -> list[Route]:

    async def api_image_generate(request: Request) -> Response:
        """seed 000: {prompt, steps, format} -> {image, time, format}."""
        req = parse(GenerateRequest, await read_json_object(request))
        (image,) = await get_flow().generate(req, disconnected=client_left(request))
        return JSONResponse(_seed000_body(image))

    async def api_image_edit(request: Request) -> Response:
        """seed 000: {image (base64), prompt, steps, strength, format} -> {image, time, format}."""
        data = await read_json_object(request)
        source = image_bytes_from_json(data)
        req = parse(EditRequest, data)
        (image,) = await get_flow().edit(req, source, disconnected=client_left(request))
        return JSONResponse(_seed000_body(image))

    async def generate_image(request: Request) -> Response:
        """seed 001: {prompt} -> PNG bytes."""
        req = parse(GenerateRequest, await read_json_object(request))
        (image,) = await get_flow().generate(req, disconnected=client_left(request))
        return image_response(image)

    async def image_generate(request: Request) -> Response:
        """seed 004: {prompt, seed, guidance_scale} -> {message, image_data}."""
        req = parse(GenerateRequest, await read_json_object(request))
        (image,) = await get_flow().generate(req, disconnected=client_left(request))
        return JSONResponse({"message": "Image generated successfully", "image_data": _b64(image.data),
                             "seed": image.seed, "model": image.model}, headers=image.headers())

    return [
        Route("/api/image/generate", api_image_generate, methods=["POST"]),
        Route("/api/image/edit", api_image_edit, methods=["POST"]),
        Route("/generate-image", generate_image, methods=["POST"]),
        Route("/image/generate", image_generate, methods=["POST"]),
    ]
