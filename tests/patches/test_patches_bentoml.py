"""The BentoML cost workarounds (t2i_core/patches/bentoml.py) keep BentoML's behaviour."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
from pydantic import Field

from t2i_core.patches.bentoml import cache_local_callers

ROOT = Path(__file__).resolve().parents[2]

MIDDLEWARE_CLASSES = """
import service
app = service.API.to_asgi()
print(",".join(m.cls.__name__ for m in app.user_middleware))
"""


def _api_middlewares(tmp_path: Path, config: str) -> list[str]:
    path = tmp_path / "bentoml.yaml"
    path.write_text(config)
    env = {**os.environ, "BENTOML_CONFIG": str(path), "BENTOML_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", MIDDLEWARE_CLASSES], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1].split(",")


def test_tracing_middleware_only_when_spans_can_be_exported(tmp_path: Path) -> None:
    config = (ROOT / "configuration.yaml").read_text()
    without = _api_middlewares(tmp_path, config)
    assert "OpenTelemetryMiddleware" not in without
    assert "RequestLogMiddleware" in without and "RunnerTrafficMetricsMiddleware" in without
    tracing = "    tracing:\n      exporter_type: in_memory\n      sample_rate: 1.0\n"
    with_exporter = _api_middlewares(tmp_path, config.replace("\n  t2i:\n", "\n  t2i:\n" + tracing, 1))
    assert "OpenTelemetryMiddleware" in with_exporter
    assert set(without) == set(with_exporter) - {"OpenTelemetryMiddleware"}


@bentoml.service
class Echo:
    @bentoml.api
    def hello(self, name: str = Field(default="world"), punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    @bentoml.api
    def bye(self, name: str = "world") -> str:
        return f"bye {name}"


def test_api_method_wrappers_are_built_once_per_instance_and_keep_defaults() -> None:
    cache_local_callers()
    first, second = Echo(), Echo()
    assert first.hello is first.hello  # BentoML built a new wrapper (and a signature) on every access
    assert first.hello is not second.hello and first.hello is not first.bye
    assert first.hello() == "hello world!"  # a pydantic Field default is still filled in
    assert first.hello("you", punctuation="?") == "hello you?"
    assert second.bye(name="now") == "bye now"


@pytest.mark.parametrize("module", ["uvloop", "httptools"])
def test_fast_event_loop_and_http_parser_are_installed(module: str) -> None:
    """uvicorn picks uvloop and httptools when they are installed (its "auto" settings); the API's CPU
    per request fell from 2.05 to 1.77 ms with them (docs/performance.md)."""
    assert importlib.util.find_spec(module) is not None


def _timeout_middleware(app, timeout: float):
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from t2i_core.patches.bentoml import cancel_request_timers

    cancel_request_timers()
    return TimeoutMiddleware(app, timeout=timeout)


async def _call(middleware) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware({"type": "http", "path": "/generate", "method": "POST", "headers": []}, receive, send)
    return sent


def test_answered_requests_leave_no_timer_behind():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = _timeout_middleware(app, timeout=150)

    async def main():
        for _ in range(50):
            assert [m.get("status") for m in await _call(middleware)] == [200, None]
        loop = asyncio.get_running_loop()
        return [h for h in loop._scheduled if not h.cancelled()]  # asyncio's pending timers

    assert asyncio.run(main()) == []  # unpatched BentoML 1.4.39: 50 timers, each alive for 150 s


def test_a_request_that_answers_nothing_in_time_still_gets_504():
    async def app(scope, receive, send):
        await asyncio.sleep(10)

    sent = asyncio.run(_call(_timeout_middleware(app, timeout=0.05)))
    assert sent[0]["status"] == 504 and b"Not able to process the request in 0.05 seconds" in sent[1]["body"]


def test_an_engine_that_does_not_answer_its_readyz_is_not_ready() -> None:
    """BentoML's probe of a dependency raised (so the API's /readyz answered 500) when the engine's socket
    accepted but did not answer within the probe's timeout, or refused the connection."""
    import socket

    from _bentoml_impl.client.proxy2 import AsyncClient

    from t2i_core.patches.bentoml import engine_not_ready_is_503

    engine_not_ready_is_503()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()

    async def probe(url: str) -> bool:
        client = AsyncClient(url, server_ready_timeout=0)
        try:
            return await client.is_ready(1)
        finally:
            await client.close()

    try:
        assert asyncio.run(probe(f"http://127.0.0.1:{silent.getsockname()[1]}")) is False
        assert asyncio.run(probe(f"http://127.0.0.1:{refused_port}")) is False
    finally:
        silent.close()
