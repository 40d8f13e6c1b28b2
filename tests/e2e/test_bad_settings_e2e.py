"""A setting the server cannot use stops ``bentoml serve`` at once with one line naming the variable, the
value and what it may be: no traceback, no engine worker restarted forever (a typo in T2I_MODEL
restarted it 18 times a minute while /readyz stayed 503)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, Server

pytestmark = pytest.mark.e2e
PREFIX = "t2i-server cannot start: "


@pytest.mark.parametrize("env, says", [
    ({"T2I_MODEL": "no/such-model"}, "T2I_MODEL: model 'no/such-model' is not in the registry; known models: "),
    ({"T2I_MAX_BATCH_SIZE": "sixteen"}, "T2I_MAX_BATCH_SIZE must be an integer; got 'sixteen'"),
    ({"T2I_MAX_IN_FLIGHT": "0"}, "T2I_MAX_IN_FLIGHT must be an integer of 1 or more; got 0"),
    ({"T2I_DEVICE": "gpu0"}, "T2I_DEVICE must be auto, cpu, mps, cuda or xpu"),
    ({"T2I_PUBLIC_URL": "images.example.com"}, "T2I_PUBLIC_URL must start with http:// or https://; got 'images.example.com'"),
    ({"T2I_IMAGE_STORE": "s3://bucket"}, "T2I_IMAGE_STORE must be auto, memory, state, dir:<folder> or fsspec:<url>; got 's3://bucket'"),
    ({"T2I_REGISTRY": "<a file whose default is no model of it>"}, "field default: model 'nope/none' is not in the registry"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_a_bad_setting_stops_the_server_at_once_in_one_line(env, says, tmp_path):
    if "T2I_REGISTRY" in env:
        registry = json.loads((ROOT / "models.json").read_text())
        (tmp_path / "models.json").write_text(json.dumps({**registry, "default": "nope/none"}))
        env = {"T2I_REGISTRY": str(tmp_path / "models.json")}
    srv = Server(env)
    try:
        code = srv.proc.wait(timeout=180)  # generous: it is not a measure of speed
    finally:
        srv.stop()
    log = srv.log()
    assert code != 0 and log.count(PREFIX) == 1 and says in log, log[-3000:]
    assert "Traceback" not in log
    if "T2I_MODEL" in env:
        assert "builtin/tiny-sd" in log  # the known ids
