"""Which models can inpaint, on the real tiny pipelines of every family: a masked edit (with or without a
ControlNet) on a model whose denoiser no inpainting pipeline takes (the tiny SD3's 4-channel transformer)
is a 400 naming the model on every edit surface, refused before the image is decoded when the model's
config is on disk, and by the engine otherwise; a dedicated inpainting checkpoint needs a mask."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.image_store import ImageStore
from t2i_core.api.surfaces import build_surfaces
from t2i_core.common.errors import InvalidRequest
from t2i_core.common.inpainting import denoiser_channels, mode_refusal
from t2i_core.common.registry import Registry
from t2i_core.common.schemas import EditRequest, EngineRequest
from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline

SIDE = 64
SD, SDXL, SD3, SD_INPAINT = "builtin/tiny-sd", "builtin/tiny-sdxl", "builtin/tiny-sd3", "builtin/tiny-sd-inpaint"
CONTROLNET = {SD: "tiny-canny", SD_INPAINT: "tiny-canny", SDXL: "tiny-xl-canny"}
GRADIENT = np.tile(np.linspace(0, 255, SIDE, dtype=np.uint8)[None, :, None], (SIDE, 1, 3))
TOP_HALF = bytes([255] * (SIDE * SIDE // 2) + [0] * (SIDE * SIDE // 2))
NOT_AN_IMAGE = b"these bytes are no image at all"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


MASK_PNG = png(np.frombuffer(TOP_HALF, np.uint8).reshape(SIDE, SIDE))


def engine_edit(model: str, mask: bool, controlnet: bool = False, generate: bool = False) -> EngineRequest:
    extra = {"controlnet": CONTROLNET.get(model, "tiny-canny"), "control_image": GRADIENT.tobytes()} if controlnet else {}
    mode = "generate" if generate else "inpaint" if mask else "edit"
    return EngineRequest(model=model, prompt="a lighthouse", steps=2, guidance_scale=0.0, width=SIDE, height=SIDE, seed=1,
                         mode=mode, **({} if generate else {"image": GRADIENT.tobytes(), "strength": 0.8}),
                         mask=TOP_HALF if mask else None, **extra)


@pytest.mark.parametrize("model, can_inpaint, controlnet", [
    (SD, True, False), (SDXL, True, False), (SD_INPAINT, True, False), (SD3, False, False),
    (SD, True, True), (SDXL, True, True), (SD_INPAINT, True, True),  # no ControlNet fits SD3 (the registry says so)
])
def test_the_engine_inpaints_with_every_family_that_can_and_refuses_the_others(engine, model, can_inpaint, controlnet):
    (result,) = engine.run([engine_edit(model, mask=True, controlnet=controlnet)])
    if can_inpaint:
        assert result.error is None and len(result.pixels) == SIDE * SIDE * 3
    else:  # a 400 naming the model, not a 500 from the middle of the pipeline
        assert result.error["code"] == "invalid_value" and result.error["param"] == "mask", result.error
        assert f"model {model!r} cannot inpaint" in result.error["message"] and "4 input channels" in result.error["message"]


def test_the_engine_runs_sd3_without_a_mask_and_an_inpainting_checkpoint_only_with_one(engine):
    for request in (engine_edit(SD3, mask=False), engine_edit(SD3, mask=False, generate=True)):
        assert engine.run([request])[0].error is None
    for request in (engine_edit(SD_INPAINT, mask=False), engine_edit(SD_INPAINT, mask=False, generate=True)):
        error = engine.run([request])[0].error
        assert error["code"] == "invalid_value" and "is an inpainting checkpoint" in error["message"]


def test_the_rule_reads_the_denoiser_config_on_disk():
    registry = Registry()
    for model in (SD, SDXL, SD3, SD_INPAINT):
        ensure_tiny_pipeline(registry.get(model).source_ref)
    assert [denoiser_channels(registry.get(m)) for m in (SD, SDXL, SD3, SD_INPAINT)] == [4, 4, 4, 9]
    assert mode_refusal("real/sd3", "sd3", 16, "inpaint") is None and mode_refusal("real/sd3", "sd3", 33, "inpaint") is None
    assert mode_refusal("x", "sd3", None, "inpaint") is None  # unknown: the engine decides
    assert isinstance(mode_refusal("x", "sdxl", 9, "edit"), InvalidRequest)


# ---- every edit surface, before the image is decoded -------------------------------------------------


@pytest.fixture(scope="module")
def flow(engine) -> RequestFlow:
    ensure_tiny_pipeline("sd3")  # its config on disk: the API knows the model cannot inpaint
    return RequestFlow(LocalEngineClient(engine), registry=engine.registry)


@pytest.fixture(scope="module")
def client(flow) -> TestClient:
    return TestClient(build_surfaces(lambda: flow, ImageStore(60, 10_000_000)))


def refused_naming_sd3(message: str) -> bool:
    return f"model {SD3!r} cannot inpaint" in message


@pytest.mark.parametrize("image", [png(GRADIENT), NOT_AN_IMAGE])
def test_native_edit_with_a_mask_on_sd3_is_a_400_before_the_image_is_decoded(flow, image):
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(flow.edit(EditRequest(model=SD3, prompt="a lighthouse", steps=2), image, mask=MASK_PNG))
    assert refused_naming_sd3(info.value.message) and info.value.param == "mask"


@pytest.mark.parametrize("image", [png(GRADIENT), NOT_AN_IMAGE])
def test_openai_edits_with_a_mask_on_sd3_is_a_400(client, image):
    for send in ({"json": {"model": SD3, "prompt": "a lighthouse", "image": b64(image), "mask": b64(MASK_PNG)}},
                 {"data": {"model": SD3, "prompt": "a lighthouse"},
                  "files": {"image": ("i.png", image, "image/png"), "mask": ("m.png", MASK_PNG, "image/png")}}):
        r = client.post("/v1/images/edits", **send)
        assert r.status_code == 400 and refused_naming_sd3(r.json()["error"]["message"]), r.text
        assert r.json()["error"]["param"] == "mask"


@pytest.mark.parametrize("image", [png(GRADIENT), NOT_AN_IMAGE])
def test_a1111_img2img_with_a_mask_on_sd3_is_a_400(client, image):
    body = {"prompt": "a lighthouse", "steps": 2, "init_images": [b64(image)], "mask": b64(MASK_PNG),
            "override_settings": {"sd_model_checkpoint": SD3}}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 400 and refused_naming_sd3(r.text), r.text


def test_the_same_edits_on_models_that_inpaint_answer_images(client):
    for model in (SD, SDXL, SD_INPAINT):
        r = client.post("/v1/images/edits", json={"model": model, "prompt": "a lighthouse", "image": b64(png(GRADIENT)),
                                                  "mask": b64(MASK_PNG)})
        assert r.status_code == 200, (model, r.text)
    r = client.post("/v1/images/edits", json={"model": SD3, "prompt": "a lighthouse", "image": b64(png(GRADIENT))})
    assert r.status_code == 200, r.text  # SD3 edits without a mask
    r = client.post("/v1/images/edits", json={"model": SD_INPAINT, "prompt": "x", "image": b64(png(GRADIENT))})
    assert r.status_code == 400 and "is an inpainting checkpoint" in r.json()["error"]["message"]
