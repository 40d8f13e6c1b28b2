"""Why a request body could not be read, as the error its client gets.

Every reader of a body sends the exception it got here: BentoML's parsing of the native routes
(``patches/bentoml.py``, ``client_faults_are_4xx``) and the compatibility routes' JSON and form readers
(``surfaces/reading.py``). A damaged body (bad multipart framing or part headers, text that is not
UTF-8, invalid or too deeply nested JSON, fields that fail validation) is a 400 naming the problem; a
client that left while sending its body is ``ClientClosed`` (499); anything else is the server's own
fault (a full disk while spooling an upload) and stays an exception: a logged 500.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from t2i_core.common.errors import ClientClosed, InvalidRequest, T2IError, describe_validation_errors


def body_error(exc: BaseException, content_type: str = "") -> T2IError | None:
    """The client's error for ``exc``, raised while reading a body sent as ``content_type``; None when
    ``exc`` is not the client's fault."""
    if isinstance(exc, T2IError):
        return exc
    if isinstance(exc, ClientDisconnect):
        return ClientClosed("the client left while sending its body")
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_input=False, include_url=False)
        message, param = describe_validation_errors(errors)
        broken = any(e.get("type") == "json_invalid" for e in errors)
        return InvalidRequest(message, param=param, code="invalid_json" if broken else None)
    if isinstance(exc, MultiPartException) or (isinstance(exc, HTTPException) and 400 <= exc.status_code < 500):
        kind = content_type.split(";")[0].strip().lower() or "form"
        return InvalidRequest(f"the {kind} body cannot be read: {_form_problem(exc)}", code="invalid_form")
    if isinstance(exc, RecursionError):
        return InvalidRequest("request body is not valid JSON: nested too deeply", code="invalid_json")
    if isinstance(exc, json.JSONDecodeError):
        return InvalidRequest(f"request body is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                              code="invalid_json")
    if isinstance(exc, UnicodeDecodeError):
        return InvalidRequest(f"request body is not valid {exc.encoding} text: byte 0x{exc.object[exc.start]:02x} "
                              f"at position {exc.start} ({exc.reason})", code="invalid_body")
    if isinstance(exc, ValueError):  # e.g. an integer past Python's digit limit (its hint is for Python code)
        reason = str(exc).split("; use sys.set_int_max_str_digits()")[0]
        return InvalidRequest(f"request body cannot be read: {reason}"[:500], code="invalid_body")
    return None


def _form_problem(exc: BaseException) -> str:
    """Starlette's message, with python-multipart's reason where Starlette hid it ("Invalid multipart
    data." says nothing of where): Starlette raises its 400 while handling its ``MultiPartException``,
    which it raised from python-multipart's error."""
    detail = str(exc.detail if isinstance(exc, HTTPException) else getattr(exc, "message", exc)).rstrip(".")
    if isinstance(exc, HTTPException) and isinstance(exc.__context__, MultiPartException):
        exc = exc.__context__
    if isinstance(exc, MultiPartException) and exc.__cause__ is not None:
        return f"{detail} ({exc.__cause__})"
    return detail
