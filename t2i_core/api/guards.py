"""What BentoML does not do for a public endpoint, as one ASGI middleware on the API service:

- API keys (``T2I_API_KEYS``, ``T2I_API_KEYS_FILE``): generation routes need ``Authorization: Bearer
  <key>`` (401); health, metrics, docs and image links stay open; the admin key is also accepted
  wherever an API key is. The request's key record (name, role, class, weight, limits) is resolved
  once here and handed on (``keys.context``: the ASGI scope and a context variable); its name goes
  on the request's log line. A key's own ``max_concurrent`` is counted here too (429 naming it).
- Body cap (``T2I_MAX_BODY_BYTES``): 413 from ``Content-Length`` before the body is read, or as soon
  as a chunked body passes the cap.
- Bounded work (``T2I_MAX_IN_FLIGHT``): beyond that many generation requests in flight, new ones
  get 429 with ``Retry-After`` at once instead of queueing without limit. A generation request counts
  once its whole body has arrived, which must happen within ``T2I_BODY_TIMEOUT_S`` (else 408): slow
  uploads cannot lock everyone out.
- Strict fields on the native routes' JSON bodies (every body BentoML parses as JSON, whatever its
  Content-Type): an unknown field is a 400 naming it; a task's input is validated at submit.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Callable

from t2i_core.api import request_log
from t2i_core.api.asgi_receive import no_receive, replay_body
from t2i_core.api.keys.context import SCOPE_KEY, serving
from t2i_core.api.keys.limits import KeyLimits
from t2i_core.api.keys.records import ANONYMOUS_KEY, ApiKey
from t2i_core.api.keys.ring import KeyRing
from t2i_core.common import metrics
from t2i_core.common.config import Settings
from t2i_core.common.errors import (
    BodyTimeout, ClientClosed, InvalidRequest, PayloadTooLarge, ShuttingDown, T2IError, TooManyRequests, Unauthorized,
)
from t2i_core.common.shutdown import DRAINING
from t2i_core.api.error_shapes import Shape, error_response, native
from t2i_core.common.paths import GENERATION_PATHS, TASK_STARTS
from t2i_core.state.aio import call

OPEN_PREFIXES = ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json", "/static",
                 "/v1/images/files/", "/admin/", "/ui", "/playground")


class InFlight:
    """Generation requests in flight in this process, and since when it has had none (for the drain)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle_since: float | None = time.monotonic()

    def enter(self) -> None:
        self.count += 1
        self._idle_since = None
        metrics.set_in_flight(self.count)

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle_since = time.monotonic()
        metrics.set_in_flight(self.count)

    def idle_since(self) -> float | None:
        return self._idle_since


#: one per API process: the guard counts here, the SIGTERM drain waits on it
IN_FLIGHT = InFlight()


class _TooLarge(Exception):
    pass


def _body_over(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is more than {limit} bytes; the limit is {limit} (T2I_MAX_BODY_BYTES)")


class _Disconnected(Exception):
    """The client left before its body had arrived."""


def _parsed_as_json(headers: dict[bytes, bytes]) -> bool:
    """BentoML parses every body that is not a form as JSON, whatever its Content-Type says
    (``text/plain``, ``APPLICATION/JSON``, none): the field checks must cover the same bodies."""
    content_type = headers.get(b"content-type", b"").decode("latin-1").strip().lower()
    return not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))


