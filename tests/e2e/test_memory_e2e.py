"""One valid request must not take the engine down: on a real `bentoml serve` with a small memory
budget, an image whose activations never fit is refused with 422 before it runs (it used to run and,
in a 4 GB container, got the CPU engine killed), and the server serves the next request."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import Server

pytestmark = pytest.mark.e2e
#: the tiny model's weights (~9 MB) and a 64 px image's activations fit; a 2048 px image (~6.5 GB
#: whole in float64, ~0.4 GB decoded in tiles) does not
BUDGET = 64 * 2**20


@pytest.fixture(scope="module")
def small():
    srv = Server({"T2I_MEMORY_BUDGET_BYTES": str(BUDGET)})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_an_image_that_never_fits_gets_422_naming_the_limit_and_the_server_keeps_serving(small):
    r = httpx.post(f"{small.url}/generate", json={"prompt": "a huge harbour", "width": 2048, "height": 2048},
                   timeout=120)
    assert r.status_code == 422, r.text[:500]
    body = r.json()
    assert body["code"] == "image_too_large"
    message = body["error"]
    assert "2048x2048" in message and "T2I_MEMORY_BUDGET_BYTES" in message and "64.0 MiB" in message
    assert "largest size of these proportions that fits is" in message
    again = httpx.post(f"{small.url}/generate", json={"prompt": "a small harbour"}, timeout=120)
    assert again.status_code == 200
    stats = httpx.post(f"{small.url}/stats", json={}, timeout=30).json()
    assert stats["errors_by_code"].get("image_too_large") == 1 and stats["memory_budget_bytes"] == BUDGET


def test_the_openai_route_answers_the_same_refusal_in_its_error_shape(small):
    client = openai.OpenAI(base_url=f"{small.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.images.generate(prompt="a huge harbour", size="2048x2048", response_format="b64_json")
    error = caught.value.body
    assert error["code"] == "image_too_large" and error["type"] == "invalid_request_error"
    assert "2048x2048" in error["message"] and error["param"] == "size"
