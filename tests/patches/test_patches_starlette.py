"""Starlette's form parsing made strict (t2i_core/patches/starlette.py): a multipart body without its
closing boundary and text that is not UTF-8 are 400s; well-formed forms read as before."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from t2i_core.patches.starlette import strict_form_parsing


async def echo(request: Request) -> JSONResponse:
    form = await request.form()
    return JSONResponse({k: v if isinstance(v, str) else (await v.read()).hex() for k, v in form.multi_items()})


@pytest.fixture(scope="module")
def client():
    strict_form_parsing()
    return TestClient(Starlette(routes=[Route("/", echo, methods=["POST"])]))


def part(name: str, value: bytes, extra: bytes = b"") -> bytes:
    return b"--zz\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\"" + extra + b"\r\n\r\n" + value + b"\r\n"


def post(client, body: bytes, content_type: str = "multipart/form-data; boundary=zz"):
    return client.post("/", content=body, headers={"content-type": content_type})


def test_well_formed_forms_read_as_before(client):
    body = part("prompt", "café ☕".encode()) + part("image", b"\xff\xd8\xff", b'; filename="a.jpg"') + b"--zz--\r\n"
    assert post(client, body).json() == {"prompt": "café ☕", "image": "ffd8ff"}  # a file part is bytes, any bytes
    latin = part("prompt", "café".encode("latin-1")) + b"--zz--\r\n"
    assert post(client, latin, "multipart/form-data; boundary=zz; charset=latin-1").json() == {"prompt": "café"}
    assert post(client, b"prompt=caf%C3%A9+au+lait", "application/x-www-form-urlencoded").json() == {"prompt": "café au lait"}


@pytest.mark.parametrize("body", [part("prompt", b"a lighthouse"), part("prompt", b"a light")[:-6], b""])
def test_a_body_without_its_closing_boundary_is_a_400(client, body):
    r = post(client, body)
    assert r.status_code == 400 and "closing boundary" in r.text


def test_text_that_is_not_utf8_is_a_400_naming_the_field(client):
    r = post(client, part("prompt", b"caf\xe9") + b"--zz--\r\n")
    assert r.status_code == 400 and "'prompt' is not valid utf-8 text: byte 0xe9 at position 3" in r.text
    r = post(client, b"seed=1&prompt=caf%E9", "application/x-www-form-urlencoded")
    assert r.status_code == 400 and "'prompt': its value is not valid UTF-8" in r.text
