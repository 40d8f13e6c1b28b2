"""A load generator: C concurrent HTTP/1.1 clients (one keep-alive connection each, closed loop) on
loopback, in one asyncio event loop.

On a 2-core machine the client shares the CPU with the server, so it must cost as little as it can:
each connection is an ``asyncio.Protocol`` that writes a prepared request and parses the status line
and ``Content-Length`` of the answer, nothing more (uvloop when installed). httpx used three times
the CPU of aiohttp, and aiohttp about 3.5 times that of this (client CPU per request at 16 clients,
three alternating runs of 2000 requests: 0.21-0.26 vs 0.06-0.07 ms), CPU that the server's two cores
would otherwise have (docs/performance.md).
The generator should measure the server, not itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def images_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class ProtocolError(Exception):
    """The server's answer was not an HTTP/1.1 response this client can read."""


class _Client(asyncio.Protocol):
    """One connection: sends a request, reads its answer, sends the next, until ``next_body`` is out."""

    def __init__(self, head: bytes, next_body: Callable[[], bytes | None], result: LoadResult, done: asyncio.Future[None]):
        self.head = head
        self.next_body = next_body
        self.result = result
        self.done = done
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.status = 0
        self.body_end = -1  # index in the buffer where the current answer ends; -1: headers not read yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send_next()

    def _send_next(self) -> None:
        body = self.next_body()
        if body is None:
            self.transport.close()  # type: ignore[union-attr]
            return
        self.started = time.perf_counter()
        self.transport.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.body_end < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.status, length = _parse_head(bytes(self.buffer[:end]))
                self.body_end = end + 4 + length
            if len(self.buffer) < self.body_end:
                return
            del self.buffer[:self.body_end]
            self.body_end = -1
            self.result.latencies.append(time.perf_counter() - self.started)
            self.result.statuses[self.status] = self.result.statuses.get(self.status, 0) + 1
            self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if self.body_end >= 0 or self.buffer:
            self.done.set_exception(ProtocolError(f"connection closed in the middle of an answer ({exc})"))
        else:
            self.done.set_result(None)


def _parse_head(head: bytes) -> tuple[int, int]:
    """Status code and Content-Length of a response head (the server answers with a length)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(parts[1]), int(value.strip())
    raise ProtocolError(f"answer without Content-Length (status {parts[1].decode()})")


async def _run(url: str, body: Callable[[int], dict], concurrency: int, total: int, timeout: float) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    result = LoadResult(concurrency, total, 0.0)
    counter = iter(range(total))

    def next_body() -> bytes | None:
        i = next(counter, None)
        return None if i is None else json.dumps(body(i)).encode()

    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    done: list[asyncio.Future[None]] = []
    for _ in range(concurrency):
        finished: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda f=finished: _Client(head, next_body, result, f), host, port)
        done.append(finished)
    await asyncio.wait_for(asyncio.gather(*done), timeout)
    result.seconds = time.perf_counter() - started
    return result


def run_load(url: str, body: Callable[[int], dict], concurrency: int, total: int, timeout: float = 3600) -> LoadResult:
    try:
        import uvloop
    except ImportError:  # not on Windows: asyncio's own loop
        return asyncio.run(_run(url, body, concurrency, total, timeout))
    return uvloop.run(_run(url, body, concurrency, total, timeout))
