"""The official OpenAI SDK against a live server, and batching of n > 1 across concurrent calls."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_models_list(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "builtin/tiny-sd" in ids and "stabilityai/sd-turbo" in ids
    assert all(m.object == "model" and m.owned_by for m in models.data)
    assert client.models.retrieve("builtin/tiny-sd").id == "builtin/tiny-sd"


def test_generate_n2_b64(client):
    result = client.images.generate(model="builtin/tiny-sd", prompt="a red kite", n=2, size="128x64",
                                    response_format="b64_json", extra_body={"seed": 10})
    assert len(result.data) == 2 and isinstance(result.created, int)
    a, b = (decode(d.b64_json) for d in result.data)
    assert a.shape == (64, 128, 3) and not np.array_equal(a, b)
    assert [d.model_extra["seed"] for d in result.data] == [10, 11]


def test_generate_url_then_fetch(client):
    result = client.images.generate(model="builtin/tiny-sd", prompt="a boat", response_format="url",
                                    extra_body={"output_format": "webp"})
    url = result.data[0].url
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert httpx.get(url.rsplit("/", 1)[0] + "/no-such-image.png").status_code == 404


def test_edit_over_multipart(client, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (10, 120, 240)).save(src)
    with src.open("rb") as f:
        result = client.images.edit(model="builtin/tiny-sd", image=f, prompt="add a sun", n=2,
                                    extra_body={"strength": 0.7, "seed": 3})
    assert len(result.data) == 2
    assert decode(result.data[0].b64_json).shape == (64, 64, 3)


def test_edit_with_mask(client, tmp_path):
    """OpenAI's mask: its fully transparent pixels are repainted (tests/e2e/test_addons_surfaces_e2e.py
    checks the pixels against the native route)."""
    src, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (10, 120, 240)).save(src)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(mask)
    with src.open("rb") as f, mask.open("rb") as m:
        result = client.images.edit(model="builtin/tiny-sd", image=f, mask=m, prompt="add a sun", extra_body={"seed": 2})
    assert decode(result.data[0].b64_json).shape == (64, 64, 3)


def test_edit_json_base64(server):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    r = httpx.post(f"{server.url}/v1/images/edits", timeout=60, json={
        "prompt": "x", "image": base64.b64encode(buf.getvalue()).decode(), "strength": 0.5})
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(model="no/such-model", prompt="x")
    assert info.value.body["code"] == "model_not_found"


def test_invalid_field_is_400_naming_param(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="builtin/tiny-sd", prompt="x", size="500x500")
    assert info.value.status_code == 400 and info.value.body["param"] == "size" and "500x500" in info.value.body["message"]


def test_concurrent_n2_calls_are_batched_and_seed_only(server, client):
    solo = {}
    for seed in (100, 101, 200, 201):
        r = client.images.generate(model="builtin/tiny-sd", prompt="lantern", n=1, extra_body={"seed": seed, "guidance_scale": 5.0})
        solo[seed] = decode(r.data[0].b64_json)

    def call(i):
        return client.images.generate(model="builtin/tiny-sd", prompt="lantern" if i < 2 else f"other {i}", n=2,
                                      extra_body={"seed": (100, 200)[i] if i < 2 else 1000 + 10 * i, "guidance_scale": 5.0})

    before = httpx.post(f"{server.url}/stats", json={}, timeout=30).json()["batches"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    stats = httpx.post(f"{server.url}/stats", json={}, timeout=30).json()
    sizes = stats["recent_batch_sizes"][-(stats["batches"] - before):]
    assert sum(sizes) == 16 and max(sizes) > 2, sizes  # several requests' images in one engine batch
    for i, base in ((0, 100), (1, 200)):
        got = [decode(d.b64_json) for d in results[i].data]
        assert np.array_equal(got[0], solo[base]) and np.array_equal(got[1], solo[base + 1])


# ---- streaming with partial images ------------------------------------------------------------
def test_stream_generate_yields_partial_images_then_the_image(client):
    body = {"seed": 21, "num_inference_steps": 6}
    events = list(client.images.generate(model="builtin/tiny-sd", prompt="a red kite", size="64x64",
                                         stream=True, partial_images=2, extra_body=body))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    first, second, final = (decode(e.b64_json) for e in events)
    assert first.shape == second.shape == final.shape == (64, 64, 3)
    # real intermediate decodes: different from the final image, and coming closer to it
    assert np.abs(second.astype(int) - final).mean() < np.abs(first.astype(int) - final).mean()
    plain = client.images.generate(model="builtin/tiny-sd", prompt="a red kite", size="64x64", extra_body=body)
    assert np.array_equal(final, decode(plain.data[0].b64_json))  # the streamed image is the image


def test_stream_edit_yields_edit_events(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buf, format="PNG")
    events = list(client.images.edit(image=("in.png", buf.getvalue(), "image/png"), prompt="at night", stream=True,
                                     partial_images=1, extra_body={"num_inference_steps": 6, "strength": 1.0, "seed": 2}))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_stream_options_that_cannot_be_served_are_400s(client):
    with pytest.raises(openai.BadRequestError) as n:
        list(client.images.generate(model="builtin/tiny-sd", prompt="x", n=2, stream=True, partial_images=1))
    assert n.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as bg:
        client.images.generate(model="builtin/tiny-sd", prompt="x", background="transparent")
    assert bg.value.body["param"] == "background"
    with pytest.raises(openai.BadRequestError) as partial:
        list(client.images.generate(model="builtin/tiny-sd", prompt="x", stream=True, partial_images=4))
    assert partial.value.body["param"] == "partial_images"


def test_output_compression_is_the_jpeg_quality(client):
    sizes = []
    for compression in (10, 95):
        result = client.images.generate(model="builtin/tiny-sd", prompt="a red kite", size="128x128", output_format="jpeg",
                                        output_compression=compression, extra_body={"seed": 4})
        sizes.append(len(base64.b64decode(result.data[0].b64_json)))
    assert sizes[0] < sizes[1]
