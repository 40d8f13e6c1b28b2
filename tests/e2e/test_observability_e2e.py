"""Against a real `bentoml serve`: the request id round trip, the log line, and the product metrics."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest

pytestmark = pytest.mark.e2e


def log_line(server, request_id: str, event: str = "request", timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in server.log().splitlines():
            if raw.startswith("{") and f'"request_id":"{request_id}"' in raw:
                line = json.loads(raw)
                if line["event"] == event:
                    return line
        time.sleep(0.1)
    raise AssertionError(f"no {event} line for {request_id}")


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_request_id_is_echoed_and_logged_without_the_prompt(server):
    rid = f"test-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{server.url}/generate", json={"prompt": "a private prompt", "seed": 77, "steps": 3},
                   headers={"X-Request-ID": rid}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    line = log_line(server, rid)
    assert line["route"] == "/generate" and line["status"] == 200 and line["model"] == "builtin/tiny-sd"
    assert line["width"] == 64 and line["height"] == 64 and line["steps"] == 3 and line["seeds"] == [77]
    assert line["batch_size"] >= 1
    for key in ("queue_s", "inference_s", "text_encoding_s", "denoising_s", "vae_decoding_s", "image_encoding_s", "duration_s"):
        assert isinstance(line[key], float), key
    assert "a private prompt" not in server.log()


def test_compat_routes_get_an_id_and_a_line_too(server):
    r = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "x", "n": 2, "seed": 5}, timeout=60)
    assert r.status_code == 200
    line = log_line(server, r.headers["x-request-id"])
    assert line["route"] == "/v1/images/generations" and line["n"] == 2 and line["seeds"] == [5, 6]


def test_an_error_is_logged_with_its_code(server):
    r = httpx.post(f"{server.url}/generate", json={"prompt": "x", "width": 12345}, timeout=30)
    assert r.status_code == 400
    line = log_line(server, r.headers["x-request-id"])
    assert line["status"] == 400 and line["error"] == "invalid_value" and "width" in line["error_message"]


def test_product_metrics(server):
    before = httpx.get(f"{server.url}/metrics").text
    for k in range(3):
        assert httpx.post(f"{server.url}/generate", json={"prompt": "m", "seed": k}, timeout=60).status_code == 200
    assert httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "m", "n": 2}, timeout=60).status_code == 200
    assert httpx.post(f"{server.url}/generate", json={"prompt": "m", "steps": 0}, timeout=30).status_code == 400
    after = httpx.get(f"{server.url}/metrics").text

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    model = "builtin/tiny-sd"
    assert grew("t2i_images_total", model=model, route="/generate") == 3
    assert grew("t2i_images_total", model=model, route="/v1/images/generations") == 2
    assert grew("t2i_engine_images_total", model=model, kind="generate") == 5
    # the batch histogram counts images: the n=2 request is one batch of (at least) 2
    assert grew("t2i_engine_batch_images_sum") == 5
    assert 1 <= grew("t2i_engine_batch_images_count") <= 4
    assert grew("t2i_queue_wait_seconds_count") == 5
    for stage in ("text_encoding", "denoising", "vae_decoding"):
        assert 1 <= grew("t2i_stage_seconds_count", stage=stage) <= 4, stage
    assert grew("t2i_stage_seconds_count", stage="image_encoding") == 5
    assert grew("t2i_request_errors_total", route="/generate", code="invalid_value") == 1
    # loaded once at startup: the load time is there
    assert metric(after, "t2i_model_load_seconds_count", model=model) >= 1
    assert re.search(r"^t2i_oom_retries_total ", after, re.M)
    assert re.search(r"^t2i_requests_in_flight ", after, re.M)


def test_a_speed_tier_reports_its_work_saved_in_headers_log_and_metrics(server):
    model = "builtin/tiny-sd3"
    before = httpx.get(f"{server.url}/metrics").text
    r = httpx.post(f"{server.url}/generate", json={"prompt": "t", "model": model, "speed": "fast", "steps": 7, "seed": 2},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-speed"] == "fast" and r.headers["x-cache-skipped"] == "4/7"
    cut = httpx.post(f"{server.url}/generate", json={"prompt": "t", "speed": "fast", "steps": 4}, timeout=60)
    assert cut.status_code == 200 and cut.headers["x-steps-skipped"] == "2"
    line = log_line(server, r.headers["x-request-id"])
    assert line["speed"] == "fast" and line["cache_skipped"] == 4 and line["cache_calls"] == 7
    after = httpx.get(f"{server.url}/metrics").text

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("t2i_speed_tier_images_total", model=model, speed="fast") == 1
    assert grew("t2i_step_cache_calls_total", model=model, speed="fast", outcome="skipped") == 4
    assert grew("t2i_step_cache_calls_total", model=model, speed="fast", outcome="computed") == 3
    assert grew("t2i_speed_steps_skipped_total", model="builtin/tiny-sd", speed="fast") == 2
