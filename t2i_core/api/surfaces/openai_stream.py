"""OpenAI's streaming image responses (``stream: true``, ``partial_images`` 0-3) as server-sent events:
``image_generation.partial_image`` (or ``image_edit.partial_image``) events carrying real intermediate
decodes of the image's latents (``engine/previews.py``), then ``image_generation.completed`` (or
``image_edit.completed``) with the final image. The handler prepares the request first
(``RequestFlow.prepare_generate`` / ``prepare_edit``): whatever can be refused before the engine runs is
a 4xx with OpenAI's error body, before any byte of the stream. Only what fails while the image is
made (an engine error, the time limit) is an ``error`` event with OpenAI's error body (the SDK raises
it), noted on the request's log line. The official SDK's
``images.generate(..., stream=True, partial_images=2)`` reads them as they come.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse

from t2i_core.api import request_log
from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.request_flow import RequestFlow
from t2i_core.common.errors import InvalidRequest, T2IError, http_status

log = logging.getLogger("t2i.openai")

#: seconds between two looks for new partial images while the image is made
POLL_S = 0.1
USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
         "total_tokens": 0}


def check_stream(n: int) -> None:
    if n != 1:
        raise InvalidRequest(f"stream returns one image: n must be 1 with stream; got {n}", param="n")


def _failed(exc: Exception) -> T2IError:
    """The error of a stream that failed after its 200 was sent, noted on the request's log line with
    the status it would have had (``stream_error_status``; the line's ``status`` is the 200 sent)."""
    if not isinstance(exc, T2IError):
        log.error("streamed request failed", exc_info=exc)
        exc = T2IError("internal error; the server log has the details")
    request_log.note(error=exc.code, error_message=exc.message[:300], stream_error_status=http_status(exc))
    return exc


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **body})}\n\n".encode()


def stream_images(
    flow: RequestFlow, prefix: str, fmt: str, quality: str,
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
                for preview, data in await flow.previews(request_id, sent, fmt):
                    yield _event(f"{prefix}.partial_image", {
                        "b64_json": base64.b64encode(data).decode("ascii"), "partial_image_index": preview.index,
                        **common(preview.width, preview.height)})
                    sent = preview.index + 1
                if finished:
                    break
                await asyncio.wait({work}, timeout=POLL_S)
            (image,) = work.result()
        except Exception as exc:  # noqa: BLE001 - the status is sent: the error is an event, and on the log line
            yield _event("error", {"error": _failed(exc).to_dict()})
            return
        finally:
            if not work.done():  # the client left: the request's own watcher stops the engine's work
                work.cancel()
        yield _event(f"{prefix}.completed", {
            "b64_json": base64.b64encode(image.data).decode("ascii"), "usage": USAGE,
            **common(image.width, image.height)})

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
