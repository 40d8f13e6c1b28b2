"""Workarounds for BentoML 1.4.39 costs and bugs found by measuring this server.

- ``NO_SESSION_RENEWAL``: BentoML's inter-service client renews its HTTP session every 100 requests
  (or 300 s) and closes the old one while other requests are still in flight on it; they failed
  (500) after the engine had done the work. The engine runs beside the API: nothing to renew for.
- ``memoize_media_types``: for a root output (e.g. ``list[EngineResult]``) BentoML works out the
  response's media type by generating the output model's whole JSON schema, on every response: a
  profile of the engine under load showed about 40% of its event loop's busy time there. The
  media type of a model never changes, so it is computed once per model and kept on it.
- ``trace_only_when_exported``: BentoML wraps every request in OpenTelemetry's ASGI middleware (a server
  span plus one span per ASGI message) even when no tracing exporter is configured, where no span can
  ever leave the process. Measured in process: about a quarter of the API's CPU per request
  (1.27-1.31 vs 1.62-1.75 ms). Without ``tracing.exporter_type`` the middleware is left out; with one,
  nothing changes.
- ``cache_local_callers``: every ``self.<api method>`` access builds a new wrapper and calls
  ``inspect.signature`` (BentoML's API method descriptor), once per request; the wrapper depends only on
  the method and the instance, so it is built once per pair.
- ``cancel_request_timers``: BentoML's ``TimeoutMiddleware`` keeps each request's timer (and a future)
  alive for the whole ``traffic.timeout`` (150 s here) after the answer was sent: ~54,000 live timers
  at 360 requests/s, API memory +12 MB and full collections of 70-115 ms. The timer is cancelled once
  the answer starts; a slow request still gets its 504. Paired at 16 clients: 1.085x images/s. An
  app that ends without answering (an error escaped it) gets a 500 at once instead of at the timer
  (a client waited the whole 150 s).
- ``engine_not_ready_is_503``: the API's ``/readyz`` asks the engine's ``/readyz`` (5 s); while the
  engine is still starting (loading its model), BentoML's probe catches only ``ServerTimeoutError``, so
  the total timeout (``asyncio.TimeoutError``) or a refused connection escaped: ``/readyz`` answered
  500 ``internal_error`` with a traceback in the log on every probe. An engine that does not answer
  is now "not ready": 503. The same bug as bentoml/BentoML#4023, fixed for the old runners by #4024
  (which catches ``ServerTimeoutError`` only: aiohttp's total timeout is another exception).
- ``strict_multipart_files``: multipart file fields never fetch a client-given URL and take one part
  (see its docstring).
- ``client_faults_are_4xx``: a body BentoML cannot parse (damaged multipart, text that is not UTF-8,
  invalid JSON, a field that fails validation) raised whatever its parser raised: Starlette's 400
  ``HTTPException`` or a ``ValueError`` became 500s, and every parse failure, 400s included, was logged
  at ERROR with a traceback (``Exception on /edit [POST]``): a client sending bad bodies flooded the
  log. Any failure to read a native route's body now goes through ``t2i_core.api.body_errors``
  (400 naming the problem, 499 for a client that left mid-body) in the native shape; BentoML's
  own 4xx errors (its 415 for a pickle body) are answered the same way. Client errors get the request
  log's one line; a traceback is left for the server's own faults.

Upstream: for the readyz probe see above; none of the others has an upstream issue we know of. (BentoML's
task store is not patched: the task routes are ours, see t2i_core/api/surfaces/tasks/routes.py; its
cancel bugs are bentoml/BentoML#5141 and #5695.)
Each patch is applied only on BentoML ``WRITTEN_FOR`` (``version_guard``); elsewhere it warns once
and leaves BentoML alone.
"""

from __future__ import annotations

from typing import Any

from t2i_core.common.version_guard import written_for

WRITTEN_FOR = "1.4.39"

NO_SESSION_RENEWAL = {"max_requests": 2**31 - 1, "max_age": 1e12}


