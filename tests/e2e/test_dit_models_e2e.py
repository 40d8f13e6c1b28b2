"""The DiT families over HTTP on a real ``bentoml serve``: each tiny model answers /generate,
/v1/images/generations and /sdapi/v1/txt2img; the instruction edit models answer /v1/images/edits
(several ``image[]`` parts where the model reads several) and /edit (a list); strength given to one of
them, or more images than a model takes, is a 400 naming the field, the model and its limit."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e
TINY = ["builtin/tiny-flux", "builtin/tiny-flux-kontext", "builtin/tiny-flux2-klein", "builtin/tiny-qwen-image",
        "builtin/tiny-qwen-image-edit", "builtin/tiny-z-image"]


def post(server, path, **kw):
    return httpx.post(f"{server.url}{path}", timeout=180, **kw)


def png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("model", TINY)
def test_each_tiny_model_answers_every_text_to_image_surface(server, model):
    native = post(server, "/generate", json={"prompt": "a lighthouse", "model": model, "seed": 3})
    assert native.status_code == 200, native.text
    assert native.headers["x-model"] == model and size_of(native.content) == (64, 64)
    openai = post(server, "/v1/images/generations", json={"prompt": "a lighthouse", "model": model, "seed": 3,
                                                             "response_format": "b64_json"})
    assert openai.status_code == 200, openai.text
    assert base64.b64decode(openai.json()["data"][0]["b64_json"]) == native.content  # same request, same image
    a1111 = post(server, "/sdapi/v1/txt2img", json={"prompt": "a lighthouse", "seed": 3, "sampler_name": "Euler",
                                                      "override_settings": {"sd_model_checkpoint": model}})
    assert a1111.status_code == 200, a1111.text
    assert size_of(base64.b64decode(a1111.json()["images"][0])) == (64, 64)


def test_kontext_edits_an_uploaded_image_and_refuses_strength_naming_it(server):
    files = [("image[]", ("in.png", png(1), "image/png"))]
    edit = post(server, "/v1/images/edits", files=files,
                data={"prompt": "make it blue", "model": "builtin/tiny-flux-kontext", "response_format": "b64_json"})
    assert edit.status_code == 200, edit.text
    assert size_of(base64.b64decode(edit.json()["data"][0]["b64_json"])) == (64, 64)
    refused = post(server, "/v1/images/edits", files=files,
                   data={"prompt": "make it blue", "model": "builtin/tiny-flux-kontext", "strength": "0.5"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "strength", refused.text
    native = post(server, "/edit", json={"prompt": "x", "model": "builtin/tiny-flux-kontext", "strength": 0.5,
                                         "image": base64.b64encode(png(1)).decode()})
    assert native.status_code == 400 and native.json()["param"] == "strength", native.text
    a1111 = post(server, "/sdapi/v1/img2img", json={
        "prompt": "x", "init_images": [base64.b64encode(png(1)).decode()], "denoising_strength": 0.5,
        "override_settings": {"sd_model_checkpoint": "builtin/tiny-flux-kontext"}})
    assert a1111.status_code == 400 and a1111.json()["param"] == "strength", a1111.text
    two = post(server, "/v1/images/edits", files=files + [("image[]", ("b.png", png(2), "image/png"))],
               data={"prompt": "x", "model": "builtin/tiny-flux-kontext"})
    assert two.status_code == 400, two.text
    assert "model 'builtin/tiny-flux-kontext' takes at most 1 input image per edit; got 2" in two.json()["error"]["message"]


def test_native_edit_takes_a_list_of_images_for_klein(server):
    images = [base64.b64encode(png(1)).decode(), base64.b64encode(png(2, (96, 64))).decode()]
    listed = post(server, "/edit", json={"prompt": "x", "model": "builtin/tiny-flux2-klein", "seed": 1, "image": images})
    assert listed.status_code == 200, listed.text
    parts = post(server, "/edit", files=[("image", ("a.png", png(1), "image/png")), ("image", ("b.png", png(2, (96, 64)),
                                                                                             "image/png"))],
                 data={"prompt": "x", "model": "builtin/tiny-flux2-klein", "seed": "1"})
    assert parts.status_code == 200, parts.text
    assert parts.content == listed.content and size_of(parts.content) == (64, 64)
    one = post(server, "/edit", json={"prompt": "x", "model": "builtin/tiny-flux2-klein", "seed": 1, "image": images[0]})
    assert one.status_code == 200 and one.content != listed.content  # the second reference is read


@pytest.mark.slow
def test_qwen_image_edit_takes_two_image_parts(server):
    """Slow by the pipeline's design: it encodes each input image at about 1 MP whatever its size."""
    files = [("image[]", ("a.png", png(1), "image/png")), ("image[]", ("b.png", png(2), "image/png"))]
    edit = post(server, "/v1/images/edits", files=files,
                data={"prompt": "the cat of picture 1 in the room of picture 2", "model": "builtin/tiny-qwen-image-edit",
                      "response_format": "b64_json"})
    assert edit.status_code == 200, edit.text
    assert size_of(base64.b64decode(edit.json()["data"][0]["b64_json"])) == (64, 64)


