"""The compatibility app in process (no server): real engine, Starlette's test client."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from t2i_core.api.surfaces import build_surfaces
from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.image_store import ImageStore


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def app_and_clock(engine):
    flow = RequestFlow(LocalEngineClient(engine), registry=engine.registry)
    clock = Clock()
    store = ImageStore(ttl_s=60, max_bytes=10_000_000, clock=clock)
    return TestClient(build_surfaces(lambda: flow, store)), clock


def test_url_link_expires_with_410(app_and_clock):
    client, clock = app_and_clock
    r = client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url", "output_format": "jpeg"})
    url = r.json()["data"][0]["url"]
    assert url.endswith(".jpg")
    assert client.get(url).headers["content-type"] == "image/jpeg"
    clock.now = 61
    gone = client.get(url)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "image_expired"


def test_n_over_the_configured_maximum(app_and_clock):
    client, _ = app_and_clock
    r = client.post("/v1/images/generations", json={"prompt": "x", "n": 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "9" in r.json()["error"]["message"]


@pytest.mark.parametrize("body", ['{"prompt": "x",}', "[1, 2]", "not json"])
def test_invalid_json_is_400_on_every_family(app_and_clock, body):
    client, _ = app_and_clock
    for path in ("/v1/images/generations", "/api/image/generate", "/image/generate", "/generate-image"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, path
        error = r.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert "JSON" in message, (path, message)


def test_admin_api_is_disabled_without_a_key(app_and_clock):
    client, _ = app_and_clock
    r = client.get("/admin/models", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "T2I_ADMIN_KEY" in r.json()["error"]["message"]


def test_links_use_the_public_url_when_set_else_the_host_asked(engine):
    import dataclasses

    from t2i_core.common.config import Settings

    body = {"prompt": "x", "response_format": "url"}
    for public, expected in (("", "http://asked.example:8080/v1/images/files/"),
                             ("https://images.example.com/t2i/", "https://images.example.com/t2i/v1/images/files/")):
        flow = RequestFlow(LocalEngineClient(engine), dataclasses.replace(Settings(), public_url=public), registry=engine.registry)
        client = TestClient(build_surfaces(lambda: flow, ImageStore(ttl_s=60, max_bytes=10_000_000)))
        url = client.post("/v1/images/generations", json=body, headers={"host": "asked.example:8080"}).json()["data"][0]["url"]
        assert url.startswith(expected), url


def test_a_public_url_without_a_scheme_is_refused_at_start():
    from t2i_core.common.config import Settings

    with pytest.raises(ValueError, match="T2I_PUBLIC_URL must start with http:// or https://; got 'img.example.com/'"):
        Settings(public_url="img.example.com/")
