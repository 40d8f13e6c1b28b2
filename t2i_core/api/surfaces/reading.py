"""Request reading shared by the compatibility routes."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Awaitable, Callable

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from t2i_core.common.errors import InvalidRequest, T2IError
from t2i_core.api.images.codecs import decode_base64

log = logging.getLogger("t2i.compat")
Handler = Callable[[Request], Awaitable[Response]]


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; InvalidRequest (400) saying where the JSON breaks."""
    body = await request.body()
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidRequest(
            f"request body is not valid JSON{where}: {getattr(exc, 'msg', exc)} "
            "(a trailing comma after the last field is a common cause)",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object; got {type(data).__name__}", code="invalid_json")
    return data


async def read_form(request: Request) -> tuple[dict[str, Any], dict[str, list[UploadFile]]]:
    """Multipart fields (text values) and files, by name; ``image[]`` is read as ``image``."""
    form = await request.form()
    values: dict[str, Any] = {}
    files: dict[str, list[UploadFile]] = {}
    for key, value in form.multi_items():
        name = key[:-2] if key.endswith("[]") else key
        if isinstance(value, UploadFile):
            files.setdefault(name, []).append(value)
        else:
            values[name] = value
    return values, files


def image_bytes_from_json(data: dict[str, Any], field: str = "image") -> bytes:
    value = data.pop(field, None)
    if value is None:
        raise InvalidRequest(f"{field} is required: a base64 PNG, JPEG or WebP image", param=field)
    return decode_base64(value, field=field)


def guarded(shape: Callable[[T2IError], Response]) -> Callable[[Handler], Handler]:
    """Answer T2IError in the route family's error shape; anything else is a logged 500 with no
    traceback in the body."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except T2IError as err:
                return shape(err)
            except Exception:  # noqa: BLE001 - logged here, never shown to the client
                log.exception("%s %s failed", request.method, request.url.path)
                return shape(T2IError("internal error; the server log has the details"))

        return run

    return wrap


def refuse_mask(present: bool) -> None:
    if present:
        raise InvalidRequest(
            "mask is not supported: this server edits the whole image (image to image) and cannot "
            "restrict the edit to a masked area; send the request without mask",
            param="mask", code="unsupported_parameter",
        )
