"""A streamed OpenAI answer that fails while its image is made (after the 200 was sent) ends with an
``error`` event, and its request log line says so: the error code and the status it would have had.
In process: the real engine and surfaces app behind the request log middleware."""

from __future__ import annotations

import json
import logging

import pytest
from starlette.testclient import TestClient

from t2i_core.api import request_log
from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.image_store import ImageStore
from t2i_core.api.surfaces import build_surfaces
from t2i_core.common.config import Settings


class Lines(logging.Handler):
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


def test_a_stream_that_times_out_ends_with_an_error_event_noted_on_its_line(engine, lines):
    # a time limit of 0 s (refused as a setting, so set on the object): the engine's work is stopped at
    # once, after the request passed every check
    settings = Settings(encode_processes=0)
    object.__setattr__(settings, "request_timeout_s", 0)
    flow = RequestFlow(LocalEngineClient(engine), settings, engine.registry)
    app = request_log.RequestLogMiddleware(build_surfaces(lambda: flow, ImageStore(ttl_s=60, max_bytes=10**6)))
    r = TestClient(app).post("/v1/images/generations", headers={"X-Request-ID": "timed-out-stream"},
                             json={"prompt": "x", "stream": True, "partial_images": 1, "num_inference_steps": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(block.split("data: ", 1)[1]) for block in r.text.strip().split("\n\n")]
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "timeout"
    (line,) = [line for line in lines if line["request_id"] == "timed-out-stream"]
    assert line["status"] == 200 and line["error"] == "timeout" and line["stream_error_status"] == 504
