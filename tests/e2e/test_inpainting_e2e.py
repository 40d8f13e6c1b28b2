"""On a real server: a masked edit on a model that cannot inpaint (the tiny SD3) is a 400 naming the model
on every edit surface (it was a 500 from the middle of the pipeline); the same model edits without a mask."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e
SD3 = "builtin/tiny-sd3"


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SOURCE = png(Image.linear_gradient("L").resize((64, 64)).convert("RGB"))
MASK = png(Image.new("L", (64, 64), 255))


def test_a_masked_edit_on_a_model_that_cannot_inpaint_is_a_400_naming_it(server):
    def post(path: str, **kw) -> httpx.Response:
        return httpx.post(f"{server.url}{path}", timeout=120, **kw)

    answers = {
        "/edit": post("/edit", files={"image": ("i.png", SOURCE, "image/png"), "mask": ("m.png", MASK, "image/png")},
                      data={"model": SD3, "prompt": "a lighthouse", "steps": "2"}),
        "/v1/images/edits": post("/v1/images/edits", json={"model": SD3, "prompt": "a lighthouse", "image": b64(SOURCE),
                                                           "mask": b64(MASK)}),
        "/sdapi/v1/img2img": post("/sdapi/v1/img2img", json={
            "prompt": "a lighthouse", "steps": 2, "init_images": [b64(SOURCE)], "mask": b64(MASK),
            "override_settings": {"sd_model_checkpoint": SD3}}),
    }
    for path, r in answers.items():
        assert r.status_code == 400 and f"model '{SD3}' cannot inpaint" in r.text, (path, r.status_code, r.text)
    plain = post("/edit", files={"image": ("i.png", SOURCE, "image/png")}, data={"model": SD3, "prompt": "x", "steps": "2"})
    assert plain.status_code == 200 and plain.headers["x-model"] == SD3
