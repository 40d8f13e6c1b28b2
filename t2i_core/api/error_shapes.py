"""How each surface answers an error: its body shape, registered once per surface.

Handlers raise ``T2IError``; the status comes from the hierarchy (``errors.http_status``), the body
from the shape of the surface that owns the route:

- native (``/generate``, ``/edit``, tasks): ``{"error": "<message naming field and value>", "param", "code"}``
- OpenAI (``/v1``, the admin API): ``{"error": {"message", "type", "param", "code"}}``
- A1111 (``/sdapi/v1``): ``{"error", "detail", "body", "errors"}`` (what its clients print), plus param and code
- the replaced servers' routes: ``{"error": message}``

Each surface app is wrapped in ``SurfaceErrors`` with its shape (``api/surfaces/__init__.py``); the
native routes (BentoML's) answer through ``error_response(err, native)``. No traceback ever reaches a
client: anything that is not a ``T2IError`` is logged here and answered as a 500 in the same shape.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.responses import JSONResponse

from t2i_core.api import request_log
from t2i_core.common.errors import T2IError, TooManyRequests, http_status

log = logging.getLogger("t2i.api")
#: the message of a 500 (the log has the traceback, the client never does)
INTERNAL = "internal error; the server log has the details"
Shape = Callable[[T2IError], dict[str, Any]]


def native(err: T2IError) -> dict[str, Any]:
    return {"error": err.message, "param": err.param, "code": err.code}


def openai(err: T2IError) -> dict[str, Any]:
    return {"error": err.to_dict()}


def a1111(err: T2IError) -> dict[str, Any]:
    return {"error": type(err).__name__, "detail": err.message, "body": "", "errors": err.message,
            "param": err.param, "code": err.code}


def replaced(err: T2IError) -> dict[str, Any]:
    return {"error": err.message}


def error_response(err: T2IError, shape: Shape, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one place an error becomes a response; its code goes on the request's log line."""
    request_log.note(error=err.code, error_message=err.message[:300])
    if isinstance(err, TooManyRequests) and err.retry_after_s is not None:
        headers = {**(headers or {}), "Retry-After": str(err.retry_after_s)}
    return JSONResponse(shape(err), status_code=http_status(err), headers=headers)


class SurfaceErrors:
    """ASGI middleware of one surface's app: its errors answered in its ``shape``."""

    def __init__(self, app: Any, shape: Shape):
        self.app = app
        self.shape = shape

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except T2IError as err:
            if started:
                raise
            await error_response(err, self.shape)(scope, receive, send)
        except Exception:  # noqa: BLE001 - logged here, never shown to the client
            if started:
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await error_response(T2IError(INTERNAL), self.shape)(scope, receive, send)
