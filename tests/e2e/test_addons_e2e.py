"""Against a real `bentoml serve`: LoRA adapters, inpainting masks and ControlNet on the native routes,
batched under a mixed load of 16 clients, each image still a function of its own request."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e
SIDE = 64


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SOURCE = png(Image.linear_gradient("L").resize((SIDE, SIDE)).convert("RGB"))
TOP_HALF = Image.new("L", (SIDE, SIDE), 0)
TOP_HALF.paste(255, (0, 0, SIDE, SIDE // 2))
MASK = png(TOP_HALF)
CONTROL = png(Image.fromarray(((np.indices((SIDE, SIDE)).sum(0) // 8 % 2) * 255).astype(np.uint8)).convert("RGB"))

#: the kinds of the mixed load: (route, body); each body gets a prompt and seed of its own
KINDS: dict[str, tuple[str, dict]] = {
    "generate": ("/generate", {}),
    "generate+adapters:tiny-ink": ("/generate", {"adapters": [{"id": "tiny-ink", "weight": 0.9}]}),
    "generate+adapters:tiny-pastel,tiny-ink": ("/generate", {"adapters": {"tiny-pastel": 0.5, "tiny-ink": 1.0}}),
    "inpaint": ("/edit", {"image": b64(SOURCE), "mask": b64(MASK)}),
    "generate+controlnet:tiny-canny": ("/generate", {"controlnet": "tiny-canny", "control_image": b64(CONTROL),
                                                     "controlnet_conditioning_scale": 0.8}),
}


def post(server, path: str, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=180, **kw)


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def by_kind(server) -> dict[str, dict]:
    return post(server, "/stats", json={}).json()["batch_sizes_by_kind"]


def test_mixed_load_of_16_clients_is_batched_per_kind_and_each_image_is_its_own(server):
    """Plain, two adapter sets, inpainting and ControlNet at 16 clients: every request answered, more than
    one image per engine call for each kind, and a seeded image of each kind equal to the same request
    served alone (bit for bit: the tiny model computes in float64)."""
    targets = {kind: (path, {**body, "prompt": f"target {kind}", "seed": 4242}) for kind, (path, body) in KINDS.items()}
    alone = {kind: post(server, path, json=body) for kind, (path, body) in targets.items()}
    assert all(r.status_code == 200 for r in alone.values()), {k: r.text[:300] for k, r in alone.items()}
    before = by_kind(server)
    load = [(kind, path, {**body, "prompt": f"{kind} {i}", "seed": i})
            for i in range(64) for kind, (path, body) in [list(KINDS.items())[i % len(KINDS)]]]
    load += [(kind, path, body) for kind, (path, body) in targets.items()]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: (job[0], job[2], post(server, job[1], json=job[2])), load))
    failed = [(kind, r.status_code, r.text[:200]) for kind, _, r in answers if r.status_code != 200]
    assert not failed, failed
    after = by_kind(server)
    per_call = {}
    for kind in KINDS:
        images = after[kind]["images"] - before.get(kind, {}).get("images", 0)
        calls = after[kind]["batches"] - before.get(kind, {}).get("batches", 0)
        per_call[kind] = images / calls
        assert images == sum(1 for k, _, _ in load if k == kind), (kind, images)
    print("images per engine call, by kind:", {k: round(v, 2) for k, v in per_call.items()})
    assert all(ratio > 1 for ratio in per_call.values()), per_call
    for kind, body, response in answers:
        if body["seed"] == 4242:
            assert np.array_equal(pixels(response.content), pixels(alone[kind].content)), kind
    # the kinds differ from each other (each control was applied)
    distinct = {pixels(post(server, path, json={**body, "prompt": "same", "seed": 9}).content).tobytes()
                for path, body in KINDS.values()}
    assert len(distinct) == len(KINDS)


def test_metrics_count_engine_calls_and_images_per_kind_and_control(server):
    post(server, "/generate", json={"prompt": "m", "adapters": ["tiny-ink"]})
    post(server, "/edit", json={"prompt": "m", "image": b64(SOURCE), "mask": b64(MASK)})
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 't2i_engine_calls_total{control="adapters",kind="generate"}' in text
    assert 't2i_engine_call_images_total{control="none",kind="inpaint"}' in text


def test_edit_takes_mask_and_control_image_as_files_or_base64(server):
    fields = {"prompt": "repaint the sky", "seed": "5", "controlnet": "tiny-canny", "adapters": "tiny-ink:0.7"}
    files = {"image": ("in.png", SOURCE, "image/png"), "mask": ("mask.png", MASK, "image/png"),
             "control_image": ("c.png", CONTROL, "image/png")}
    a = post(server, "/edit", files=files, data=fields)
    assert a.status_code == 200, a.text
    b = post(server, "/edit", json={**fields, "seed": 5, "image": b64(SOURCE), "mask": b64(MASK), "control_image": b64(CONTROL)})
    assert b.status_code == 200, b.text
    assert np.array_equal(pixels(a.content), pixels(b.content))
    # the parameters in the file name the adapter and the ControlNet
    text = Image.open(io.BytesIO(a.content)).text["parameters"]
    assert "<lora:tiny-ink:0.7>" in text and "Model: tiny-canny" in text
    # a mask of another size is resized to the output size
    big = png(TOP_HALF.resize((SIDE * 2, SIDE * 2)))
    c = post(server, "/edit", json={**fields, "seed": 5, "image": b64(SOURCE), "mask": b64(big), "control_image": b64(CONTROL)})
    assert c.status_code == 200 and pixels(c.content).shape == (SIDE, SIDE, 3)


@pytest.mark.parametrize("path, body, param, words", [
    ("/generate", {"adapters": ["nope"]}, "adapters", "adapter 'nope' is not in the registry"),
    ("/generate", {"adapters": ["tiny-xl-ink"]}, "adapters", "'tiny-xl-ink' is for sdxl models"),
    ("/generate", {"adapters": [{"id": "tiny-ink", "weight": 7}]}, "adapters", "between -4.0 and 4.0; got 7"),
    ("/generate", {"controlnet": "tiny-canny"}, "control_image", "control_image is required with controlnet"),
    ("/generate", {"control_image": b64(CONTROL)}, "control_image", "control_image needs controlnet"),
    ("/generate", {"controlnet": "nope", "control_image": b64(CONTROL)}, "controlnet", "controlnet 'nope' is not in the registry"),
    ("/generate", {"controlnet": "tiny-canny", "control_image": b64(b"not an image")}, "control_image", "must be a PNG, JPEG or WebP"),
    ("/edit", {"image": b64(SOURCE), "mask": b64(png(Image.new("L", (SIDE, SIDE), 0)))}, "mask", "marks nothing to repaint"),
    ("/edit", {"image": b64(SOURCE), "mask": "%%%"}, "mask", "mask is not valid base64"),
    ("/edit", {"image": b64(SOURCE), "mask": b64(b"GIF89a....")}, "mask", "mask must be a PNG, JPEG or WebP"),
])
def test_bad_controls_are_400s_naming_the_field(server, path, body, param, words):
    r = post(server, path, json={"prompt": "x", **body})
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["param"] == param and words in error["error"], error


def test_adapter_and_controlnet_listings_show_their_state(server):
    post(server, "/generate", json={"prompt": "x", "adapters": ["tiny-pastel"]})
    adapters = httpx.get(f"{server.url}/v1/adapters", timeout=30).json()
    rows = {row["id"]: row for row in adapters["data"]}
    assert adapters["object"] == "list" and rows["tiny-pastel"]["state"] == "loaded"
    assert rows["tiny-pastel"]["loaded_in"] == ["builtin/tiny-sd"] and rows["tiny-pastel"]["bytes"] > 0
    assert rows["tiny-xl-ink"]["family"] == "sdxl" and rows["tiny-ink"]["trigger_words"] == ["ink"]
    controlnets = {row["id"]: row for row in httpx.get(f"{server.url}/v1/controlnets", timeout=30).json()["data"]}
    assert set(controlnets) == {"tiny-canny", "tiny-xl-canny", "tiny-flux-canny"}
    assert controlnets["tiny-canny"]["conditioning_scale"] == 1.0
    json.dumps(controlnets)  # plain JSON all the way


def test_bentoml_python_client_sends_the_controls(server, tmp_path):
    import bentoml

    (tmp_path / "in.png").write_bytes(SOURCE)
    (tmp_path / "mask.png").write_bytes(MASK)
    with bentoml.SyncHTTPClient(server.url) as client:
        styled = client.generate(prompt="a lighthouse", adapters=[{"id": "tiny-ink", "weight": 0.8}], seed=7)
        inpainted = client.edit(image=tmp_path / "in.png", mask=tmp_path / "mask.png", prompt="sea", seed=3)
        steered = client.generate(prompt="a house", controlnet="tiny-canny", control_image=b64(CONTROL), seed=2)
    raw = {
        "styled": post(server, "/generate", json={"prompt": "a lighthouse", "adapters": ["tiny-ink:0.8"], "seed": 7}),
        "inpainted": post(server, "/edit", json={"prompt": "sea", "image": b64(SOURCE), "mask": b64(MASK), "seed": 3}),
        "steered": post(server, "/generate", json={"prompt": "a house", "controlnet": "tiny-canny",
                                                   "control_image": b64(CONTROL), "seed": 2}),
    }
    for name, image in (("styled", styled), ("inpainted", inpainted), ("steered", steered)):
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels(raw[name].content)), name