def memoize_media_types() -> None:
    if not written_for("bentoml", WRITTEN_FOR, "memoize_media_types"):
        return
    from _bentoml_sdk.io_models import IOMixin

    original = IOMixin.__dict__["mime_type"].__func__
    if getattr(original, "_t2i_patched", False):
        return

    def mime_type(cls: Any) -> str:
        if cls.media_type is None:  # computed once per input/output model, then kept on the class
            cls.media_type = original(cls)
        return cls.media_type

    mime_type._t2i_patched = True  # type: ignore[attr-defined]
    IOMixin.mime_type = classmethod(mime_type)  # type: ignore[assignment,method-assign]


def trace_only_when_exported() -> None:
    if not written_for("bentoml", WRITTEN_FOR, "trace_only_when_exported"):
        return
    from _bentoml_impl.server.app import ServiceAppFactory

    original = ServiceAppFactory.middlewares
    if getattr(original.fget, "_t2i_patched", False):
        return

    def middlewares(self: Any) -> list[Any]:
        from bentoml._internal.configuration.containers import BentoMLContainer
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        chain = original.fget(self)
        if BentoMLContainer.tracing.exporter_type.get():
            return chain
        return [m for m in chain if m.cls is not OpenTelemetryMiddleware]

    patched = property(middlewares)
    patched.fget._t2i_patched = True  # type: ignore[union-attr]
    ServiceAppFactory.middlewares = patched  # type: ignore[method-assign]


def cache_local_callers() -> None:
    if not written_for("bentoml", WRITTEN_FOR, "cache_local_callers"):
        return
    import weakref

    from _bentoml_sdk.method import APIMethod

    original = APIMethod._local_call
    if getattr(original, "_t2i_patched", False):
        return
    cache: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()

    def _local_call(self: Any, instance: Any) -> Any:
        try:
            per_instance = cache.setdefault(instance, {})
        except TypeError:  # not weak-referenceable: build it each time, as BentoML does
            return original(self, instance)
        caller = per_instance.get(id(self))
        if caller is None:
            caller = per_instance[id(self)] = original(self, instance)
        return caller

    _local_call._t2i_patched = True  # type: ignore[attr-defined]
    APIMethod._local_call = _local_call  # type: ignore[method-assign]


def cancel_request_timers() -> None:
    if not written_for("bentoml", WRITTEN_FOR, "cancel_request_timers"):
        return
    import asyncio

    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.responses import JSONResponse

    if getattr(TimeoutMiddleware.__call__, "_t2i_patched", False):
        return

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        # BentoML 1.4.39's TimeoutMiddleware.__call__, with the timer cancelled when it is no longer needed
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            # the app may also end without answering (an error escaped it): then do not wait for the timer
            await asyncio.wait({waiter, fut}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                timer.cancel()
                if fut.exception() is not None:
                    resp = JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)
                    await resp(scope, receive, send)
                await fut  # re-raises the app's error for the server's log
                return
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
                await resp(scope, receive, send)
        else:
            timer.cancel()
            await fut  # wait for the future to finish
        finally:
            timer.cancel()

    __call__._t2i_patched = True  # type: ignore[attr-defined]
    TimeoutMiddleware.__call__ = __call__  # type: ignore[method-assign]


