"""Request reading shared by the compatibility routes."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from t2i_core.api.body_errors import body_error
from t2i_core.common.errors import InvalidRequest
from t2i_core.api.images.codecs import decode_base64



async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; InvalidRequest (400) saying where the JSON breaks (``NaN`` and
    ``Infinity`` are not JSON), ClientClosed when the client leaves while sending it."""
    content_type = request.headers.get("content-type", "")
    try:
        data = json.loads(await request.body() or b"null", parse_constant=_not_json)
    except Exception as exc:  # noqa: BLE001 - sorted by body_error; the server's own faults re-raised
        error = body_error(exc, content_type)
        if error is None:
            raise
        if error.code == "invalid_json" and isinstance(exc, json.JSONDecodeError):
            hint = (f"; this route reads a JSON body, and this one was sent as {content_type.split(';')[0]!r}"
                    if content_type.lower().startswith(("multipart/", "application/x-www-form-urlencoded")) else
                    " (a trailing comma after the last field is a common cause)")
            error.message += hint
        raise error from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object; got {type(data).__name__}", code="invalid_json")
    return data


def _not_json(constant: str) -> Any:
    raise InvalidRequest(f"request body is not valid JSON: {constant} is not a JSON value (numbers must be finite)",
                         code="invalid_json")


async def read_form(request: Request) -> tuple[dict[str, Any], dict[str, list[UploadFile]]]:
    """Multipart fields (text values) and files, by name; ``image[]`` is read as ``image``. Text fields
    in the bracket notation the OpenAI SDK writes lists and objects in are read back into them:
    ``a[]=x`` (repeated) is a list, ``a[k]=v`` an object, ``a[][k]=v`` a list of objects, the n-th
    value of each key in the n-th object (the SDK sends all values of one key, then the next key's, so
    the objects of a list should all have the same keys; a JSON text field keeps any shape)."""
    try:
        form = await request.form()
    except Exception as exc:  # noqa: BLE001 - sorted by body_error; the server's own faults re-raised
        error = body_error(exc, request.headers.get("content-type", ""))
        if error is None:
            raise
        raise error from None
    values: dict[str, Any] = {}
    files: dict[str, list[UploadFile]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(key[:-2] if key.endswith("[]") else key, []).append(value)
            continue
        match = _BRACKETS.fullmatch(key)
        name, listed, sub = match.group("name", "list", "sub") if match else (key, None, None)
        if not listed and sub is None:  # a plain field (or one this notation does not cover)
            values[key] = value
            continue
        if listed and sub is None:  # a[]=x
            found = values.get(name)
            values[name] = [*found, value] if isinstance(found, list) else [value]
        elif listed:  # a[][k]=v: the k-th value of a key goes to the k-th object
            found = values.get(name)
            rows = found if isinstance(found, list) and all(isinstance(r, dict) for r in found) else []
            row = next((r for r in rows if sub not in r), None)
            if row is None:
                rows.append(row := {})
            row[sub] = value
            values[name] = rows
        else:  # a[k]=v
            found = values.get(name)
            values[name] = {**(found if isinstance(found, dict) else {}), sub: value}
    return values, files


#: ``name[]``, ``name[key]``, ``name[][key]``
_BRACKETS = re.compile(r"(?P<name>[^\[\]]+)(?P<list>\[\])?(?:\[(?P<sub>[^\[\]]+)\])?")


def image_bytes_from_json(data: dict[str, Any], field: str = "image") -> bytes:
    value = data.pop(field, None)
    if value is None:
        raise InvalidRequest(f"{field} is required: a base64 PNG, JPEG or WebP image", param=field)
    return decode_base64(value, field=field)


def images_from_json(data: dict[str, Any], field: str = "image", limit: int = 16) -> list[bytes]:
    """One image or a list of them in a JSON body: base64 text (a data URL too) or OpenAI's
    ``{"image_url": "data:..."}`` each; the field (or OpenAI's ``images``) is taken out of ``data``."""
    value = data.pop(field, None)
    if value is None:
        value = data.pop("images", None)
    if value is None:
        raise InvalidRequest(f"{field} is required: a base64 PNG, JPEG or WebP image (or a list of them)", param=field)
    values = value if isinstance(value, list) else [value]
    if not 1 <= len(values) <= limit:
        raise InvalidRequest(f"{field} must hold 1 to {limit} images; got {len(values)}", param=field)
    out = []
    for item in values:
        if isinstance(item, dict) and isinstance(item.get("image_url"), str):
            item = item["image_url"]
        if not isinstance(item, str):
            raise InvalidRequest(f"{field} must be base64 PNG, JPEG or WebP images; got {type(item).__name__}",
                                 param=field)
        out.append(decode_base64(item, field=field))
    return out


def optional_image_from_json(data: dict[str, Any], field: str) -> bytes | None:
    """An optional image in a JSON body: base64 text (a data URL too), or OpenAI's ``{"image_url":
    "data:..."}``; None when absent. The field is taken out of ``data``."""
    value = data.pop(field, None)
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("image_url"), str):
        value = value["image_url"]
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a base64 PNG, JPEG or WebP image; got {type(value).__name__}",
                             param=field)
    return decode_base64(value, field=field)


async def optional_form_image(data: dict[str, Any], files: dict[str, list[UploadFile]], field: str) -> bytes | None:
    """An optional image in a form: one uploaded file, or base64 text; None when absent. The field is
    taken out of ``data``."""
    uploads = files.get(field, [])
    text = data.pop(field, None)
    if len(uploads) > 1:
        raise InvalidRequest(f"{field} must be one file; got {len(uploads)} files", param=field)
    if uploads:
        return await uploads[0].read()
    if text is None or text == "":
        return None
    return decode_base64(text, field=field)