class GuardMiddleware:
    def __init__(self, app: Any, settings: Settings | None = None, strict_fields: dict[str, frozenset[str]] | None = None,
                 shape_for: Callable[[dict[str, Any]], Shape] | None = None, keyring: KeyRing | None = None,
                 limits: KeyLimits | None = None):
        self.app = app
        self.settings = settings or Settings.from_env()
        #: the keys accepted now (the admin key among them: the admin may do what any client may)
        self.keyring = keyring or KeyRing(self.settings)
        self.limits = limits
        self.strict_fields = strict_fields or {}
        #: the error shape of the surface a request goes to (``Surfaces.shape_for``; native by default)
        self.shape_for = shape_for or (lambda scope: native)
        self.in_flight = IN_FLIGHT

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
        try:
            if self.keyring.sync_due():  # another worker reloaded the keys file
                await call(self.keyring.state, self.keyring.sync)  # type: ignore[arg-type]
            key = self._resolve_key(headers, path)
            scope[SCOPE_KEY] = key
            if key is not ANONYMOUS_KEY:
                request_log.note(key=key.name)
            self._check_content_type(headers)
            length = self._content_length(headers)
            limit = self.settings.max_body_bytes
            if length is not None and length > limit:
                raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit} (T2I_MAX_BODY_BYTES)")
            counted = path in GENERATION_PATHS and scope.get("method") == "POST"
            if DRAINING.is_set() and (counted or path.startswith("/readyz")):
                raise ShuttingDown("the server is shutting down; send the request to another replica or retry")
            if counted:
                self._check_capacity()  # refused before its body is read when full already
        except T2IError as err:
            await self._reject(scope, send, path, err)
            return
        if not counted:
            with serving(key):
                await self._run_uncounted(scope, receive, send, path, limit)
            return
        # A generation request takes an in-flight slot only once its whole body has arrived (read here,
        # bounded in size and time): slow uploads cannot hold the slots of the requests that can run.
        try:
            body = await self._read_whole_body(receive, limit)
            if path in self.strict_fields and _parsed_as_json(headers):
                self._check_fields(path, body)
            self._check_capacity()
        except _Disconnected:  # nobody reads the answer: it is for the request's log line (499)
            await self._reject(scope, send, path, ClientClosed("the client left while sending its body"))
            return
        except T2IError as err:
            await self._reject(scope, send, path, err)
            return
        # a task's slot is taken at submit for as long as the task runs (tasks/routes.py), not here
        slot = None if path in TASK_STARTS or self.limits is None else uuid.uuid4().hex
        if slot is not None and self.limits is not None:
            try:
                await self.limits.enter(key, slot, self.settings.retry_after_s)
            except T2IError as err:
                await self._reject(scope, send, path, err)
                return
        self.in_flight.enter()
        try:
            with serving(key):
                await self.app(scope, replay_body(body, receive), send)
        finally:
            self.in_flight.leave()
            if slot is not None and self.limits is not None:
                await self.limits.leave(key, slot)

    async def _run_uncounted(self, scope: dict[str, Any], receive: Any, send: Any, path: str, limit: int) -> None:
        try:
            await self._run_limited(scope, receive, send, limit)
        except _TooLarge:
            await self._reject(scope, send, path, _body_over(limit))

    async def _read_whole_body(self, receive: Any, limit: int) -> bytes:
        timeout = self.settings.body_timeout_s
        try:
            return await asyncio.wait_for(self._read_body(receive, limit), timeout)
        except asyncio.TimeoutError:
            raise BodyTimeout(
                f"the request body did not arrive within {timeout}s (T2I_BODY_TIMEOUT_S)", code="body_timeout"
            ) from None
        except _TooLarge:
            raise _body_over(limit) from None

    # ---- checks --------------------------------------------------------------------------------
    def _check_capacity(self) -> None:
        if self.in_flight.count >= self.settings.max_in_flight:
            raise TooManyRequests(
                f"the server is busy: {self.in_flight.count} requests in flight, the limit is "
                f"{self.settings.max_in_flight} (T2I_MAX_IN_FLIGHT); retry after {self.settings.retry_after_s}s"
            )

    def _resolve_key(self, headers: dict[bytes, bytes], path: str) -> ApiKey:
        """The record of the request's key; without a key that is known: anonymous where no key is
        needed (a server without keys, the open paths), else Unauthorized."""
        header = headers.get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        token = given.strip().decode("utf-8", "surrogateescape") if scheme.lower() == b"bearer" else ""
        key = self.keyring.lookup(token) if token else None
        if key is not None:
            return key
        if not self.keyring.required or path == "/" or path.startswith(OPEN_PREFIXES):
            return ANONYMOUS_KEY
        raise Unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")

    @staticmethod
    def _check_content_type(headers: dict[bytes, bytes]) -> None:
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type.lower().startswith("multipart/form-data") and "boundary=" not in content_type:
            raise InvalidRequest(
                f"Content-Type {content_type!r} has no boundary parameter; multipart bodies need one",
                param="content-type", code="invalid_content_type",
            )

    @staticmethod
    def _content_length(headers: dict[bytes, bytes]) -> int | None:
        raw = headers.get(b"content-length")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    def _check_fields(self, path: str, body: bytes) -> None:
        try:
            data = json.loads(body or b"{}")
        except RecursionError:  # BentoML's own parse would fail the same way, with a 500
            raise InvalidRequest("request body is not valid JSON: nested too deeply", code="invalid_json") from None
        except ValueError:
            return  # the route answers invalid JSON itself
        if isinstance(data, dict):
            unknown = sorted(set(data) - self.strict_fields[path])
            if unknown:
                known = ", ".join(sorted(self.strict_fields[path]))
                raise InvalidRequest(
                    f"unknown field(s) {', '.join(map(repr, unknown))} for {path}; the fields are: {known}",
                    param=unknown[0], code="unknown_field",
                )

    # ---- body ----------------------------------------------------------------------------------
    @staticmethod
    async def _read_body(receive: Any, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def _run_limited(self, scope: dict[str, Any], receive: Any, send: Any, limit: int) -> None:
        """Run the app; if the body passes ``limit`` while it is read, answer 413 instead."""
        size = 0
        too_large = False
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal size, too_large
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    too_large = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if too_large:
                return  # the app's own error for the aborted read is replaced by the 413
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if too_large and not started:
            raise _TooLarge()

    async def _reject(self, scope: dict[str, Any], send: Any, path: str, err: T2IError) -> None:
        headers = ({"Retry-After": str(err.retry_after_s or self.settings.retry_after_s)}
                   if isinstance(err, TooManyRequests) else {})
        if isinstance(err, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(err, ShuttingDown):
            headers["Connection"] = "close"
        response = error_response(err, self.shape_for(scope), headers)
        await response(scope, no_receive, send)



#: the HTTP methods of the API's routes (tests check every route's method is here)
CORS_METHODS = ("GET", "POST", "PUT", "OPTIONS")


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """Starlette CORSMiddleware options, or None when CORS is off. Never "*" with credentials."""
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if not origins:
        return None
    return {
        "allow_origins": origins,
        "allow_credentials": "*" not in origins,
        # every method a route uses: PUT cancels a task (a browser app must be able to)
        "allow_methods": list(CORS_METHODS),
        "allow_headers": ["Authorization", "Content-Type", "X-Request-ID"],
        "expose_headers": ["X-Seed", "X-Model", "X-Image-Size", "X-Batch-Size", "X-Inference-Time", "X-Total-Time",
                           "X-Request-ID", "X-Speed", "X-Steps-Skipped", "X-Cache-Skipped"],
        "max_age": 600,
    }
