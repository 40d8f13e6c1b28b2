"""OpenAI's streaming image responses (``stream: true``, ``partial_images`` 0-3) as server-sent events:
``image_generation.partial_image`` (or ``image_edit.partial_image``) events carrying real intermediate
decodes of the image's latents (``engine/previews.py``), then ``image_generation.completed`` (or
``image_edit.completed``) with the final image; an error after the stream started is an ``error``
event with OpenAI's error body (the SDK raises it). The official SDK's
``images.generate(..., stream=True, partial_images=2)`` reads them as they come.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse

from t2i_core.api.frontend import Frontend, RenderedImage
from t2i_core.common.errors import InvalidRequest, T2IError

#: seconds between two looks for new partial images while the image is made
POLL_S = 0.1
USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
         "total_tokens": 0}


def check_stream(n: int) -> None:
    if n != 1:
        raise InvalidRequest(f"stream returns one image: n must be 1 with stream; got {n}", param="n")


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **body})}\n\n".encode()


def stream_images(
    front: Frontend, prefix: str, fmt: str, quality: str,
    start: Callable[[str], Awaitable[list[RenderedImage]]],
) -> StreamingResponse:
    """``start(request_id)`` makes the image; ``prefix`` is ``image_generation`` or ``image_edit``."""
    request_id = uuid.uuid4().hex
    work = asyncio.ensure_future(start(request_id))

    def common(width: int, height: int) -> dict[str, Any]:
        return {"created_at": int(time.time()), "size": f"{width}x{height}", "quality": quality,
                "background": "opaque", "output_format": fmt}

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        try:
            while True:
                finished = work.done()
                for preview, data in await front.previews(request_id, sent, fmt):
                    yield _event(f"{prefix}.partial_image", {
                        "b64_json": base64.b64encode(data).decode("ascii"), "partial_image_index": preview.index,
                        **common(preview.width, preview.height)})
                    sent = preview.index + 1
                if finished:
                    break
                await asyncio.wait({work}, timeout=POLL_S)
            try:
                (image,) = work.result()
            except T2IError as err:
                yield _event("error", {"error": err.to_dict()})
                return
            yield _event(f"{prefix}.completed", {
                "b64_json": base64.b64encode(image.data).decode("ascii"), "usage": USAGE,
                **common(image.width, image.height)})
        finally:
            if not work.done():  # the client left: the request's own watcher stops the engine's work
                work.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
