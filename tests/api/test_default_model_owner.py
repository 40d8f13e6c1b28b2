"""The engine owns the default model: API workers keep a copy that follows it, so a default set
through one worker is what every worker's next request without a model runs on."""

from __future__ import annotations

import asyncio

import pytest

from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.common.config import Settings
from t2i_core.common.registry import Registry
from t2i_core.common.schemas import GenerateRequest


def _worker(engine) -> RequestFlow:
    """An API worker: its own Registry object (as in its own process), the shared engine."""
    return RequestFlow(LocalEngineClient(engine), Settings(encode_processes=0), Registry(default=engine.registry.default_id))


def test_a_default_set_through_one_worker_is_used_by_the_others(engine):
    first = engine.registry.default_id
    a, b = _worker(engine), _worker(engine)
    other = "builtin/tiny-sdxl" if first != "builtin/tiny-sdxl" else "builtin/tiny-sd"

    async def scenario() -> tuple[str, str, str]:
        await a.model_action("set_default", other)
        (image,) = await b.generate(GenerateRequest(prompt="x", width=64, height=64, num_inference_steps=1, seed=1))
        named = await b.generate(GenerateRequest(prompt="x", model=first, width=64, height=64, num_inference_steps=1))
        return image.model, b.registry.default_id, named[0].model

    try:
        used, b_default, named = asyncio.run(scenario())
    finally:
        engine.registry.set_default(first)
    assert used == other  # b's copy was stale; the engine's default won, and b's copy follows it now
    assert b_default == other
    assert named == first  # a request that names its model is not affected


def test_model_listing_reports_the_engines_default_and_changes_nothing(engine):
    """Listing is a read: it reports the engine's default without touching the worker's copy (which
    the engine's answer to the next request corrects)."""
    first = engine.registry.default_id
    worker = _worker(engine)
    other = "builtin/tiny-sd3"
    engine.registry.set_default(other)  # e.g. through another worker
    try:
        rows = asyncio.run(worker.model_states())
        assert [r["id"] for r in rows if r["default"]] == [other]
        assert worker.registry.default_id == first
        (image,) = asyncio.run(worker.generate(GenerateRequest(prompt="x", width=64, height=64, num_inference_steps=1)))
        assert image.model == other and worker.registry.default_id == other
    finally:
        engine.registry.set_default(first)


def test_each_service_has_its_own_traffic_settings():
    import service

    engine, api = service.EngineService.config["traffic"], service.API.config["traffic"]
    assert "external_queue" not in engine  # BentoML's task settings stay on the service with the task
    assert engine["concurrency"] == service.SETTINGS.max_batch_size
    assert api["concurrency"] == service.SETTINGS.max_in_flight
    assert engine is not api


@pytest.mark.parametrize("body", [{"prompt": "x", "steps": 2}, {"prompt": "x", "num_inference_steps": 2}])
def test_native_input_model_takes_steps_under_both_names(body):
    import service

    spec = service.API.apis["generate"].input_spec
    assert spec.model_validate(body).num_inference_steps == 2
    assert {"steps", "num_inference_steps"} <= set(spec.model_json_schema()["properties"])
