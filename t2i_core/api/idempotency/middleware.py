"""``Idempotency-Key`` on every generation route and the task submit (ASGI middleware, after the guard:
the key's name scopes the idempotency keys, so two callers never share one).

- the first request with a key runs, and its 2xx answer (status, headers, body) is kept
  ``T2I_IDEMPOTENCY_TTL_S``;
- the same key with the same request (method, route, query, media type and body; a multipart body's
  boundary does not count) gets that answer again, byte for byte, with ``Idempotent-Replayed: true``,
  and nothing runs again;
- the same key with another request: 422 ``idempotency_key_reused``;
- the same key while the first still runs: the retry waits for it (a client that retries a request
  that timed out on its side gets the first answer, not a second image), at most for the request time
  limit, then 409; if the first ends without a 2xx answer the retry runs itself;
- a streamed answer (server-sent events) is not kept: a retry runs again;
- an answer too large for ``T2I_IDEMPOTENCY_MAX_BYTES``, or dropped for room: a retry gets 409
  ``idempotent_answer_dropped`` rather than a second generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, Callable

from t2i_core.api import request_log
from t2i_core.api.asgi_receive import no_receive, replay_body
from t2i_core.api.error_shapes import Shape, error_response, native
from t2i_core.api.idempotency.store import Answer, IdempotencyStore, record_key
from t2i_core.api.keys.context import SCOPE_KEY
from t2i_core.api.keys.records import ANONYMOUS
from t2i_core.common.errors import Conflict, IdempotencyKeyReused, InvalidRequest, T2IError
from t2i_core.common.paths import GENERATION_PATHS
from t2i_core.state.aio import call

HEADER = b"idempotency-key"
MAX_KEY = 255
#: answer headers never replayed (set again by the layers outside, or hop by hop)
NOT_KEPT = frozenset({"content-length", "date", "server", "x-request-id", "connection", "transfer-encoding"})
#: first and last seconds between two looks at a first request that still runs
WAIT_FIRST_S, WAIT_MAX_S = 0.05, 0.5


def fingerprint(method: str, path: str, query: bytes, content_type: str, body: bytes) -> str:
    """What makes two requests the same one: method, route, query, media type and body (a multipart
    body with its boundary replaced: a client's retry draws a new one)."""
    media, _, params = content_type.partition(";")
    if media.strip().lower().startswith("multipart/"):
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.lower() == "boundary" and value:
                body = body.replace(value.strip('"').encode("latin-1"), b"<boundary>")
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, media.strip().lower().encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


class IdempotencyMiddleware:
    def __init__(self, app: Any, store: IdempotencyStore | None = None, wait_s: float = 150.0,
                 shape_for: Callable[[dict[str, Any]], Shape] | None = None,
                 paths: frozenset[str] = GENERATION_PATHS | {"/tasks/generate/submit"}):
        self.app = app
        self.store = store
        #: how long a retry waits for the first request that still runs
        self.wait_s = wait_s
        self.shape_for = shape_for or (lambda scope: native)
        self.paths = paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        given = headers.get(HEADER)
        if (given is None or self.store is None or not self.store.enabled or scope.get("method") != "POST"
                or scope.get("path") not in self.paths):
            await self.app(scope, receive, send)
            return
        try:
            idem = given.decode("ascii").strip()
            if not 1 <= len(idem) <= MAX_KEY or not idem.isprintable():
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            await self._answer_error(scope, send, InvalidRequest(
                f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters; got {len(given)} bytes",
                param="Idempotency-Key", code="invalid_idempotency_key"))
            return
        body, more = await _read_body(receive)
        if body is None:  # the client left
            await self.app(scope, replay_body(b"", receive), send)
            return
        key_name = getattr(scope.get(SCOPE_KEY), "name", ANONYMOUS)
        key = record_key(key_name, idem)
        print_ = fingerprint(scope["method"], scope["path"], scope.get("query_string", b""),
                             headers.get(b"content-type", b"").decode("latin-1"), body)
        request_log.note(idempotency_key=idem[:64])
        deadline = time.monotonic() + self.wait_s
        pause = WAIT_FIRST_S
        store = self.store
        while True:
            outcome, answer = await call(store.state, store.claim, key, print_)
            if outcome == "claimed":
                await self._run_first(scope, body, receive, send, key, print_)
                return
            if outcome == "done" and answer is not None:
                request_log.note(idempotent_replay=True)
                await _send_answer(send, answer)
                return
            if outcome == "reused":
                await self._answer_error(scope, send, IdempotencyKeyReused(
                    f"Idempotency-Key {idem[:64]!r} was used with another request (another body, route or method) "
                    f"within the last {int(store.ttl_s)}s (T2I_IDEMPOTENCY_TTL_S); send a new key for a new "
                    "request", param="Idempotency-Key"))
                return
            if outcome == "dropped":
                await self._answer_error(scope, send, Conflict(
                    f"the answer to Idempotency-Key {idem[:64]!r} was not kept (larger than, or dropped for room "
                    f"in, T2I_IDEMPOTENCY_MAX_BYTES={store.max_bytes}); it was delivered to the first request",
                    param="Idempotency-Key", code="idempotent_answer_dropped"))
                return
            if time.monotonic() >= deadline:  # running: the first request has not answered yet
                await self._answer_error(scope, send, Conflict(
                    f"a request with Idempotency-Key {idem[:64]!r} is still running after {self.wait_s:.0f}s; "
                    "retry later for its answer", param="Idempotency-Key", code="idempotent_request_running"))
                return
            await asyncio.sleep(pause)
            pause = min(WAIT_MAX_S, pause * 2)

    async def _run_first(self, scope: dict[str, Any], body: bytes, receive: Any, send: Any, key: str,
                         print_: str) -> None:
        assert self.store is not None
        store = self.store
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        keep = True

        async def capture(message: dict[str, Any]) -> None:
            nonlocal keep
            if message["type"] == "http.response.start":
                start.update(message)
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
                keep = 200 <= message["status"] < 300 and not content_type.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and keep:
                chunks.append(message.get("body", b""))
            await send(message)

        kept = False
        try:
            await self.app(scope, replay_body(body, receive), capture)
            if keep and start:
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])
                           if k.decode("latin-1").lower() not in NOT_KEPT]
                await call(store.state, store.keep, key, print_, Answer(start["status"], headers, b"".join(chunks)))
                kept = True
        finally:
            if not kept:
                try:
                    await call(store.state, store.release, key)
                except T2IError:
                    pass  # the marker lapses by itself

    async def _answer_error(self, scope: dict[str, Any], send: Any, err: T2IError) -> None:
        await error_response(err, self.shape_for(scope))(scope, no_receive, send)


async def _send_answer(send: Any, answer: Answer) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    headers += [(b"content-length", str(len(answer.body)).encode()), (b"idempotent-replayed", b"true")]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def _read_body(receive: Any) -> tuple[bytes | None, bool]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), False
