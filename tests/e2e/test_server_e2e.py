"""End to end: a real `bentoml serve` on a free loopback port, raw HTTP and the BentoML client."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def post(server, path: str, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=120, **kw)


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def engine_stats(server) -> dict:
    return post(server, "/stats", json={}).json()


def test_seed_003_request_as_documented(server):
    body = {"prompt": "A futuristic city at sunset", "negative_prompt": "blurry, low quality",
            "num_inference_steps": 28, "guidance_scale": 7.0}
    r = post(server, "/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
    assert r.headers["x-model"] == "builtin/tiny-sd"
    assert int(r.headers["x-seed"]) >= 0 and float(r.headers["x-inference-time"]) > 0
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)


def test_same_seed_same_pixels_over_http(server):
    a = post(server, "/generate", json={"prompt": "a red barn", "seed": 1234})
    b = post(server, "/generate", json={"prompt": "a red barn", "seed": 1234})
    c = post(server, "/generate", json={"prompt": "a red barn", "seed": 1235})
    assert a.headers["x-seed"] == "1234"
    assert np.array_equal(pixels(a.content), pixels(b.content))
    assert not np.array_equal(pixels(a.content), pixels(c.content))
    # the seed a response reports reproduces its image
    d = post(server, "/generate", json={"prompt": "a red barn"})
    e = post(server, "/generate", json={"prompt": "a red barn", "seed": int(d.headers["x-seed"])})
    assert np.array_equal(pixels(d.content), pixels(e.content))


@pytest.mark.parametrize("fmt, media, magic", [("jpeg", "image/jpeg", b"\xff\xd8\xff"), ("webp", "image/webp", b"RIFF")])
def test_output_formats(server, fmt, media, magic):
    r = post(server, "/generate", json={"prompt": "x", "format": fmt, "width": 96, "height": 64})
    assert r.status_code == 200 and r.headers["content-type"] == media and r.content.startswith(magic)
    assert Image.open(io.BytesIO(r.content)).size == (96, 64)


def test_edit_multipart_and_base64_json(server):
    src = post(server, "/generate", json={"prompt": "a cat", "seed": 3}).content
    a = post(server, "/edit", files={"image": ("in.png", src, "image/png")},
             data={"prompt": "make it snowy", "strength": "0.5", "seed": "8"})
    assert a.status_code == 200, a.text
    b = post(server, "/edit", json={"prompt": "make it snowy", "strength": 0.5, "seed": 8,
                                    "image": base64.b64encode(src).decode()})
    assert b.status_code == 200, b.text
    assert a.headers["x-seed"] == "8"
    assert np.array_equal(pixels(a.content), pixels(b.content))
    assert not np.array_equal(pixels(a.content), pixels(src))


def test_bentoml_python_client(server, tmp_path):
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as client:
        img = client.generate(prompt="a lighthouse", seed=11)
        assert isinstance(img, Image.Image) and img.size == (64, 64)
        src = tmp_path / "in.png"
        img.save(src)
        edited = client.edit(image=src, prompt="at night", strength=0.7, seed=2)
        assert isinstance(edited, Image.Image) and edited.size == (64, 64)
        raw = post(server, "/generate", json={"prompt": "a lighthouse", "seed": 11}).content
        assert np.array_equal(np.asarray(img.convert("RGB")), pixels(raw))


def _concurrent(server, bodies: list[dict]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: post(server, "/generate", json=b), bodies))


def test_batching_is_real(server):
    before = engine_stats(server)["batches"]
    responses = _concurrent(server, [{"prompt": f"p{i}", "seed": i} for i in range(16)])
    assert all(r.status_code == 200 for r in responses), [(r.status_code, r.text[:200]) for r in responses]
    stats = engine_stats(server)
    new = stats["recent_batch_sizes"][-(stats["batches"] - before):]
    assert sum(new) == 16 and max(new) > 1, new
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1


def test_batch_invariance_with_15_concurrent_requests(server):
    target = {"prompt": "a seeded castle", "seed": 777, "guidance_scale": 5.0}
    alone = post(server, "/generate", json=target)
    assert alone.headers["x-batch-size"] == "1"
    for _attempt in range(5):
        bodies = [{"prompt": f"other {i}", "seed": 1000 + i, "guidance_scale": 5.0} for i in range(15)]
        responses = _concurrent(server, bodies[:8] + [target] + bodies[8:])
        shared = responses[8]
        if int(shared.headers["x-batch-size"]) > 1:
            break
    assert int(shared.headers["x-batch-size"]) > 1, "the seeded request never shared a batch"
    assert np.array_equal(pixels(alone.content), pixels(shared.content))


@pytest.mark.parametrize(
    "path, kwargs, field, value",
    [
        ("/generate", {"json": {"width": 64}}, "prompt", None),
        ("/generate", {"json": {"prompt": "x", "width": 513}}, "width", "513"),
        ("/edit", {"files": {"image": ("a.png", b"", "image/png")}, "data": {"prompt": "x", "strength": "1.5"}},
         "strength", "1.5"),
        ("/edit", {"files": {"image": ("a.png", b"this is not an image", "image/png")}, "data": {"prompt": "x"}},
         "image", "this is not"),
        ("/edit", {"json": {"prompt": "x", "image": "%%%"}}, "image", "%%%"),
        ("/generate", {"json": {"prompt": "x", "model": "no/such-model"}}, "model", "no/such-model"),
        ("/generate", {"content": b'{"prompt": "x",}', "headers": {"content-type": "application/json"}}, None, None),
    ],
)
def test_bad_input_is_a_4xx_naming_field_and_value(server, path, kwargs, field, value):
    r = post(server, path, **kwargs)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body, dict) and isinstance(body["error"], str), body
    assert "Traceback" not in r.text
    if field:
        assert body["param"] == field and field in body["error"], body
    if value:
        assert value in body["error"], body
    # and the server keeps serving
    assert post(server, "/generate", json={"prompt": "still alive"}).status_code == 200


def test_unavailable_model_is_503_with_the_reason(server):
    r = post(server, "/generate", json={"prompt": "x", "model": "stabilityai/sd-turbo"})
    assert r.status_code == 503
    assert "hf download stabilityai/sd-turbo" in r.json()["error"]


def test_startup_warns_loudly_when_serving_the_tiny_fallback(server):
    log = server.log()
    assert "serving the built-in tiny random-weight model 'builtin/tiny-sd'" in log
    assert "hf download stabilityai/sd-turbo" in log
    assert f"listening on http://127.0.0.1:{server.port}" in log


def test_a_burst_after_an_idle_spell_is_answered(server):
    """The engine's server drops idle connections after 5 s, the API's client keeps them 15 s."""
    import time

    post(server, "/generate", json={"prompt": "x"})
    time.sleep(7)
    responses = _concurrent(server, [{"prompt": f"after idle {i}"} for i in range(16)])
    assert [r.status_code for r in responses] == [200] * 16, [r.text[:200] for r in responses if r.status_code != 200]


def test_past_bentoml_session_renewal_every_request_is_answered_once(server):
    """BentoML renews its engine client session every 100 requests and would drop those in flight."""
    before = engine_stats(server)["images"]
    bodies = [{"prompt": f"renewal {i}", "seed": i} for i in range(160)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: post(server, "/generate", json=b), bodies))
    assert [r.status_code for r in responses] == [200] * 160
    assert engine_stats(server)["images"] - before == 160  # nothing was done twice


def test_output_images_are_encoded_in_encoder_processes(server):
    """The API worker encodes in its encoder processes (T2I_ENCODE_PROCESSES default: one per CPU
    beyond the first), and what they encode is what the API process would have encoded."""
    import psutil

    from t2i_core.api.images.codecs import encode_image

    responses = _concurrent(server, [{"prompt": f"encoded {i}", "seed": i} for i in range(6)])
    assert all(r.status_code == 200 for r in responses)
    workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
               if "t2i_core.api.images.encoder_process" in " ".join(p.cmdline())]
    assert len(workers) >= 1
    image = Image.open(io.BytesIO(responses[0].content))
    parameters = image.text["parameters"]  # the generation parameters written into the file
    assert "Seed: 0," in parameters
    assert responses[0].content == encode_image(image.convert("RGB").tobytes(), *image.size, "png", parameters)
