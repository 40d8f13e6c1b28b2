"""t2i_core/api/surfaces/a1111/callers.py: each A1111 caller's latest request, shared by API workers."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from t2i_core.api.surfaces.a1111 import callers as callers_module
from t2i_core.api.surfaces.a1111.callers import CallerJobs, caller_id
from t2i_core.state.memory import MemoryState
from t2i_core.state.sqlite import SqliteState


def request(auth: str | None = None, host: str = "10.0.0.7") -> Request:
    headers = [(b"authorization", auth.encode())] if auth else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (host, 5000)})


def test_a_caller_is_its_key_else_its_address_and_keys_are_never_kept_as_given():
    assert caller_id(request(host="10.0.0.7")) == "addr:10.0.0.7"
    keyed = caller_id(request("Bearer s3cret"))
    assert keyed.startswith("key:") and "s3cret" not in keyed and keyed == caller_id(request("Bearer s3cret", "10.9.9.9"))
    assert keyed != caller_id(request("Bearer other"))


def test_api_workers_share_the_latest_request_of_each_caller(tmp_path, monkeypatch):
    path = str(tmp_path / "state.sqlite")
    one, two = CallerJobs(SqliteState(path)), CallerJobs(SqliteState(path))  # two API worker processes
    monkeypatch.setattr(callers_module, "LATEST_KEPT_S", 0.2)

    async def scenario() -> None:
        await one.remember("addr:a", "job-1")
        assert (await two.latest("addr:a"))[0] == "job-1"
        await two.remember("addr:a", "job-2")  # the caller's next request, taken by the other worker
        assert (await one.latest("addr:a"))[0] == "job-2"
        await asyncio.sleep(0.3)
        assert await two.latest("addr:a") is None  # forgotten once no job can still run

    asyncio.run(scenario())


def test_a_request_that_fails_before_running_leaves_the_callers_previous_job(tmp_path):
    async def scenario(jobs: CallerJobs) -> None:
        await jobs.remember("addr:a", "running")
        previous = await jobs.latest("addr:a")
        await jobs.remember("addr:a", "failed")
        await jobs.restore("addr:a", "failed", previous)
        assert await jobs.latest("addr:a") == previous
        await jobs.remember("addr:a", "failed-too")
        await jobs.remember("addr:a", "newer")  # sent meanwhile: the newer one stays
        await jobs.restore("addr:a", "failed-too", previous)
        assert (await jobs.latest("addr:a"))[0] == "newer"
        await jobs.remember("addr:b", "first")
        await jobs.restore("addr:b", "first", None)
        assert await jobs.latest("addr:b") is None

    asyncio.run(scenario(CallerJobs(MemoryState())))
    asyncio.run(scenario(CallerJobs(SqliteState(str(tmp_path / "state.sqlite")))))


def test_a1111_progress_after_a_request_that_could_not_run(engine):
    """The caller's finished job, not the failed request, is what progress shows; an unknown-weights
    model fails in the engine (503) without running."""
    from starlette.testclient import TestClient

    from t2i_core.api.engine_client import LocalEngineClient
    from t2i_core.api.request_flow import RequestFlow
    from t2i_core.api.image_store import ImageStore
    from t2i_core.api.surfaces import build_surfaces
    from t2i_core.common.registry import Registry

    if Registry().get("stabilityai/sd-turbo").unavailable_reason() is None:
        import pytest

        pytest.skip("sd-turbo's weights are in this machine's Hugging Face cache")
    flow = RequestFlow(LocalEngineClient(engine), registry=engine.registry)
    client = TestClient(build_surfaces(lambda: flow, ImageStore(60, 10_000_000)))
    body = {"prompt": "a kite", "steps": 2, "width": 64, "height": 64, "cfg_scale": 0}
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    failed = client.post("/sdapi/v1/txt2img",
                         json={**body, "override_settings": {"sd_model_checkpoint": "stabilityai/sd-turbo"}})
    assert failed.status_code == 503
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 1.0 and progress["state"]["sampling_steps"] == 2 and progress["eta_relative"] == 0


def test_each_callers_checkpoint_is_its_own_and_shared_by_the_api_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(callers_module, "CALLERS_KEPT", 2)
    path = str(tmp_path / "state.sqlite")

    async def scenario(one: CallerJobs, two: CallerJobs) -> None:
        assert await one.checkpoint("key:a") is None
        await one.choose_checkpoint("key:a", "builtin/tiny-sdxl")
        await two.choose_checkpoint("key:b", "builtin/tiny-sd")
        assert await two.checkpoint("key:a") == "builtin/tiny-sdxl" and await one.checkpoint("key:b") == "builtin/tiny-sd"
        await two.choose_checkpoint("key:a", "builtin/tiny-sd")  # chosen again, through the other worker
        assert await one.checkpoint("key:a") == "builtin/tiny-sd"
        await one.choose_checkpoint("key:c", "builtin/tiny-sd")
        assert await two.checkpoint("key:b") is None  # the oldest choice beyond the cap is forgotten

    memory = CallerJobs(MemoryState())
    asyncio.run(scenario(memory, memory))
    asyncio.run(scenario(CallerJobs(SqliteState(path)), CallerJobs(SqliteState(path))))  # two API worker processes
