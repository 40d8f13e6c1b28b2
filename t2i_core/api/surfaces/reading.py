"""Request reading shared by the compatibility routes."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from t2i_core.common.errors import InvalidRequest
from t2i_core.api.images.codecs import decode_base64



async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; InvalidRequest (400) saying where the JSON breaks."""
    body = await request.body()
    try:
        data = json.loads(body or b"null")
    except RecursionError:
        raise InvalidRequest("request body is not valid JSON: nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer past Python's digit limit
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
    try:
        form = await request.form()
    except (MultiPartException, ValueError) as exc:
        raise InvalidRequest(f"the form body cannot be read: {exc}", code="invalid_form") from None
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


def refuse_mask(present: bool) -> None:
    if present:
        raise InvalidRequest(
            "mask is not supported: this server edits the whole image (image to image) and cannot "
            "restrict the edit to a masked area; send the request without mask",
            param="mask", code="unsupported_parameter",
        )