def engine_not_ready_is_503() -> None:
    if not written_for("bentoml", WRITTEN_FOR, "engine_not_ready_is_503"):
        return
    import asyncio

    import aiohttp
    from _bentoml_impl.client.proxy2 import AsyncClient

    if getattr(AsyncClient.is_ready, "_t2i_patched", False):
        return
    original = AsyncClient.is_ready

    async def is_ready(self: Any, timeout: int | None = None) -> bool:
        try:
            return await original(self, timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    is_ready._t2i_patched = True  # type: ignore[attr-defined]
    AsyncClient.is_ready = is_ready  # type: ignore[method-assign]


def strict_multipart_files() -> None:
    """BentoML 1.4.39's multipart parsing (``MultipartSerde.parse_request``), made safe for a public API:

    - a text value where a file field is expected was fetched as a URL by the server (``ensure_file``):
      a client could make the server request any address (127.0.0.1 was refused by BentoML's own
      check, ``file://`` and paths answered 500). An image is bytes (a file part) or base64: text for a
      file field is refused with a 400 naming the field;
    - two parts for one file field: the first was used silently; now a 400 naming the field;
    - a text part holding a 5000-digit number raised ``ValueError`` from ``json.loads`` (500): it is
      kept as text. A body that cannot be read at all is ``client_faults_are_4xx``'s.
    """
    if not written_for("bentoml", WRITTEN_FOR, "strict_multipart_files"):
        return
    import json

    from _bentoml_impl.serde import MultipartSerde
    from _bentoml_sdk.typing_utils import is_list_type, is_union_type
    from typing_extensions import get_args
    from starlette.datastructures import UploadFile

    from t2i_core.common.errors import InvalidRequest

    if getattr(MultipartSerde.parse_request, "_t2i_patched", False):
        return

    async def parse_request(self: Any, request: Any, cls: Any) -> Any:
        form = await request.form()
        data: dict[str, Any] = {}
        for key in form:
            values = form.getlist(key)
            if key in cls.multipart_fields:
                if not all(isinstance(v, UploadFile) for v in values):
                    raise InvalidRequest(f"{key} must be an uploaded file (a file part); got a text value", param=key)
                annotation = cls.model_fields[key].annotation
                if is_union_type(annotation):
                    annotation = get_args(annotation)[0]
                if is_list_type(annotation):
                    data[key] = values
                elif len(values) == 1:
                    data[key] = values[0]
                else:
                    raise InvalidRequest(f"{key} must be exactly one file; got {len(values)} files", param=key)
                continue
            value = form[key]
            if isinstance(value, UploadFile):
                value = await value.read()
            try:
                data[key] = json.loads(value)
            except ValueError:  # not JSON (plain text), or a number past Python's digit limit
                data[key] = value
        return cls.model_validate(data)

    parse_request._t2i_patched = True  # type: ignore[attr-defined]
    MultipartSerde.parse_request = parse_request  # type: ignore[method-assign]


class _UnreadableBody(Exception):
    """A native route's body could not be read: ``error`` is what its client gets."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.message)
        self.error = error


def client_faults_are_4xx() -> None:
    if not written_for("bentoml", WRITTEN_FOR, "client_faults_are_4xx"):
        return
    from _bentoml_impl.server.app import ServiceAppFactory
    from _bentoml_sdk.io_models import IOMixin
    from bentoml.exceptions import BentoMLException

    if getattr(ServiceAppFactory.api_endpoint, "_t2i_patched", False):
        return
    original_parse = IOMixin.from_http_request.__func__  # type: ignore[attr-defined]
    original_endpoint = ServiceAppFactory.api_endpoint

    async def from_http_request(cls: Any, request: Any, serde: Any) -> Any:
        try:
            return await original_parse(cls, request, serde)
        except Exception as exc:  # noqa: BLE001 - sorted by body_error; the server's own faults re-raised
            from t2i_core.api.body_errors import body_error

            error = body_error(exc, request.headers.get("content-type", ""))
            if error is None:
                raise
            raise _UnreadableBody(error) from None

    async def api_endpoint(self: Any, name: str, request: Any) -> Any:
        from t2i_core.api.error_shapes import error_response, native
        from t2i_core.common.errors import client_error_for_status

        try:
            return await original_endpoint(self, name, request)
        except _UnreadableBody as fault:
            error = fault.error
        except BentoMLException as exc:
            status = int(exc.error_code)
            if not 400 <= status < 500:
                raise
            error = client_error_for_status(status, str(exc))
        return error_response(error, native)  # BentoML's routes here are the native ones

    api_endpoint._t2i_patched = True  # type: ignore[attr-defined]
    IOMixin.from_http_request = classmethod(from_http_request)  # type: ignore[method-assign,assignment]
    ServiceAppFactory.api_endpoint = api_endpoint  # type: ignore[method-assign]
