"""The client-compatibility readers of the creative controls, in process: A1111's ``<lora:...>`` prompt
tags, its mask options and ControlNet units, and the bracket form fields the OpenAI SDK writes lists and
objects in (the live clients are driven in test_addons_surfaces_e2e.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from t2i_core.api.images.masks import decode_mask
from t2i_core.api.surfaces.a1111.protocol import Img2Img, Txt2Img, a1111_mask, controlnet_fields, split_loras
from t2i_core.api.surfaces.reading import read_form
from t2i_core.common.errors import InvalidRequest

SIDE = 32
MAX_PIXELS = 4096 * 4096


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def repainted(mask_png: bytes) -> np.ndarray:
    """Where the server repaints, as booleans (the mask as the engine gets it, binarized as diffusers does)."""
    return np.frombuffer(decode_mask(mask_png, SIDE, SIDE, max_pixels=MAX_PIXELS), np.uint8).reshape(SIDE, SIDE) >= 128  # binarized at one half


TOP = np.zeros((SIDE, SIDE), bool)
TOP[: SIDE // 2] = True


@pytest.mark.parametrize("prompt, text, adapters", [
    ("a kite <lora:ink:0.8>", "a kite", [("ink", 0.8)]),
    ("<lora:ink> a kite", "a kite", [("ink", 1.0)]),  # no weight: 1.0, as A1111
    ("a <lora:ink:0.5> kite <lyco:pastel:-0.25>", "a  kite", [("ink", 0.5), ("pastel", -0.25)]),
    ("a kite <lora:ink:0.7:0.2>", "a kite", [("ink", 0.7)]),  # A1111's separate UNet weight is ignored
    ("a kite <lora:ink:te=0.4>", "a kite", [("ink", 0.4)]),
    ("a kite <hypernet:old:1>", "a kite", []),  # other extra networks: taken out, ignored
    ("a kite <not a tag> <lora:>", "a kite <not a tag> <lora:>", []),
])
def test_lora_tags_become_adapters_and_leave_the_prompt(prompt, text, adapters):
    got_text, got = split_loras(prompt)
    assert got_text == text and [(a["id"], a["weight"]) for a in got] == adapters


@pytest.mark.parametrize("prompt", ["a <lora:ink:strong>", "a <lora: :0.5>"])
def test_bad_lora_tags_are_400s_naming_the_tag(prompt):
    with pytest.raises(InvalidRequest) as info:
        split_loras(prompt)
    assert info.value.param == "prompt" and "<lora:" in info.value.message


def img2img(**kw) -> Img2Img:
    return Img2Img.model_validate({"prompt": "x", "init_images": ["aGk="], "mask_blur": 0, **kw})


def test_a1111_mask_white_repaints_and_invert_swaps():
    white_top = Image.fromarray(TOP.astype(np.uint8) * 255, "L")
    assert np.array_equal(repainted(a1111_mask(png(white_top), img2img(), MAX_PIXELS)), TOP)
    assert np.array_equal(repainted(a1111_mask(png(white_top), img2img(inpainting_mask_invert=1), MAX_PIXELS)), ~TOP)
    # gray levels are binarized at one half, as A1111's create_binary_mask
    gray = Image.fromarray(np.where(TOP, 200, 100).astype(np.uint8), "L").convert("RGB")
    assert np.array_equal(repainted(a1111_mask(png(gray), img2img(), MAX_PIXELS)), TOP)


def test_a1111_mask_with_transparency_repaints_its_opaque_pixels():
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., 3] = np.where(TOP, 255, 0)  # opaque on top, the color black everywhere
    assert np.array_equal(repainted(a1111_mask(png(Image.fromarray(rgba, "RGBA")), img2img(), MAX_PIXELS)), TOP)
    opaque = np.full((SIDE, SIDE, 4), 255, np.uint8)
    opaque[..., :3] = np.where(TOP, 255, 0)[..., None]  # fully opaque: its colors decide
    assert np.array_equal(repainted(a1111_mask(png(Image.fromarray(opaque, "RGBA")), img2img(), MAX_PIXELS)), TOP)


def test_a1111_mask_blur_softens_the_edge_only():
    square = np.zeros((SIDE, SIDE), bool)
    square[8:24, 8:24] = True
    mask = png(Image.fromarray(square.astype(np.uint8) * 255, "L"))
    sharp = np.asarray(Image.open(io.BytesIO(a1111_mask(mask, img2img(), MAX_PIXELS))))
    soft = np.asarray(Image.open(io.BytesIO(a1111_mask(mask, img2img(mask_blur=4), MAX_PIXELS))))
    assert set(np.unique(sharp)) == {0, 255} and len(np.unique(soft)) > 2
    assert soft[16, 16] > 200 and soft[0, 0] < 50  # the middle stays repainted, far corners stay kept
    default = np.asarray(Image.open(io.BytesIO(a1111_mask(mask, Img2Img.model_validate(
        {"prompt": "x", "init_images": ["aGk="]}), MAX_PIXELS))))
    assert np.array_equal(default, soft)  # A1111's default blur is 4
    corner = repainted(a1111_mask(mask, img2img(mask_blur=4), MAX_PIXELS))
    assert corner[16, 16] and not corner[8, 8]  # the square's corners are rounded off


def test_a1111_mask_that_is_not_an_image_is_a_400():
    with pytest.raises(InvalidRequest) as info:
        a1111_mask(b"hi", img2img(), MAX_PIXELS)
    assert info.value.param == "mask"


def txt2img(scripts) -> Txt2Img:
    return Txt2Img.model_validate({"prompt": "x", "alwayson_scripts": scripts})


def test_controlnet_units_from_alwayson_scripts():
    unit = {"image": "aGk=", "model": "tiny-canny [abc123]", "weight": 0.7, "guidance_start": 0.1,
            "guidance_end": 0.9, "module": "canny", "enabled": True}
    want = {"controlnet": "tiny-canny", "control_image": "aGk=", "controlnet_conditioning_scale": 0.7,
            "control_guidance_start": 0.1, "control_guidance_end": 0.9}
    assert controlnet_fields(txt2img({"ControlNet": {"args": [unit]}})) == want  # the script's name in any case
    assert controlnet_fields(txt2img({"controlnet": {"args": [{**unit, "enabled": False}, unit]}})) == want
    renamed = {k: v for k, v in unit.items() if k != "image"} | {"input_image": {"image": "aGk=", "mask": None}}
    assert controlnet_fields(txt2img({"controlnet": {"args": [renamed]}})) == want
    assert controlnet_fields(txt2img({"controlnet": {"args": [{**unit, "image": ""}]}}))["control_image"] is None
    assert controlnet_fields(txt2img({})) == {} and controlnet_fields(txt2img({"controlnet": {"args": []}})) == {}
    assert controlnet_fields(txt2img({"ADetailer": {"args": [True]}})) == {}


@pytest.mark.parametrize("scripts, says", [
    ({"controlnet": {"args": [{"model": "a"}, {"model": "b"}]}}, "only one ControlNet unit"),
    ({"controlnet": {"args": ["a"]}}, "must be a ControlNet unit object"),
    ({"controlnet": {"args": "a"}}, "must be a list"),
    ({"controlnet": {"args": [{"model": "a", "image": 3}]}}, "must be base64 text"),
])
def test_bad_controlnet_units_are_400s(scripts, says):
    with pytest.raises(InvalidRequest) as info:
        controlnet_fields(txt2img(scripts))
    assert says in info.value.message and info.value.param == "alwayson_scripts"


@pytest.fixture(scope="module")
def form_echo() -> TestClient:
    async def echo(request: Request) -> JSONResponse:
        values, files = await read_form(request)
        return JSONResponse({"values": values, "files": {k: len(v) for k, v in files.items()}})

    return TestClient(Starlette(routes=[Route("/", echo, methods=["POST"])]))


def test_form_fields_in_the_sdks_bracket_notation(form_echo):
    """What the OpenAI SDK sends for extra_body lists and objects on a multipart edit: every value of
    a key together (``adapters[][id]`` twice, then ``adapters[][weight]`` twice)."""
    fields = {"prompt": "x", "adapters[][id]": ["ink", "pastel"], "adapters[][weight]": ["0.8", "1"],
              "tags[]": ["a", "b"], "weights[ink]": "0.5", "weights[pastel]": "1", "odd[a][b]": "c"}
    files = [("image[]", ("a.png", b"1", "image/png")), ("mask", ("m.png", b"2", "image/png"))]
    body = form_echo.post("/", data=fields, files=files).json()
    assert body["values"] == {"prompt": "x", "adapters": [{"id": "ink", "weight": "0.8"}, {"id": "pastel", "weight": "1"}],
                              "tags": ["a", "b"], "weights": {"ink": "0.5", "pastel": "1"}, "odd[a][b]": "c"}
    assert body["files"] == {"image": 1, "mask": 1}
    # sent object by object, the same objects
    interleaved = "&".join(["adapters[][id]=ink", "adapters[][weight]=0.8", "adapters[][id]=pastel", "adapters[][weight]=1"])
    body = form_echo.post("/", content=interleaved, headers={"content-type": "application/x-www-form-urlencoded"}).json()
    assert body["values"] == {"adapters": [{"id": "ink", "weight": "0.8"}, {"id": "pastel", "weight": "1"}]}
