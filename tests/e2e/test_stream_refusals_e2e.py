"""A streaming OpenAI request (``stream: true``) that can be refused before it runs is refused with a
4xx and OpenAI's error body, not a 200 stream holding one ``error`` event: the official SDK raises its
status error at the call, and the request's log line records the status sent. Against a live server."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

MODEL = "builtin/tiny-sd"
NOT_AN_IMAGE = b"this is not an image at all"


def png(side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def log_line(server, request_id: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in server.log().splitlines():
            if raw.startswith("{") and f'"request_id":"{request_id}"' in raw:
                line = json.loads(raw)
                if line["event"] == "request":
                    return line
        time.sleep(0.1)
    raise AssertionError(f"no log line for {request_id}")


# what can be refused before the first byte: (extra fields, status, error code, param)
GENERATION_REFUSALS = {
    "unknown model": ({"model": "no/such-model"}, 404, "model_not_found", "model"),
    "unknown adapter": ({"adapters": [{"id": "no-such-lora"}]}, 400, "unknown_adapter", "adapters"),
    "unknown controlnet": ({"controlnet": "no-such-controlnet", "control_image": b64(png())}, 400,
                           "unknown_controlnet", "controlnet"),
    "control image not an image": ({"controlnet": "tiny-canny", "control_image": b64(NOT_AN_IMAGE)}, 400,
                                   "invalid_value", "control_image"),
    "control image not base64": ({"controlnet": "tiny-canny", "control_image": "%%%"}, 400,
                                 "invalid_value", "control_image"),
    "scheduler of another family": ({"scheduler": "flow_euler"}, 400, "invalid_value", "scheduler"),
    "size out of range": ({"size": "8x8"}, 400, "invalid_value", "size"),
}


@pytest.mark.parametrize("case", GENERATION_REFUSALS, ids=list(GENERATION_REFUSALS))
def test_streamed_generation_refusals_are_4xx_before_the_stream(server, client, case):
    fields, status, code, param = GENERATION_REFUSALS[case]
    body = {"model": MODEL, "prompt": "a kite", "stream": True, "partial_images": 1, "num_inference_steps": 2, **fields}
    rid = f"stream-refusal-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{server.url}/v1/images/generations", json=body, headers={"X-Request-ID": rid}, timeout=60)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["type"] == "invalid_request_error"
    line = log_line(server, rid)
    assert line["status"] == status and line["error"] == code

    # the official SDK raises the status error at the call, before any event is read
    sdk_fields = {k: v for k, v in body.items() if k not in ("model", "prompt", "stream", "partial_images", "size")}
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.generate(model=body["model"], prompt="a kite", stream=True, partial_images=1,
                               size=body.get("size", "64x64"), extra_body=sdk_fields)
    assert raised.value.status_code == status and raised.value.body["code"] == code


EDIT_REFUSALS = {
    "unknown model": ({"model": "no/such-model"}, {}, 404, "model_not_found", "model"),
    "input image not an image": ({}, {"image": NOT_AN_IMAGE}, 400, "invalid_value", "image"),
    "mask not an image": ({}, {"mask": NOT_AN_IMAGE}, 400, "invalid_value", "mask"),
    "control image not an image": ({"controlnet": "tiny-canny"}, {"control_image": NOT_AN_IMAGE}, 400,
                                   "invalid_value", "control_image"),
    "unknown adapter": ({"adapters[][id]": "no-such-lora"}, {}, 400, "unknown_adapter", "adapters"),
    "scheduler of another family": ({"scheduler": "flow_euler"}, {}, 400, "invalid_value", "scheduler"),
    "no denoising step remains": ({"strength": "0.1", "num_inference_steps": "2"}, {}, 400, "invalid_value",
                                  "num_inference_steps"),
}


@pytest.mark.parametrize("case", EDIT_REFUSALS, ids=list(EDIT_REFUSALS))
def test_streamed_edit_refusals_are_4xx_before_the_stream(server, client, case):
    fields, files, status, code, param = EDIT_REFUSALS[case]
    form = {"model": MODEL, "prompt": "at night", "stream": "true", "partial_images": "1", **fields}
    uploads = {"image": png(), **files}
    rid = f"stream-refusal-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{server.url}/v1/images/edits", data=form, headers={"X-Request-ID": rid}, timeout=60,
                   files={name: (f"{name}.png", data, "image/png") for name, data in uploads.items()})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param
    line = log_line(server, rid)
    assert line["status"] == status and line["error"] == code

    # the official SDK raises the status error at the call
    extra = {k: v for k, v in fields.items() if k not in ("model", "adapters[][id]")}
    if "adapters[][id]" in fields:
        extra["adapters"] = [{"id": fields["adapters[][id]"]}]
    sdk_files = {k: (f"{k}.png", v, "image/png") for k, v in uploads.items() if k in ("image", "mask")}
    if "control_image" in uploads:
        extra["control_image"] = b64(uploads["control_image"])
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.edit(model=form["model"], prompt="at night", stream=True, partial_images=1, extra_body=extra,
                           **sdk_files)
    assert raised.value.status_code == status and raised.value.body["code"] == code


def test_a_stream_that_runs_still_streams_and_logs_200(server, client):
    """The checks moved before the stream change nothing for a request that passes them."""
    events = list(client.images.generate(model=MODEL, prompt="a kite", size="64x64", stream=True, partial_images=1,
                                         extra_body={"num_inference_steps": 2, "seed": 1, "controlnet": "tiny-canny",
                                                     "control_image": b64(png())}))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
