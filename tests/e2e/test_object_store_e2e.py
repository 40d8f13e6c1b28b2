"""Two servers with their "url" images in an S3 bucket (``T2I_IMAGE_STORE=fsspec:s3://...``), as replicas
on different machines would be: a link made by one is served by the other. The bucket is served by
moto's S3-compatible server on the loopback; the servers reach it through s3fs, as they would S3."""

from __future__ import annotations

import logging

import httpx
import pytest

from conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bucket():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    _, port = s3.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket="t2i-links")
    try:
        yield env, client
    finally:
        s3.stop()


def test_a_link_made_by_one_replica_is_served_by_the_other_from_the_bucket(bucket):
    env, client = bucket
    store = {**env, "T2I_IMAGE_STORE": "fsspec:s3://t2i-links/images"}
    servers = [Server(store), Server(store)]
    try:
        for srv in servers:
            srv.wait_ready()
        for maker, reader in (servers, servers[::-1]):
            made = httpx.post(f"{maker.url}/v1/images/generations", timeout=120,
                              json={"prompt": "a boat in a bucket", "response_format": "url", "seed": 5})
            assert made.status_code == 200, made.text
            path = made.json()["data"][0]["url"].split(maker.url, 1)[1]
            token = path.rsplit("/", 1)[1].split(".")[0]
            here, there = (httpx.get(f"{srv.url}{path}", timeout=30) for srv in (maker, reader))
            assert there.status_code == 200 and there.headers["content-type"] == "image/png"
            assert there.content == here.content and there.content.startswith(b"\x89PNG")
            # the image is an object in the bucket (its media type on the first line), not on either server
            body = client.get_object(Bucket="t2i-links", Key=f"images/{token}")["Body"].read()
            assert body == b"image/png\n" + there.content
        missing = path.rsplit("/", 1)[0] + "/" + "0" * 14 + "A" * 24 + ".png"
        assert httpx.get(f"{servers[1].url}{missing}", timeout=30).status_code == 404
    finally:
        for srv in servers:
            srv.stop()
