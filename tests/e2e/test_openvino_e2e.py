"""A real ``bentoml serve`` with ``T2I_CPU_BACKEND=openvino`` on the tiny model in float32: concurrent
requests are served in batches by the OpenVINO models, each image within the stated bound of the same
request run by float32 torch in process, and the model listing says which backend runs it."""

from __future__ import annotations

import dataclasses
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MODEL = "builtin/tiny-sd"
MAX_LEVELS, MEAN_LEVELS = 2, 0.1  # tests/engine/test_openvino_backend.py states why


@pytest.fixture(scope="module")
def ov_server():
    srv = Server({"T2I_CPU_BACKEND": "openvino", "T2I_DTYPE": "float32", "T2I_MODEL": MODEL, "T2I_MAX_BATCH_SIZE": "4"})
    try:
        srv.wait_ready(timeout=600)  # the first start converts the tiny model (seconds; a 2-core CI machine is slow)
        yield srv
    finally:
        srv.stop()


def test_openvino_serves_concurrent_requests_in_batches_within_the_bound(ov_server):
    rows = {r["id"]: r for r in httpx.get(f"{ov_server.url}/v1/models", timeout=30).json()["data"]}
    assert rows[MODEL]["state"] == "loaded" and rows[MODEL]["backend"] == "openvino"
    before = httpx.post(f"{ov_server.url}/stats", json={}, timeout=30).json()
    bodies = [{"prompt": f"a lighthouse {i % 3}", "model": MODEL, "seed": 100 + i, "format": "png"} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: httpx.post(f"{ov_server.url}/generate", json=b, timeout=180), bodies))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers if a.status_code != 200]
    after = httpx.post(f"{ov_server.url}/stats", json={}, timeout=30).json()
    assert after["images"] - before["images"] == 8
    assert after["batches"] - before["batches"] < 8  # some engine batches held several requests

    from t2i_core.common.config import Settings
    from t2i_core.common.schemas import EngineRequest
    from t2i_core.engine.core import Engine

    plain = Engine(dataclasses.replace(Settings.from_env(), dtype="float32", cpu_backend="torch"))
    defaults = plain.registry.get(MODEL).defaults
    expected = plain.run([EngineRequest(model=MODEL, prompt=b["prompt"], seed=b["seed"], steps=defaults.steps,
                                        guidance_scale=defaults.guidance_scale, width=defaults.width,
                                        height=defaults.height) for b in bodies])
    for answer, want in zip(answers, expected):
        got = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"), dtype=np.int16)
        diff = np.abs(got - np.frombuffer(want.pixels, np.uint8).reshape(got.shape).astype(np.int16))
        assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())
