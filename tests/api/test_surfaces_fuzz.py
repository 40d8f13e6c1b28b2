"""Property-based fuzzing of the routes that are not in /docs.json (OpenAI and replaced servers' routes), in
process: whatever JSON arrives, the answer is never a 5xx and never a traceback."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from t2i_core.api.surfaces import build_surfaces
from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.image_store import ImageStore

FIELDS = ["prompt", "negative_prompt", "steps", "num_inference_steps", "guidance_scale", "width", "height",
          "seed", "model", "format", "n", "size", "response_format", "output_format", "strength", "image",
          "scheduler", "mask", "user", "adapters", "controlnet", "control_image", "controlnet_conditioning_scale",
          "control_guidance_start", "alwayson_scripts", "init_images", "inpainting_mask_invert", "mask_blur"]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=True)
           | st.text(max_size=30) | st.sampled_from(["64x64", "b64_json", "url", "png", "builtin/tiny-sd", "ddim", "NaN",
                                            "tiny-ink", "tiny-ink:0.5,tiny-pastel", "tiny-canny", "aGk=",
                                            "x <lora:tiny-ink:0.5>", "<lora:nope> x", "<lora:tiny-ink:x>"]))
BODIES = st.dictionaries(st.sampled_from(FIELDS), SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=5), SCALARS, max_size=2), max_size=8)
PATHS = ["/v1/images/generations", "/v1/images/edits", "/api/image/generate", "/api/image/edit", "/generate-image",
         "/image/generate", "/sdapi/v1/txt2img", "/sdapi/v1/img2img"]


@pytest.fixture(scope="module")
def client(engine):
    flow = RequestFlow(LocalEngineClient(engine), registry=engine.registry)
    return TestClient(build_surfaces(lambda: flow, ImageStore(60, 10_000_000)), raise_server_exceptions=False)


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


FORM_KEYS = ["prompt", "strength", "seed", "adapters", "adapters[]", "adapters[][id]", "adapters[][weight]",
             "adapters[tiny-ink]", "controlnet", "control_image", "mask", "[]", "a[b][c]", "n", "stream"]
FORM_VALUES = st.text(max_size=12) | st.sampled_from(["tiny-ink", "0.5", "9", "tiny-canny", "aGk=", "1", "true", ""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.lists(st.tuples(st.sampled_from(FORM_KEYS), FORM_VALUES), max_size=8),
       mask=st.sampled_from([None, b"", b"not an image", "png"]))
def test_no_5xx_whatever_the_form(client, fields, mask):
    """Multipart edits as the SDK writes them (bracket notation for lists and objects), any content."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(buf, format="PNG")
    files = [("image", ("in.png", buf.getvalue(), "image/png"))]
    if mask is not None:
        files.append(("mask", ("m.png", buf.getvalue() if mask == "png" else mask, "image/png")))
    data: dict[str, list[str]] = {}
    for key, value in fields:
        data.setdefault(key, []).append(value)
    data.setdefault("prompt", ["x"])
    data["num_inference_steps"] = ["1"]
    r = client.post("/v1/images/edits", data=data, files=files)
    assert r.status_code < 500, (fields, mask, r.text[:300])
    assert "Traceback" not in r.text
