"""The creative controls through the clients people already have, against a live server: the official
OpenAI SDK (edits with a mask, the controls as extension fields) and the webuiapi A1111 client
(``<lora:name:weight>`` in the prompt, img2img with a mask, a ControlNet unit, the LoRA list). Each
image is checked against the same request on the native routes: the built-in tiny model computes in
float64, so the same settings give the same pixels bit for bit, whichever route carried them."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

pytestmark = pytest.mark.e2e

SIDE = 64
STEPS = 2
INK, CANNY = "tiny-ink", "tiny-canny"


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def of(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


GRADIENT = Image.fromarray(np.tile(np.linspace(0, 255, SIDE, dtype=np.uint8)[None, :, None], (SIDE, 1, 3)))
CHECKER = Image.fromarray(((np.indices((SIDE, SIDE)).sum(0) // 8 % 2) * 255).astype(np.uint8)).convert("RGB")


def half_mask(side: int = SIDE, top_white: bool = True) -> Image.Image:
    """White (repaint) on the top half, black below; the other way round with ``top_white=False``."""
    rows = np.zeros((side, side), np.uint8)
    rows[: side // 2] = 255
    return Image.fromarray(rows if top_white else 255 - rows, "L")


def native(server, path: str, body: dict) -> np.ndarray:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return pixels(r.content)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(server):
    return webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1", sampler="Euler a", steps=STEPS)


# --- OpenAI ----------------------------------------------------------------------------------------


def test_openai_edit_with_a_mask_repaints_the_transparent_area(server, client, tmp_path):
    """OpenAI's convention: the mask's fully transparent pixels are repainted. The SDK's edit equals
    the native /edit with the same area white, and a mask of another size is resized to the image."""
    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    GRADIENT.save(source)
    rgba = np.full((SIDE, SIDE, 4), 255, np.uint8)
    rgba[: SIDE // 2, :, 3] = 0  # the top half transparent: repaint it
    Image.fromarray(rgba, "RGBA").save(mask)
    settings = {"seed": 3, "strength": 1.0, "num_inference_steps": STEPS, "guidance_scale": 0.0}
    with source.open("rb") as f, mask.open("rb") as m:
        masked = client.images.edit(model="builtin/tiny-sd", image=f, mask=m, prompt="a lighthouse", extra_body=settings)
    got = pixels(base64.b64decode(masked.data[0].b64_json))
    want = native(server, "/edit", {"prompt": "a lighthouse", "image": b64(png(GRADIENT)),
                                    "mask": b64(png(half_mask())), **settings})
    assert np.array_equal(got, want)
    with source.open("rb") as f:
        whole = client.images.edit(model="builtin/tiny-sd", image=f, prompt="a lighthouse", extra_body=settings)
    assert not np.array_equal(got, pixels(base64.b64decode(whole.data[0].b64_json)))
    # the same mask drawn at half the size fits the image once resized
    Image.fromarray(rgba, "RGBA").resize((SIDE // 2, SIDE // 2), Image.Resampling.NEAREST).save(mask)
    with source.open("rb") as f, mask.open("rb") as m:
        small = client.images.edit(model="builtin/tiny-sd", image=f, mask=m, prompt="a lighthouse", extra_body=settings)
    assert np.array_equal(pixels(base64.b64decode(small.data[0].b64_json)), want)
    # streamed, the mask applies the same way
    with source.open("rb") as f, mask.open("rb") as m:
        events = list(client.images.edit(model="builtin/tiny-sd", image=f, mask=m, prompt="a lighthouse", stream=True,
                                         partial_images=1, extra_body=settings))
    assert events[-1].type == "image_edit.completed"
    assert np.array_equal(pixels(base64.b64decode(events[-1].b64_json)), want)


def test_openai_adapters_as_an_extension_field(server, client, tmp_path):
    """``extra_body={"adapters": [...]}``: JSON on generations, the SDK's bracket form fields on edits."""
    adapters = [{"id": INK, "weight": 0.8}]
    settings = {"seed": 4, "num_inference_steps": STEPS, "guidance_scale": 0.0}
    result = client.images.generate(model="builtin/tiny-sd", prompt="a kite", size=f"{SIDE}x{SIDE}",
                                    extra_body={**settings, "adapters": adapters})
    got = pixels(base64.b64decode(result.data[0].b64_json))
    body = {"prompt": "a kite", "width": SIDE, "height": SIDE, **settings}
    assert np.array_equal(got, native(server, "/generate", {**body, "adapters": adapters}))
    assert not np.array_equal(got, native(server, "/generate", body))

    source = tmp_path / "in.png"
    GRADIENT.save(source)
    edit_settings = {**settings, "strength": 0.8}
    with source.open("rb") as f:
        edited = client.images.edit(model="builtin/tiny-sd", image=f, prompt="a kite",
                                    extra_body={**edit_settings, "adapters": adapters})
    want = native(server, "/edit", {"prompt": "a kite", "image": b64(png(GRADIENT)), "adapters": adapters, **edit_settings})
    assert np.array_equal(pixels(base64.b64decode(edited.data[0].b64_json)), want)
    two = [{"id": INK, "weight": 0.8}, {"id": "tiny-pastel", "weight": 0.5}]  # the SDK's adapters[][id] fields
    with source.open("rb") as f:
        both = client.images.edit(model="builtin/tiny-sd", image=f, prompt="a kite", extra_body={**edit_settings, "adapters": two})
    want = native(server, "/edit", {"prompt": "a kite", "image": b64(png(GRADIENT)), "adapters": two, **edit_settings})
    assert np.array_equal(pixels(base64.b64decode(both.data[0].b64_json)), want)
    with source.open("rb") as f:  # a plain list of ids: each at its default weight
        by_id = client.images.edit(model="builtin/tiny-sd", image=f, prompt="a kite",
                                   extra_body={**edit_settings, "adapters": [INK]})
    want = native(server, "/edit", {"prompt": "a kite", "image": b64(png(GRADIENT)), "adapters": [INK], **edit_settings})
    assert np.array_equal(pixels(base64.b64decode(by_id.data[0].b64_json)), want)


