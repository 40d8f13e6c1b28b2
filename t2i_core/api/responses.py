"""Image replies, and BentoML's own error bodies on the native routes rewritten into the native shape.

BentoML answers its own validation errors as ``{"error": "1 validation error for Input", "detail":
[...]}`` and other 4xx errors as a one-element list; ``ErrorBodyMiddleware`` rewrites both into ours
(``error_shapes.native``). Errors raised by our own handlers get their surface's shape in
``error_shapes``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationInfo
from starlette.responses import Response

from t2i_core.api import request_log
from t2i_core.api.error_shapes import native
from t2i_core.api.images.codecs import decode_base64
from t2i_core.api.rendered_image import RenderedImage
from t2i_core.common.errors import InvalidRequest, T2IError, describe_validation_errors


def image_response(image: RenderedImage) -> Response:
    return Response(content=image.data, media_type=image.media_type, headers=image.headers())


def base64_image(value: Any, info: ValidationInfo) -> Any:
    """Before-validator for an image field: base64 text (JSON) becomes bytes; uploads pass through."""
    if isinstance(value, str):  # InvalidRequest is a ValueError: pydantic reports it
        return decode_base64(value, field=info.field_name or "image")
    return value


def normalize_error_body(status: int, body: bytes) -> bytes | None:
    """Our error shape for a BentoML error body; None when the body is already ours or not JSON."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict) or "error" not in data or "code" in data:
        return None
    message, param = str(data["error"]), None
    details = data.get("detail")
    if isinstance(details, list) and details and all(isinstance(d, dict) for d in details):
        message, param = describe_validation_errors(details)
    err = InvalidRequest(message, param=param) if status < 500 else T2IError(message, code="server_error")
    request_log.note(error=err.code, error_message=err.message[:300])
    return json.dumps(native(err)).encode()


class ErrorBodyMiddleware:
    """Rewrite JSON error bodies (status >= 400) of BentoML's API routes (``paths``) into the native
    shape. Other routes (the compatibility apps) answer in their own shapes and are left alone."""

    def __init__(self, app: Any, paths: frozenset[str] = frozenset()):
        self.app = app
        self.paths = paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"application/json"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(chunks)
                body = normalize_error_body(held["status"], body) or body
                headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_wrapper)
