"""HTTP shapes of the native routes: image replies, error bodies, and the middleware that gives
BentoML's own error bodies the same shape.

Native error body: ``{"error": "<message naming field and value>", "param": <field|null>, "code": ...}``.
BentoML answers its own validation errors as ``{"error": "1 validation error for Input", "detail":
[...]}`` and other 4xx errors as a one-element list; the middleware rewrites both into ours.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from t2i_core.api import request_log
from t2i_core.common.errors import T2IError, describe_validation_errors, http_status
from t2i_core.api.frontend import RenderedImage
from t2i_core.api.images.codecs import decode_base64
from t2i_core.common.paths import SEED_PATHS


def error_body(err: T2IError) -> dict[str, Any]:
    return {"error": err.message, "param": err.param, "code": err.code}


def _noted(err: T2IError) -> T2IError:
    """Every error answer passes here: its code goes on the request's log line."""
    request_log.note(error=err.code, error_message=err.message[:300])
    return err


def error_response(err: T2IError) -> JSONResponse:
    """Native routes: ``{"error": message, "param": ..., "code": ...}``."""
    return JSONResponse(error_body(_noted(err)), status_code=http_status(err))


def openai_error_response(err: T2IError) -> JSONResponse:
    """/v1 routes: OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse({"error": _noted(err).to_dict()}, status_code=http_status(err))


def seed_error_response(err: T2IError) -> JSONResponse:
    """Seed-compatible routes: ``{"error": message}``."""
    return JSONResponse({"error": _noted(err).message}, status_code=http_status(err))


def image_response(image: RenderedImage) -> Response:
    return Response(content=image.data, media_type=image.media_type, headers=image.headers())


def error_response_for(path: str, err: T2IError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error in the shape of the route family that ``path`` belongs to (for middleware errors)."""
    if path.startswith(("/v1/", "/admin/")):
        response = openai_error_response(err)
    elif path in SEED_PATHS:
        response = seed_error_response(err)
    else:
        response = error_response(err)
    response.headers.update(headers or {})
    return response


def base64_image(value: Any) -> Any:
    """Before-validator for an image field: base64 text (JSON) becomes bytes; uploads pass through."""
    if isinstance(value, str):
        return decode_base64(value, field="image")  # InvalidRequest is a ValueError: pydantic reports it
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
    code = "invalid_value" if status < 500 else "server_error"
    request_log.note(error=code, error_message=message)
    return json.dumps({"error": message, "param": param, "code": code}).encode()


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