def test_openai_controlnet_fields(server, client):
    control = {"controlnet": CANNY, "control_image": b64(png(CHECKER)), "controlnet_conditioning_scale": 0.9,
               "control_guidance_end": 0.8}
    settings = {"seed": 5, "num_inference_steps": STEPS, "guidance_scale": 0.0}
    result = client.images.generate(model="builtin/tiny-sd", prompt="a tower", size=f"{SIDE}x{SIDE}",
                                    extra_body={**settings, **control})
    got = pixels(base64.b64decode(result.data[0].b64_json))
    body = {"prompt": "a tower", "width": SIDE, "height": SIDE, **settings}
    assert np.array_equal(got, native(server, "/generate", {**body, **control}))
    assert not np.array_equal(got, native(server, "/generate", body))

    # edits over multipart: the control image as a file equals it as base64 text, and the native /edit
    fields = {"prompt": "a tower", "strength": "0.7", "seed": "5", "num_inference_steps": str(STEPS),
              "guidance_scale": "0", "controlnet": CANNY}
    as_file = httpx.post(f"{server.url}/v1/images/edits", data=fields, timeout=120, files={
        "image": ("in.png", png(GRADIENT), "image/png"), "control_image": ("c.png", png(CHECKER), "image/png")})
    as_text = httpx.post(f"{server.url}/v1/images/edits", data={**fields, "control_image": b64(png(CHECKER))},
                         files={"image": ("in.png", png(GRADIENT), "image/png")}, timeout=120)
    assert as_file.status_code == 200 and as_text.status_code == 200, (as_file.text, as_text.text)
    a, b = (pixels(base64.b64decode(r.json()["data"][0]["b64_json"])) for r in (as_file, as_text))
    want = native(server, "/edit", {"prompt": "a tower", "image": b64(png(GRADIENT)), "strength": 0.7, "seed": 5,
                                    "num_inference_steps": STEPS, "guidance_scale": 0.0, "controlnet": CANNY,
                                    "control_image": b64(png(CHECKER))})
    assert np.array_equal(a, b) and np.array_equal(a, want)


