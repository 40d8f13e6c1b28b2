"""Form parsing that refuses the damaged bodies Starlette 1.10 reads silently (``strict_form_parsing``).

Found by sending damaged bodies to every route; each read below became a request with a field lost
or changed rather than a 400 naming the problem:

- a multipart body that ends before its closing boundary (cut short, or empty): python-multipart
  drops the part it was in and Starlette answers the parts before it, so a truncated upload lost its
  last field ("prompt is required", "image is required") instead of saying that the body was cut;
- a text part that is not valid in its charset (UTF-8 unless the Content-Type names another) was
  decoded as Latin-1 instead: a prompt of mojibake; in a form-urlencoded body, percent-escapes that
  are not UTF-8 became U+FFFD.

Each is now a ``MultiPartException`` naming the field, which Starlette answers (or raises as) a 400.
python-multipart also logs a WARNING for every damaged body before it raises: the 400 and the request
log line carry its reason, so its logger keeps only errors (a client sending bad bodies cannot flood
the log).

Upstream: python-multipart's ``MultipartParser.finalize`` has a TODO to check the end state; none
known for the Latin-1 fallback. Applied only on Starlette ``WRITTEN_FOR`` (``version_guard``).
"""

from __future__ import annotations

import logging
from typing import Any

from t2i_core.common.version_guard import written_for

WRITTEN_FOR = "1.10"


def _not_text(raw: bytes, charset: str) -> UnicodeDecodeError | None:
    try:
        raw.decode(charset)
    except UnicodeDecodeError as exc:
        return exc
    return None


def _where(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start]:02x} at position {exc.start}"


def strict_form_parsing() -> None:
    if not written_for("starlette", WRITTEN_FOR, "strict_form_parsing"):
        return
    from urllib.parse import unquote_plus, unquote_to_bytes

    from starlette.datastructures import FormData
    from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

    if getattr(MultiPartParser.parse, "_t2i_patched", False):
        return
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    parse, on_part_end, on_field_end = MultiPartParser.parse, MultiPartParser.on_part_end, FormParser.on_field_end

    def on_end(self: Any) -> None:  # python-multipart calls it at the closing boundary only
        self._t2i_ended = True

    async def strict_parse(self: Any) -> FormData:
        form = await parse(self)
        if not getattr(self, "_t2i_ended", False):
            await form.close()
            raise MultiPartException("the body ends before its closing boundary ('--' + boundary + '--'): "
                                     "it is empty or was cut short")
        return form

    def strict_part_end(self: Any) -> None:
        part = self._current_part
        if part.file is None and (bad := _not_text(bytes(part.data), self._charset)) is not None:
            raise MultiPartException(f"field {part.field_name[:100]!r} is not valid {self._charset} text: {_where(bad)}")
        on_part_end(self)

    def strict_field_end(self: Any) -> None:
        for what, raw in (("name", self._field_name), ("value", self._field_value)):
            bad = _not_text(unquote_to_bytes(bytes(raw).replace(b"+", b" ")), "utf-8")
            if bad is not None:
                name = unquote_plus(bytes(self._field_name).decode("latin-1"))[:100]
                raise MultiPartException(f"field {name!r}: its {what} is not valid UTF-8 once "
                                         f"percent-decoded: {_where(bad)}")
        on_field_end(self)

    strict_parse._t2i_patched = True  # type: ignore[attr-defined]
    MultiPartParser.on_end = on_end  # type: ignore[method-assign]
    MultiPartParser.parse = strict_parse  # type: ignore[method-assign]
    MultiPartParser.on_part_end = strict_part_end  # type: ignore[method-assign]
    FormParser.on_field_end = strict_field_end  # type: ignore[method-assign]
