"""Bounds on reading a request's headers, which uvicorn 0.54's httptools protocol does not have.

Found by attacking a live server: 1000 connections trickling header bytes stayed open 70 s and more;
21,000 half-sent requests exhausted the API worker's file descriptors (``/livez``, ``/readyz``,
``/generate`` got empty replies); one 64 MB header line was accepted (200), and four ~120 MB headers
raised the API's memory from 525 to 908 MB, not returned after. uvicorn's h11 protocol has
``h11_max_incomplete_event_size``; its httptools protocol (the one it picks when httptools is
installed, as here) has no limit and no timeout for headers. ``bound_request_headers``:

- answers 431 and closes when a request's line and headers pass ``max_bytes`` before they are
  complete (counted per received chunk, so memory stays within one read of the cap);
- answers 408 and closes a connection whose request headers are not complete ``timeout_s`` after
  it opened or after the request began (a connection that sends nothing included).

Upstream: none known. Applied only on uvicorn ``WRITTEN_FOR`` (``version_guard``); elsewhere it warns
once and changes nothing (then put a proxy with header limits in flow).
"""

from __future__ import annotations

import json
from typing import Any

from t2i_core.common.version_guard import written_for

WRITTEN_FOR = "0.54"


def _reply(protocol: Any, status: int, reason: str, message: str) -> None:
    body = json.dumps({"error": message, "param": None, "code": "request_headers"}).encode()
    protocol.transport.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n".encode("latin-1") + body
    )
    protocol.transport.close()


def bound_request_headers(max_bytes: int, timeout_s: float) -> None:
    if not written_for("uvicorn", WRITTEN_FOR, "bound_request_headers"):
        return
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if getattr(HttpToolsProtocol.data_received, "_t2i_patched", False):
        return
    connection_made, connection_lost = HttpToolsProtocol.connection_made, HttpToolsProtocol.connection_lost
    data_received = HttpToolsProtocol.data_received
    on_message_begin, on_headers_complete = HttpToolsProtocol.on_message_begin, HttpToolsProtocol.on_headers_complete

    def start_timer(self: Any) -> None:
        if getattr(self, "_t2i_header_timer", None) is None:
            self._t2i_header_timer = self.loop.call_later(timeout_s, expired, self)

    def stop_timer(self: Any) -> None:
        timer, self._t2i_header_timer = getattr(self, "_t2i_header_timer", None), None
        if timer is not None:
            timer.cancel()

    def expired(self: Any) -> None:
        self._t2i_header_timer = None
        if not self.transport.is_closing():
            _reply(self, 408, "Request Timeout",
                   f"the request's headers did not arrive within {timeout_s:g}s (T2I_HEADER_TIMEOUT_S)")

    def patched_connection_made(self: Any, transport: Any) -> None:
        connection_made(self, transport)
        self._t2i_header_bytes, self._t2i_reading_headers = 0, False
        start_timer(self)  # the first request's headers are due from now

    def patched_connection_lost(self: Any, exc: Exception | None) -> None:
        stop_timer(self)
        connection_lost(self, exc)

    def patched_on_message_begin(self: Any) -> None:
        on_message_begin(self)
        self._t2i_header_bytes, self._t2i_reading_headers = 0, True
        start_timer(self)

    def patched_on_headers_complete(self: Any) -> None:
        self._t2i_reading_headers = False
        stop_timer(self)
        on_headers_complete(self)

    def patched_data_received(self: Any, data: bytes) -> None:
        data_received(self, data)
        if getattr(self, "_t2i_reading_headers", False) and not self.transport.is_closing():
            self._t2i_header_bytes += len(data)
            if self._t2i_header_bytes > max_bytes:
                stop_timer(self)
                _reply(self, 431, "Request Header Fields Too Large",
                       f"the request line and headers are more than {max_bytes} bytes; the limit is {max_bytes} "
                       "(T2I_MAX_HEADER_BYTES)")

    patched_data_received._t2i_patched = True  # type: ignore[attr-defined]
    HttpToolsProtocol.connection_made = patched_connection_made  # type: ignore[method-assign]
    HttpToolsProtocol.connection_lost = patched_connection_lost  # type: ignore[method-assign]
    HttpToolsProtocol.on_message_begin = patched_on_message_begin  # type: ignore[method-assign]
    HttpToolsProtocol.on_headers_complete = patched_on_headers_complete  # type: ignore[method-assign]
    HttpToolsProtocol.data_received = patched_data_received  # type: ignore[method-assign]
