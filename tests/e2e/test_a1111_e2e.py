"""A real AUTOMATIC1111 API client library (webuiapi) against a live server: txt2img, img2img, model and
sampler listing, options, progress with a preview, interrupt; errors in A1111's shape. The creative
controls through this client (LoRA tags, masks, ControlNet units) are in test_addons_surfaces_e2e.py."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import webuiapi
from PIL import Image

from conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(server):
    return webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1", sampler="Euler a", steps=2)


def test_txt2img_with_the_a1111_client(api):
    result = api.txt2img(prompt="a red kite", negative_prompt="fog", seed=5, width=64, height=64, cfg_scale=0.0,
                         batch_size=2)
    assert len(result.images) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in result.images)
    assert result.info["all_seeds"] == [5, 6] and result.info["sd_model_name"] == "builtin/tiny-sd"
    assert result.info["infotexts"][0].startswith("a red kite\nNegative prompt: fog\nSteps: 2, Sampler: euler_a")
    assert result.parameters["prompt"] == "a red kite"
    again = api.txt2img(prompt="a red kite", negative_prompt="fog", seed=5, width=64, height=64, cfg_scale=0.0)
    assert again.images[0].tobytes() == result.images[0].tobytes()  # same seed, same image


def test_img2img_and_model_override(api):
    source = Image.new("RGB", (64, 64), (20, 140, 90))
    result = api.img2img(images=[source], prompt="at night", denoising_strength=0.5, seed=3, cfg_scale=0.0, width=64, height=64,
                         override_settings={"sd_model_checkpoint": "builtin/tiny-sdxl"})
    assert result.images[0].size == (64, 64) and result.info["sd_model_name"] == "builtin/tiny-sdxl"
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]


def test_listings(api):
    assert "builtin/tiny-sd" in [m["title"] for m in api.get_sd_models()]
    assert {"Euler", "Euler a", "DPM++ 2M", "DDIM"} <= {s["name"] for s in api.get_samplers()}
    assert "automatic" in [s["name"] for s in api.get_schedulers()]
    assert api.get_options()["sd_model_checkpoint"] == "builtin/tiny-sd"
    assert "tiny-ink" in [lora["name"] for lora in api.get_loras()] and api.refresh_checkpoints() == {}


def test_options_change_the_default_model_only_with_the_admin_key(server, api):
    refused = httpx.post(f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": "builtin/tiny-sdxl"}, timeout=30)
    assert refused.status_code == 401 and "T2I_ADMIN_KEY" in refused.json()["detail"]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        ok = httpx.post(f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": "builtin/tiny-sdxl"},
                        headers=admin, timeout=120)
        assert ok.status_code == 200 and api.get_options()["sd_model_checkpoint"] == "builtin/tiny-sdxl"
    finally:
        httpx.post(f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": "builtin/tiny-sd"}, headers=admin,
                   timeout=120)


def test_progress_shows_a_preview_and_interrupt_stops_the_callers_work(server, api):
    outcome: dict[str, object] = {}

    def long_job():
        try:
            outcome["result"] = api.txt2img(prompt="a long job", seed=1, width=256, height=256, steps=100, cfg_scale=0.0)
        except RuntimeError as err:
            outcome["error"] = err

    worker = threading.Thread(target=long_job)
    worker.start()
    preview = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and preview is None:
        progress = api.get_progress()
        if progress.get("current_image"):
            preview = progress
        time.sleep(0.2)
    assert preview is not None and 0 < preview["progress"] < 1 and preview["state"]["sampling_steps"] == 100
    api.interrupt()
    worker.join(60)
    assert not worker.is_alive() and "error" in outcome  # stopped, not finished
    assert api.get_progress()["state"]["job_count"] == 0


def test_errors_come_in_a1111_shape(server):
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Nope"}, timeout=30)
    body = r.json()
    assert r.status_code == 400 and body["param"] == "sampler_name" and "Nope" in body["detail"] and body["errors"]
    no_image = httpx.post(f"{server.url}/sdapi/v1/img2img", json={"prompt": "x", "init_images": []}, timeout=30)
    assert no_image.status_code == 400 and no_image.json()["param"] == "init_images"
    assert json.loads(json.dumps(body))  # plain JSON
