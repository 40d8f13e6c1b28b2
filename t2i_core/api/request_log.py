"""One structured log line per request, with a request id.

``RequestLogMiddleware`` (outermost on the API service) takes the id from ``X-Request-ID`` (or makes
one), echoes it on the response, and when the response has been sent writes one JSON line on the
``t2i.requests`` logger: id, method, route, status, time, and what the handlers noted on the request's
``RequestRecord`` with ``note()`` (model, size, steps, seeds, batch size, stage timings, error code;
``stream_error_status`` when a streamed answer failed after its 200 was sent).
Prompts are noted only when ``T2I_LOG_PROMPTS`` is on. It also counts errors by route and code.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from t2i_core.common import metrics
from t2i_core.common.paths import KNOWN_ROUTES

log = logging.getLogger("t2i.requests")
#: failures of the layers below (not request lines)
failures = logging.getLogger("t2i.api")
HEADER = b"x-request-id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
#: probes (a 503 while starting is normal), metrics and the playground's files: no line
QUIET_PREFIXES = ("/livez", "/readyz", "/healthz", "/metrics", "/ui/")


@dataclass
class RequestRecord:
    request_id: str
    method: str = ""
    route: str = ""
    started: float = field(default_factory=time.perf_counter)
    fields: dict[str, Any] = field(default_factory=dict)
    status: int = 500


_current: ContextVar[RequestRecord | None] = ContextVar("t2i_request", default=None)


def current() -> RequestRecord | None:
    return _current.get()


def note(**fields: Any) -> None:
    """Add fields to the current request's log line (no-op outside a request)."""
    record = _current.get()
    if record is not None:
        record.fields.update(fields)


@contextmanager
def recording(route: str, method: str = "POST", event: str = "request", **fields: Any) -> Iterator[RequestRecord]:
    """A record of its own for work done after the HTTP answer (a task): one line when it ends,
    with the request id of the request that started it. Set ``record.status`` before leaving."""
    parent = _current.get()
    record = RequestRecord(parent.request_id if parent else uuid.uuid4().hex, method, route, fields=dict(fields))
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)
        emit(record, record.status, event)


def route_label(path: str) -> str:
    return path if path in KNOWN_ROUTES else "other"


def request_id_from(headers: dict[bytes, bytes]) -> str:
    """The client's ``X-Request-ID`` when it is a sane token (1-128 of ``A-Za-z0-9._:/+=-``), else a new one."""
    given = headers.get(HEADER, b"").decode("latin-1").strip()
    return given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex


def _ensure_handler() -> None:
    """A handler of our own that prints the bare JSON line (BentoML's handlers prefix their format
    and its root logger drops INFO)."""
    if not getattr(log, "_t2i_ready", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.handlers[:] = [handler]
        log.setLevel(logging.INFO)
        log.propagate = False
        log.disabled = False  # BentoML's logging config disables loggers created before it runs
        log._t2i_ready = True  # type: ignore[attr-defined]


def _worker_index() -> int | None:
    from bentoml._internal.context import server_context

    return server_context.worker_index


def emit(record: RequestRecord, status: int, event: str = "request") -> dict[str, Any]:
    """Write the line for ``record`` (answered with ``status``); count it if it is an error."""
    line: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "event": event,
        "request_id": record.request_id,
        "method": record.method,
        "route": record.route,
        "status": status,
        "duration_s": round(time.perf_counter() - record.started, 4),
        **record.fields,
    }
    if (worker := _worker_index()) is not None:  # which API worker answered (T2I_API_WORKERS)
        line["worker"] = worker
    if status >= 400 or "stream_error_status" in record.fields:  # a stream that failed after its 200 too
        metrics.record_request_error(route_label(record.route), str(record.fields.get("error") or f"http_{status}"))
    if event == "request" and record.fields.get("key"):  # the key's name (never the key), by outcome
        metrics.record_key_request(str(record.fields["key"]), "ok" if status < 400 else
                                   str(record.fields.get("error") or f"http_{status}"))
    _ensure_handler()
    log.info(json.dumps(line, default=str, separators=(",", ":")))
    return line


class RequestLogMiddleware:
    """One line per request (and the ``X-Request-ID`` header). ``unanswered(scope)``: the response for a
    request whose layers below raised before answering (a 500 in its surface's shape)."""

    def __init__(self, app: Any, unanswered: Callable[[dict[str, Any]], Any] | None = None):
        self.app = app
        self.unanswered = unanswered

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        record = RequestRecord(request_id_from(dict(scope.get("headers") or [])), scope.get("method", ""), path)
        token = _current.set(record)
        quiet = path.startswith(QUIET_PREFIXES) or path == "/ui"
        status = 500
        logged = started = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, logged, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, record.request_id.encode())]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body") and not logged:
                logged = True  # at the last byte: a task's background work must not delay the line
                if not quiet:
                    emit(record, status)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - an error escaped a layer below: answer now, not at a timeout
            if started:
                raise
            failures.exception("%s %s failed before answering", record.method, path)
            if self.unanswered is None:
                raise
            await self.unanswered(scope)(scope, receive, send_with_id)
        finally:
            if not logged and not quiet:
                emit(record, status)
            _current.reset(token)