def test_models_list_what_their_edits_are(server):
    rows = {r["id"]: r for r in httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]}
    assert rows["builtin/tiny-qwen-image-edit"]["edits"] == {"kind": "reference", "max_images": 3}
    assert rows["builtin/tiny-flux"]["edits"] == {"kind": "strength", "max_images": 1}
    assert rows["black-forest-labs/FLUX.1-schnell"]["state"] == "unavailable"


def test_sixteen_clients_on_flux_share_engine_calls_and_each_image_is_its_own(server):
    """Different prompts, seeds and (distilled, per-row) guidance scales: batched together, and each image
    bit-identical to the same request served alone (the float64 tiny model: no tolerance needed)."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"prompt": f"a fox number {i}", "model": "builtin/tiny-flux", "seed": 100 + i,
               "guidance_scale": (1.5, 3.5, 6.0)[i % 3]} for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda body: post(server, "/generate", json=body), bodies))
    assert [r.status_code for r in together] == [200] * 16, [r.text for r in together if r.status_code != 200]
    assert max(int(r.headers["x-batch-size"]) for r in together) > 1
    for body, response in zip(bodies, together):
        alone = post(server, "/generate", json=body)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(alone.content))),
                              np.asarray(Image.open(io.BytesIO(response.content)))), body


def test_quantized_entries_generate_and_are_listed_with_their_bytes(server):
    """fp8, int8 and GGUF entries of the tiny FLUX.1 model (their quality bound against the unquantized
    model: tests/engine/test_quantized_models.py)."""
    quantized = {"builtin/tiny-flux-fp8": {"transformer": "fp8", "text_encoder_2": "fp8"},
                 "builtin/tiny-flux-int8": {"transformer": "int8", "text_encoder_2": "int8"},
                 "builtin/tiny-flux-gguf": {"transformer": "gguf"}}
    for model in ["builtin/tiny-flux", *quantized]:
        r = post(server, "/generate", json={"prompt": "a lighthouse", "model": model, "seed": 3})
        assert r.status_code == 200 and size_of(r.content) == (64, 64), r.text
    rows = {r["id"]: r for r in httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]}
    assert rows["builtin/tiny-flux"]["quantization"] is None
    for model, spec in quantized.items():
        assert rows[model]["quantization"] == spec and rows[model]["state"] == "loaded"
        assert rows[model]["bytes"] < rows["builtin/tiny-flux"]["bytes"], (model, rows[model]["bytes"])


def test_a1111_lora_tag_works_for_flux(server):
    """``<lora:...>`` in an A1111 prompt on a FLUX.1 model: the same image as the native route's adapter."""
    body = {"seed": 5, "override_settings": {"sd_model_checkpoint": "builtin/tiny-flux"}}
    tagged = post(server, "/sdapi/v1/txt2img", json={"prompt": "a kite <lora:tiny-flux-ink:0.8>", **body})
    plain = post(server, "/sdapi/v1/txt2img", json={"prompt": "a kite", **body})
    assert tagged.status_code == 200 and plain.status_code == 200, tagged.text
    native = post(server, "/generate", json={"prompt": "a kite", "model": "builtin/tiny-flux", "seed": 5,
                                             "adapters": [{"id": "tiny-flux-ink", "weight": 0.8}]})
    assert native.status_code == 200, native.text

    def image(answer) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))))

    assert np.array_equal(image(tagged), np.asarray(Image.open(io.BytesIO(native.content))))
    assert not np.array_equal(image(tagged), image(plain))
