"""Two server processes sharing a folder of image links (``T2I_IMAGE_STORE=dir:...``): a link made by
one is served by the other, as API workers or replicas on a shared volume would."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from conftest import SHARED_IMAGES, Server

pytestmark = pytest.mark.e2e


def test_a_link_made_by_one_server_is_served_by_the_other(server):
    other = Server({"T2I_IMAGE_STORE": f"dir:{SHARED_IMAGES}"})
    try:
        other.wait_ready()
        for maker, reader in ((server, other), (other, server)):
            made = httpx.post(f"{maker.url}/v1/images/generations", timeout=120,
                              json={"prompt": "a shared boat", "response_format": "url", "seed": 4}).json()
            path = made["data"][0]["url"].split(maker.url, 1)[1]
            here, there = (httpx.get(f"{srv.url}{path}", timeout=30) for srv in (maker, reader))
            assert there.status_code == 200 and there.headers["content-type"] == "image/png"
            assert there.content == here.content and there.content.startswith(b"\x89PNG")
        missing = path.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.png"
        assert httpx.get(f"{other.url}{missing}", timeout=30).status_code == 404
        # a file someone else put in the folder, named like a link and long expired were it a link: never
        # served, never deleted (by a GET or by the sweep after a new link)
        token = path.rsplit("/", 1)[1].split(".")[0]
        foreign = SHARED_IMAGES / ("F" * len(token))
        foreign.write_bytes(b"image/png\nnot the server's")
        os.utime(foreign, (time.time() - 10 * 86400,) * 2)
        for srv in (server, other):
            assert httpx.get(f"{srv.url}{path.rsplit('/', 1)[0]}/{foreign.name}.png", timeout=30).status_code == 404
        time.sleep(1.1)  # the folder is swept at most once a second
        httpx.post(f"{server.url}/v1/images/generations", timeout=120, json={"prompt": "x", "response_format": "url"})
        assert foreign.read_bytes() == b"image/png\nnot the server's"
    finally:
        other.stop()
