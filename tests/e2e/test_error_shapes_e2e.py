"""Every surface answers its errors in its own body shape, whichever layer raises them: the route
itself (a bad field, an unknown model), the guard in front of the routes (a body over the cap), or the
router (a wrong method). The shapes are registered once per surface (t2i_core/api/error_shapes.py)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e

NATIVE = {"error", "param", "code"}
OPENAI = {"error"}
A1111 = {"error", "detail", "body", "errors", "param", "code"}
REPLACED = {"error"}
#: path -> (a body the route refuses with a 400, another naming an unknown model, the shape's keys)
SURFACES = {
    "/generate": ({"prompt": "x", "width": 13}, {"prompt": "x", "model": "no/such"}, NATIVE),
    "/tasks/generate/submit": ({"prompt": "x", "width": 13}, {"prompt": "x", "model": "no/such"}, NATIVE),
    "/v1/images/generations": ({"prompt": "x", "n": 0}, {"prompt": "x", "model": "no/such"}, OPENAI),
    "/sdapi/v1/txt2img": ({"prompt": "x", "steps": 0}, {"prompt": "x", "override_settings": {"sd_model_checkpoint": "no/such"}},
                          A1111),
    "/api/image/generate": ({"prompt": ""}, {"prompt": "x", "model": "no/such"}, REPLACED),
}


def keys_of(body: dict, expected: set[str]) -> None:
    assert set(body) == expected, body
    if expected == OPENAI and isinstance(body["error"], dict):
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    else:
        assert isinstance(body["error"], str)


@pytest.mark.parametrize("path", SURFACES)
def test_a_routes_own_errors_take_its_surfaces_shape(server, path):
    bad, unknown, expected = SURFACES[path]
    r = httpx.post(f"{server.url}{path}", json=bad, timeout=60)
    assert r.status_code == 400, r.text
    keys_of(r.json(), expected)
    r = httpx.post(f"{server.url}{path}", json=unknown, timeout=60)
    assert r.status_code == 404, r.text
    keys_of(r.json(), expected)
    if expected is OPENAI:
        assert r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", SURFACES)
def test_the_guards_refusals_take_the_surfaces_shape(server, path):
    """A body over the cap is refused before any route runs, in the shape of the route it was for."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {10**12}\r\nConnection: close\r\n\r\n{{}}".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"413", reply[:300]
    keys_of(json.loads(body), SURFACES[path][2])


def test_the_admin_api_answers_in_the_openai_shape(server):
    r = httpx.post(f"{server.url}/admin/default", json={"model": "x"}, timeout=30)
    assert r.status_code == 401
    keys_of(r.json(), OPENAI)


@pytest.mark.parametrize("path", ["/v1/images/generations", "/sdapi/v1/txt2img", "/api/image/generate",
                                  "/tasks/generate/submit"])
def test_a_wrong_method_is_a_405(server, path):
    assert httpx.request("DELETE", f"{server.url}{path}", timeout=30).status_code == 405
