"""Stage timings, queue wait, progress and the per-request log line, without a server."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from t2i_core.api import request_log
from t2i_core.common.config import Settings
from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest, GenerateRequest


def req(**kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt="a lighthouse", steps=3, guidance_scale=0.0, width=64, height=64, seed=1)
    return EngineRequest(**{**base, **kw})


class Lines(logging.Handler):
    """Collects the JSON lines of the t2i.requests logger."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def lines():
    request_log._ensure_handler()
    handler = Lines()
    request_log.log.addHandler(handler)
    yield handler.lines
    request_log.log.removeHandler(handler)


def test_results_carry_stage_timings_and_queue_wait(engine):
    (result,) = engine.run([req(submitted_at=time.time() - 0.25)])
    assert set(result.stages) == {"text_encoding", "denoising", "vae_decoding"}
    assert all(seconds > 0 for seconds in result.stages.values())
    # the stages happen inside the pipeline call
    assert sum(result.stages.values()) <= result.inference_s
    assert 0.25 <= result.queue_s < 60


def test_edit_stages_are_measured_too(engine):
    image = bytes(64 * 64 * 3)
    (result,) = engine.run([req(mode="edit", image=image, strength=0.7, steps=3)])
    assert result.error is None
    assert set(result.stages) == {"text_encoding", "denoising", "vae_decoding"}


def test_progress_counts_denoising_steps(engine):
    assert engine.progress(["never-seen"]) == {"never-seen": {"state": "queued", "step": 0, "steps": None}}
    engine.cancel(["given-up"])  # its client left before the engine took it
    assert engine.progress(["given-up"]) == {"given-up": {"state": "cancelled", "step": 0, "steps": None}}
    engine.run([req(request_id="p1", steps=4), req(request_id="p2", steps=4, seed=2)])
    assert engine.progress(["p1", "p2"]) == {
        "p1": {"state": "done", "step": 4, "steps": 4},
        "p2": {"state": "done", "step": 4, "steps": 4},
    }
    # an edit at strength 0.5 runs half of its steps: progress counts what really runs
    engine.run([req(request_id="p3", mode="edit", image=bytes(64 * 64 * 3), strength=0.5, steps=6)])
    assert engine.progress(["p3"])["p3"] == {"state": "done", "step": 3, "steps": 3}


def test_progress_is_visible_while_running(engine):
    seen: list[dict] = []

    def watch() -> None:
        for _ in range(2000):
            state = engine.progress(["watched"])["watched"]
            if state["state"] == "running" and state["step"] > 0:
                seen.append(state)
            if state["state"] == "done":
                return
            time.sleep(0.002)

    async def both() -> None:
        watcher = asyncio.to_thread(watch)
        await asyncio.gather(asyncio.to_thread(engine.run, [req(request_id="watched", steps=40, width=128, height=128)]), watcher)

    asyncio.run(both())
    assert seen, "no running state with a step was observed"
    assert all(s["steps"] == 40 and 1 <= s["step"] <= 40 for s in seen)


def _app(handler):
    app = Starlette(routes=[Route("/generate", handler, methods=["POST"]), Route("/readyz", handler)])
    return request_log.RequestLogMiddleware(app)


def test_request_id_is_taken_from_the_header_or_made_and_echoed(lines):
    async def handler(request):
        request_log.note(model="m", seeds=[1])
        return PlainTextResponse("ok")

    client = TestClient(_app(handler))
    given = client.post("/generate", headers={"X-Request-ID": "client-id-42"})
    assert given.headers["x-request-id"] == "client-id-42"
    made = client.post("/generate")
    assert len(made.headers["x-request-id"]) == 32
    # a header that is not a sane token is replaced, never echoed
    bad = client.post("/generate", headers={"X-Request-ID": "x" * 200})
    assert bad.headers["x-request-id"] != "x" * 200
    assert [line["request_id"] for line in lines] == ["client-id-42", made.headers["x-request-id"], bad.headers["x-request-id"]]
    line = lines[0]
    assert line["event"] == "request" and line["method"] == "POST" and line["route"] == "/generate"
    assert line["status"] == 200 and line["model"] == "m" and line["seeds"] == [1] and line["duration_s"] >= 0
    # probes get no line
    client.get("/readyz")
    assert len(lines) == 3


def test_error_code_is_on_the_line(lines):
    from t2i_core.common.errors import InvalidRequest
    from t2i_core.api.error_shapes import error_response, native

    async def handler(request):
        return error_response(InvalidRequest("steps must be ...", param="steps"), native)

    TestClient(_app(handler)).post("/generate")
    assert lines[-1]["status"] == 400 and lines[-1]["error"] == "invalid_value"


@pytest.mark.parametrize("log_prompts", [0, 1])
def test_prompts_are_logged_only_when_configured(engine, lines, log_prompts):
    flow = RequestFlow(LocalEngineClient(engine), Settings(log_prompts=log_prompts), engine.registry)

    async def handler(request):
        (image,) = await flow.generate(GenerateRequest(prompt="secret castle", negative_prompt="fog", seed=3))
        return PlainTextResponse(str(image.seed))

    TestClient(_app(handler)).post("/generate")
    line = lines[-1]
    assert line["seeds"] == [3] and line["model"] == TINY_SD_ID and line["steps"] == 2 and line["batch_size"] == 1
    for key in ("queue_s", "inference_s", "text_encoding_s", "denoising_s", "vae_decoding_s", "image_encoding_s"):
        assert line[key] >= 0, key
    text = json.dumps(line)
    if log_prompts:
        assert line["prompt"] == "secret castle" and line["negative_prompt"] == "fog"
    else:
        assert "secret castle" not in text and "fog" not in text
