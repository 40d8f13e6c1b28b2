"""Property-based fuzzing of the routes that are not in /docs.json (OpenAI and seed routes), in
process: whatever JSON arrives, the answer is never a 5xx and never a traceback."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from t2i_core.api.surfaces import build_surfaces_app
from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.frontend import Frontend
from t2i_core.api.image_store import ImageStore

FIELDS = ["prompt", "negative_prompt", "steps", "num_inference_steps", "guidance_scale", "width", "height",
          "seed", "model", "format", "n", "size", "response_format", "output_format", "strength", "image",
          "scheduler", "mask", "user"]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=True)
           | st.text(max_size=30) | st.sampled_from(["64x64", "b64_json", "url", "png", "builtin/tiny-sd", "ddim", "NaN"]))
BODIES = st.dictionaries(st.sampled_from(FIELDS), SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=5), SCALARS, max_size=2), max_size=8)
PATHS = ["/v1/images/generations", "/v1/images/edits", "/api/image/generate", "/api/image/edit", "/generate-image", "/image/generate"]


@pytest.fixture(scope="module")
def client(engine):
    front = Frontend(LocalEngineClient(engine), registry=engine.registry)
    return TestClient(build_surfaces_app(lambda: front, ImageStore(60, 10_000_000)), raise_server_exceptions=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=BODIES)
def test_no_5xx_whatever_the_json(client, path, body):
    if isinstance(body.get("width"), int) or isinstance(body.get("height"), int):
        body = {**body, "width": 64, "height": 64}  # keep accepted requests small enough to be fast
    if "size" in body:
        body["size"] = "64x64"
    if isinstance(body.get("steps"), int) or isinstance(body.get("num_inference_steps"), int):
        body.pop("steps", None), body.pop("num_inference_steps", None)
    r = client.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert r.status_code < 500, (path, body, r.text[:300])
    assert "Traceback" not in r.text