def test_openai_bad_controls_are_400s(server, client, tmp_path):
    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    GRADIENT.save(source)
    Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 255)).save(mask)  # opaque everywhere: nothing to repaint
    with source.open("rb") as f, mask.open("rb") as m, pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="builtin/tiny-sd", image=f, mask=m, prompt="x")
    assert info.value.body["param"] == "mask" and "nothing to repaint" in info.value.body["message"]
    with source.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="builtin/tiny-sd", image=f, mask=io.BytesIO(b"not an image"), prompt="x")
    assert info.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="builtin/tiny-sd", prompt="x", extra_body={"adapters": [{"id": "no-such-lora"}]})
    assert info.value.body["code"] == "unknown_adapter" and "no-such-lora" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="builtin/tiny-sd", prompt="x", extra_body={"controlnet": CANNY})
    assert info.value.body["param"] == "control_image"
    r = httpx.post(f"{server.url}/v1/images/edits", json={"prompt": "x", "image": b64(png(GRADIENT)), "mask": "%%%"},
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"


# --- A1111 -----------------------------------------------------------------------------------------


def a1111_settings(seed: int) -> dict:
    # alwayson_scripts: a dict of the call's own; webuiapi writes its ControlNet units into its default
    # argument (one dict shared by every call), so that units would stay for the next calls
    return {"seed": seed, "width": SIDE, "height": SIDE, "cfg_scale": 0.0, "alwayson_scripts": {}}


def native_settings(seed: int) -> dict:
    return {"seed": seed, "width": SIDE, "height": SIDE, "guidance_scale": 0.0, "num_inference_steps": STEPS,
            "scheduler": "euler_a"}


def test_a1111_lora_in_the_prompt(server, api):
    tagged = api.txt2img(prompt="a red kite <lora:tiny-ink:0.8>", **a1111_settings(6))
    plain = api.txt2img(prompt="a red kite", **a1111_settings(6))
    assert not np.array_equal(of(tagged.image), of(plain.image))
    want = native(server, "/generate", {"prompt": "a red kite", "adapters": [{"id": INK, "weight": 0.8}],
                                        **native_settings(6)})
    assert np.array_equal(of(tagged.image), want)
    assert tagged.info["prompt"] == "a red kite <lora:tiny-ink:0.8>"  # A1111 reports the prompt as sent
    assert "<lora:tiny-ink:0.8>" in tagged.info["infotexts"][0]
    # no weight: 1.0, as in A1111
    bare = api.txt2img(prompt="<lora:tiny-ink> a red kite", **a1111_settings(6))
    want = native(server, "/generate", {"prompt": "a red kite", "adapters": [{"id": INK, "weight": 1.0}],
                                        **native_settings(6)})
    assert np.array_equal(of(bare.image), want)


def test_a1111_lists_the_registry_adapters_as_loras(api):
    loras = {row["name"]: row for row in api.get_loras()}
    assert {"tiny-ink", "tiny-pastel", "tiny-xl-ink"} <= set(loras)
    assert all({"name", "alias", "path", "metadata"} <= set(row) for row in loras.values())
    assert loras["tiny-ink"]["metadata"]["family"] == "sd"


def test_a1111_img2img_with_a_mask(server, api):
    settings = {**a1111_settings(7), "denoising_strength": 1.0, "mask_blur": 0, "inpainting_fill": 1}
    masked = api.img2img(images=[GRADIENT], mask_image=half_mask(), prompt="a lighthouse", **settings)
    want = native(server, "/edit", {"prompt": "a lighthouse", "image": b64(png(GRADIENT)), "mask": b64(png(half_mask())),
                                    "strength": 1.0, **native_settings(7)})
    assert np.array_equal(of(masked.image), want)
    whole = api.img2img(images=[GRADIENT], prompt="a lighthouse", **settings)
    assert not np.array_equal(of(masked.image), of(whole.image))
    # inpainting_mask_invert=1 with the opposite mask repaints the same area
    inverted = api.img2img(images=[GRADIENT], mask_image=half_mask(top_white=False), inpainting_mask_invert=1,
                           prompt="a lighthouse", **settings)
    assert np.array_equal(of(inverted.image), want)
    # A1111's default blur (4) softens the mask's edge: accepted, and an image comes back
    blurred = api.img2img(images=[GRADIENT], mask_image=half_mask(), prompt="a lighthouse",
                          **{**settings, "mask_blur": 4})
    assert blurred.image.size == (SIDE, SIDE)


def test_a1111_controlnet_unit(server, api):
    unit = webuiapi.ControlNetUnit(image=CHECKER, model=CANNY, weight=0.9, guidance_start=0.0, guidance_end=0.8,
                                   module="canny")
    result = api.txt2img(prompt="a tower", controlnet_units=[unit], **a1111_settings(8))
    control = {"controlnet": CANNY, "control_image": b64(png(CHECKER)), "controlnet_conditioning_scale": 0.9,
               "control_guidance_start": 0.0, "control_guidance_end": 0.8}
    want = native(server, "/generate", {"prompt": "a tower", **control, **native_settings(8)})
    assert np.array_equal(of(result.image), want)
    plain = api.txt2img(prompt="a tower", **a1111_settings(8))
    assert not np.array_equal(of(result.image), of(plain.image))
    assert 'ControlNet 0: "Model: tiny-canny' in result.info["infotexts"][0]
    # a disabled unit is no unit
    off = webuiapi.ControlNetUnit(image=CHECKER, model=CANNY, enabled=False)
    assert np.array_equal(of(api.txt2img(prompt="a tower", controlnet_units=[off], **a1111_settings(8)).image),
                          of(plain.image))
    # img2img with a unit without an image: the init image steers, as in the ControlNet extension
    no_image = webuiapi.ControlNetUnit(model=CANNY, weight=0.9)
    edited = api.img2img(images=[CHECKER], prompt="a tower", denoising_strength=0.7, controlnet_units=[no_image],
                         **a1111_settings(8))
    want = native(server, "/edit", {"prompt": "a tower", "image": b64(png(CHECKER)), "strength": 0.7, "controlnet": CANNY,
                                    "control_image": b64(png(CHECKER)), "controlnet_conditioning_scale": 0.9,
                                    **native_settings(8)})
    assert np.array_equal(of(edited.image), want)
    assert CANNY in httpx.get(f"{server.url}/controlnet/model_list", timeout=30).json()["model_list"]


def test_a1111_bad_controls_are_400s_in_a1111_shape(server, api):
    def refused(call) -> dict:
        with pytest.raises(RuntimeError) as info:
            call()
        status, text = info.value.args
        assert status == 400, text
        import json

        body = json.loads(text)
        assert body["detail"] and body["errors"]
        return body

    body = refused(lambda: api.txt2img(prompt="a kite <lora:no-such-lora:0.5>", **a1111_settings(1)))
    assert "no-such-lora" in body["detail"] and body["code"] == "unknown_adapter"
    body = refused(lambda: api.txt2img(prompt="a kite <lora:tiny-ink:lots>", **a1111_settings(1)))
    assert body["param"] == "prompt" and "lots" in body["detail"]
    body = refused(lambda: api.txt2img(prompt="<lora:tiny-ink:0.5>", **a1111_settings(1)))
    assert body["param"] == "prompt" and "nothing to draw" in body["detail"]
    unknown = webuiapi.ControlNetUnit(image=CHECKER, model="control_v11p_sd15_canny [d14c016b]")
    body = refused(lambda: api.txt2img(prompt="a kite", controlnet_units=[unknown], **a1111_settings(1)))
    assert "control_v11p_sd15_canny" in body["detail"] and body["code"] == "unknown_controlnet"
    two = [webuiapi.ControlNetUnit(image=CHECKER, model=CANNY), webuiapi.ControlNetUnit(image=CHECKER, model=CANNY)]
    body = refused(lambda: api.txt2img(prompt="a kite", controlnet_units=two, **a1111_settings(1)))
    assert "only one ControlNet unit" in body["detail"]
    no_image = webuiapi.ControlNetUnit(model=CANNY)
    body = refused(lambda: api.txt2img(prompt="a kite", controlnet_units=[no_image], **a1111_settings(1)))
    assert "needs an image" in body["detail"]
    black = Image.new("L", (SIDE, SIDE), 0)
    body = refused(lambda: api.img2img(images=[GRADIENT], mask_image=black, prompt="x", **a1111_settings(1)))
    assert body["param"] == "mask" and "nothing to repaint" in body["detail"]
    r = httpx.post(f"{server.url}/sdapi/v1/img2img", timeout=30,
                   json={"prompt": "x", "init_images": [b64(png(GRADIENT))], "mask": "aGk="})
    assert r.status_code == 400 and r.json()["param"] == "mask"
