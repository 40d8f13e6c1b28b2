"""Responses of every surface: image replies, and the one path from an error to a response.

Handlers raise ``T2IError``; ``error_response_for`` picks the status (``errors.http_status``) and the
body shape of the surface the path belongs to (native, OpenAI, A1111, the replaced servers). Starlette routes are
wrapped in ``guarded``, BentoML's routes reach it through ``service.py``, the guard middleware calls it
directly, and ``ErrorBodyMiddleware`` rewrites BentoML's own error bodies into the native shape.

Native error body: ``{"error": "<message naming field and value>", "param": <field|null>, "code": ...}``.
BentoML answers its own validation errors as ``{"error": "1 validation error for Input", "detail":
[...]}`` and other 4xx errors as a one-element list; the middleware rewrites both into ours.
"""

from __future__ import annotations

from pydantic import ValidationInfo

import functools
import json
import logging
from typing import Any, Awaitable, Callable, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from t2i_core.api import request_log
from t2i_core.common.errors import InvalidRequest, T2IError, describe_validation_errors, http_status
from t2i_core.api.request_flow import RenderedImage
from t2i_core.api.images.codecs import decode_base64
from t2i_core.common.paths import A1111_PREFIX, REPLACED_SERVER_PATHS

log = logging.getLogger("t2i.api")
Handler = Callable[[Request], Awaitable[Response]]


Surface = Literal["native", "openai", "replaced", "a1111"]


def surface_of(path: str) -> Surface:
    """Which API surface a path belongs to, for the shape of its error bodies."""
    if path.startswith(("/v1/", "/admin/")):
        return "openai"
    if path.startswith(A1111_PREFIX):
        return "a1111"
    if path in REPLACED_SERVER_PATHS:
        return "replaced"
    return "native"


def error_body(err: T2IError, surface: Surface = "native") -> dict[str, Any]:
    """native ``{"error": message, "param", "code"}``; OpenAI ``{"error": {"message", "type", "param",
    "code"}}``; the replaced servers' ``{"error": message}``; A1111's ``{"error", "detail", "body", "errors"}``."""
    if surface == "openai":
        return {"error": err.to_dict()}
    if surface == "replaced":
        return {"error": err.message}
    if surface == "a1111":  # A1111's own error body (its clients print detail / errors)
        return {"error": type(err).__name__, "detail": err.message, "body": "", "errors": err.message,
                "param": err.param, "code": err.code}
    return {"error": err.message, "param": err.param, "code": err.code}


def error_response_for(path: str, err: T2IError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one place an error becomes a response: status from the hierarchy (``http_status``), body in
    the shape of the surface ``path`` belongs to; its code goes on the request's log line."""
    request_log.note(error=err.code, error_message=err.message[:300])
    return JSONResponse(error_body(err, surface_of(path)), status_code=http_status(err), headers=headers)


def guarded(handler: Handler) -> Handler:
    """A Starlette route handler whose T2IError is answered by ``error_response_for``; anything else is
    a logged 500 with no traceback in the body."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except T2IError as err:
            return error_response_for(request.url.path, err)
        except Exception:  # noqa: BLE001 - logged here, never shown to the client
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response_for(request.url.path, T2IError("internal error; the server log has the details"))

    return run


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
    return json.dumps(error_body(err)).encode()


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
