"""Many models over HTTP: three families, switching, two models at once, admin API, states."""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from conftest import ADMIN_KEY, ROOT, Server

pytestmark = pytest.mark.e2e
FAMILIES = ["builtin/tiny-sd", "builtin/tiny-sdxl", "builtin/tiny-sd3"]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def post(server, path, **kw):
    return httpx.post(f"{server.url}{path}", timeout=120, **kw)


@pytest.mark.parametrize("model", FAMILIES)
def test_each_family_generates_and_edits_over_http(server, model):
    """80 px: a multiple of 16, as SD3's 2x2 patches over the VAE's 8 need."""
    g = post(server, "/generate", json={"prompt": "a tower", "model": model, "seed": 1, "width": 80})
    assert g.status_code == 200, g.text
    assert g.headers["x-model"] == model and Image.open(io.BytesIO(g.content)).size == (80, 64)
    e = post(server, "/edit", files={"image": ("in.png", g.content, "image/png")},
             data={"prompt": "at night", "model": model, "strength": "0.7"})
    assert e.status_code == 200, e.text
    assert e.headers["x-model"] == model and Image.open(io.BytesIO(e.content)).size == (80, 64)


def test_switching_models_between_requests(server):
    seen = [post(server, "/generate", json={"prompt": "x", "model": m}).headers["x-model"] for m in FAMILIES * 2]
    assert seen == FAMILIES * 2


def test_concurrent_requests_for_two_models(server):
    models = ["builtin/tiny-sd", "builtin/tiny-sdxl"] * 8
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda m: post(server, "/generate", json={"prompt": "x", "model": m}), models))
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.headers["x-model"] for r in responses] == models


def test_models_report_their_state(server):
    post(server, "/generate", json={"prompt": "x", "model": "builtin/tiny-sd"})
    body = httpx.get(f"{server.url}/v1/models", timeout=30).json()
    states = {m["id"]: m for m in body["data"]}
    assert states["builtin/tiny-sd"]["state"] == "loaded"
    turbo = states["stabilityai/sd-turbo"]
    assert turbo["state"] == "unavailable" and "python -m t2i_core pull stabilityai/sd-turbo" in turbo["reason"]


def test_admin_api_needs_the_key(server):
    url = f"{server.url}/admin/models"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    body = httpx.get(url, headers=ADMIN, timeout=30).json()
    assert {m["id"] for m in body["models"]} >= set(FAMILIES) and body["default"] == "builtin/tiny-sd"


def test_admin_load_unload_and_default(server):
    def state(model):
        rows = httpx.get(f"{server.url}/admin/models", headers=ADMIN, timeout=30).json()["models"]
        return next(r["state"] for r in rows if r["id"] == model)

    model = "builtin/tiny-sd3"
    assert post(server, f"/admin/models/{model}/load", headers=ADMIN).json()["state"] == "loaded"
    assert state(model) == "loaded"
    assert post(server, f"/admin/models/{model}/unload", headers=ADMIN).json()["unloaded"] is True
    assert state(model) == "available"
    assert post(server, "/admin/models/no/such/load", headers=ADMIN).status_code == 404
    try:
        assert post(server, "/admin/default", headers=ADMIN, json={"model": model}).status_code == 200
        assert post(server, "/generate", json={"prompt": "x"}).headers["x-model"] == model
    finally:
        post(server, "/admin/default", headers=ADMIN, json={"model": "builtin/tiny-sd"})
    assert post(server, "/generate", json={"prompt": "x"}).headers["x-model"] == "builtin/tiny-sd"


def test_a_malformed_registry_stops_the_server_at_startup(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text('{"models": [{"id": "a/b", "publisher": "p", "family": "f", "version": "1", "pipeline": "sd",'
                   ' "source": "tiny:sd", "defaults": {"steps": 1, "guidance_scale": 1, "width": 65, "height": 64}}]}')
    srv = Server({"T2I_REGISTRY": str(bad)})
    try:
        assert srv.proc.wait(timeout=120) != 0
    finally:
        srv.stop()
    assert f"registry file {bad}: entry 0 ('a/b'): field defaults.width" in srv.log() and "got 65" in srv.log()


def test_pull_offline_fails_at_once(tmp_path):
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}):
        proc = subprocess.run([sys.executable, "-m", "t2i_core", "pull", "stabilityai/sd-turbo"], cwd=ROOT,
                              env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "error:" in proc.stderr
        assert ("HF_HUB_OFFLINE is set" in proc.stderr) or ("cannot reach the Hugging Face hub" in proc.stderr)


def test_pull_from_folder_into_the_model_store_then_serve_it(tmp_path):
    # the test session's BENTOML_HOME (under /tmp); an id of its own, so no built-in model's copy changes
    folder = tmp_path / "my-model"
    subprocess.run([sys.executable, "-m", "t2i_core", "tiny", "--family", "sdxl", "--out", str(folder)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "t2i_core", "pull", "test/my-model", "--from-folder", str(folder)],
                          cwd=ROOT, env={**__import__("os").environ}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tag = proc.stdout.split('registry source: "bentoml:')[1].split('"')[0]

    from t2i_core.common.config import Settings
    from t2i_core.engine.core import Engine
    from t2i_core.common.registry import Registry
    from t2i_core.common.schemas import EngineRequest

    base = Registry().get("builtin/tiny-sdxl")
    stored = base.model_copy(update={"id": "store/my-model", "source": f"bentoml:{tag}"})
    eng = Engine(Settings(), registry=Registry(entries=[stored], default="store/my-model"))
    (result,) = eng.run([EngineRequest(model="store/my-model", prompt="x", steps=2, guidance_scale=0, width=64, height=64, seed=1)])
    assert result.error is None and len(result.pixels) == 64 * 64 * 3
