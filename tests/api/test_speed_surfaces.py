"""Speed tiers through the surfaces in process: the field, OpenAI's quality, the A1111 override, the
headers that report the work saved, and the model listing."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.image_store import ImageStore
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.surfaces import build_surfaces

SD3 = "builtin/tiny-sd3"


@pytest.fixture()
def client(engine):
    flow = RequestFlow(LocalEngineClient(engine), registry=engine.registry)
    return TestClient(build_surfaces(lambda: flow, ImageStore(ttl_s=60, max_bytes=10_000_000)))


def test_a_tier_reports_the_work_it_saved_in_headers(client):
    r = client.post("/image/generate", json={"prompt": "x", "model": SD3, "speed": "fast", "steps": 7, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.headers["x-speed"] == "fast" and r.headers["x-steps-skipped"] == "0"
    assert r.headers["x-cache-skipped"] == "4/7"  # 4 of the 7 calls of its one hooked block
    full = client.post("/image/generate", json={"prompt": "x", "model": SD3, "steps": 7, "seed": 1})
    assert full.headers["x-speed"] == "quality" and full.headers["x-cache-skipped"] == "0/0"
    steps = client.post("/image/generate", json={"prompt": "x", "speed": "fast", "steps": 4, "seed": 1})
    assert steps.headers["x-steps-skipped"] == "2"  # tiny-sd's fast tier: half the steps


def test_openai_quality_low_is_the_fast_tier(client):
    r = client.post("/v1/images/generations", json={"prompt": "x", "model": SD3, "quality": "low",
                                                    "num_inference_steps": 7})
    assert r.status_code == 200, r.text
    assert r.headers["x-speed"] == "fast" and r.headers["x-cache-skipped"] == "4/7"
    turbo_like = client.post("/v1/images/generations", json={"prompt": "x", "model": "builtin/tiny-sdxl", "quality": "low"})
    assert turbo_like.status_code == 200 and turbo_like.headers["x-speed"] == "quality"
    refused = client.post("/v1/images/generations", json={"prompt": "x", "model": "builtin/tiny-sdxl", "speed": "fast"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "speed"


def test_the_a1111_override_sets_the_tier(client, engine):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 7, "seed": 3,
                                               "override_settings": {"sd_model_checkpoint": SD3, "speed": "balanced"}})
    assert r.status_code == 200, r.text
    assert "generate+speed:balanced" in engine.stats()["batch_sizes_by_kind"]
    refused = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {"speed": "balanced"}})
    assert refused.status_code == 400 and "'balanced'" in refused.text and "builtin/tiny-sd" in refused.text


def test_the_model_listing_names_each_models_tiers(client):
    rows = {row["id"]: row for row in client.get("/v1/models").json()["data"]}
    assert rows[SD3]["speed"] == ["quality", "balanced", "fast"]
    assert rows["builtin/tiny-sd"]["speed"] == ["quality", "fast"]
    assert rows["stabilityai/sd-turbo"]["speed"] == ["quality"]


def test_the_headers_sum_the_cache_work_of_every_batch_of_a_request():
    """n = 3 images made in 3 engine batches (T2I_FAULT_OOM_ABOVE=1 splits every batch down to one image):
    the request's header counts the hooked calls and skips of all three, not of the first batch only."""
    from t2i_core.common.config import Settings
    from t2i_core.engine.core import Engine

    engine = Engine(Settings(fault_oom_above=1))
    flow = RequestFlow(LocalEngineClient(engine), registry=engine.registry)
    client = TestClient(build_surfaces(lambda: flow, ImageStore(ttl_s=60, max_bytes=10_000_000)))
    r = client.post("/v1/images/generations", json={"prompt": "x", "model": SD3, "quality": "low", "n": 3,
                                                    "num_inference_steps": 7})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 3
    assert r.headers["x-cache-skipped"] == "12/21"  # 3 batches of 7 hooked calls, 4 of them skipped each
