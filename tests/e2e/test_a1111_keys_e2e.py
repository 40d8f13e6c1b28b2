"""The A1111 routes on a server with API keys and an admin key, through the real A1111 client library
(webuiapi, with its session sending ``Authorization: Bearer <key>``): ``POST options`` with an API key
picks the model of that caller's own requests; with the admin key it sets the server's default."""

from __future__ import annotations

import httpx
import pytest
import webuiapi

from conftest import Server

pytestmark = pytest.mark.e2e
KEYS = ("key-one", "key-two")
ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def keyed():
    srv = Server({"T2I_API_KEYS": ",".join(KEYS), "T2I_ADMIN_KEY": ADMIN})
    try:
        srv.wait_ready(headers={"Authorization": f"Bearer {KEYS[0]}"})
        yield srv
    finally:
        srv.stop()


def client(server, key: str) -> webuiapi.WebUIApi:
    api = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1", sampler="Euler a", steps=2)
    api.session.headers["Authorization"] = f"Bearer {key}"
    return api


def model_of(api: webuiapi.WebUIApi) -> str:
    return api.txt2img(prompt="a kite", seed=1, width=64, height=64, cfg_scale=0.0).info["sd_model_name"]


def test_an_api_key_picks_the_model_of_its_own_requests(keyed):
    one, two = client(keyed, KEYS[0]), client(keyed, KEYS[1])
    one.util_set_model("builtin/tiny-sdxl")
    assert one.get_options()["sd_model_checkpoint"] == "builtin/tiny-sdxl" and model_of(one) == "builtin/tiny-sdxl"
    assert two.get_options()["sd_model_checkpoint"] == "builtin/tiny-sd" and model_of(two) == "builtin/tiny-sd"
    unknown = one.session.post(f"{one.baseurl}/options", json={"sd_model_checkpoint": "no/such-model"})
    assert unknown.status_code == 404 and "builtin/tiny-sd" in unknown.json()["detail"]


def test_the_admin_key_sets_the_default_model_for_everyone(keyed):
    admin, two = client(keyed, ADMIN), client(keyed, KEYS[1])
    try:
        admin.util_set_model("builtin/tiny-sdxl")
        assert two.get_options()["sd_model_checkpoint"] == "builtin/tiny-sdxl" and model_of(two) == "builtin/tiny-sdxl"
    finally:
        admin.util_set_model("builtin/tiny-sd")
    assert two.get_options()["sd_model_checkpoint"] == "builtin/tiny-sd"


def test_options_without_a_key_are_refused(keyed):
    r = httpx.post(f"{keyed.url}/sdapi/v1/options", json={"sd_model_checkpoint": "builtin/tiny-sdxl"}, timeout=30)
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
