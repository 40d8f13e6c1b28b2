"""Many models: the registry file, three families, schedulers, LRU budget, pins, single-flight loads."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.engine.core import Engine
from t2i_core.common.errors import InvalidRequest, ModelBusy
from t2i_core.common.registry import DEFAULT_REGISTRY, Registry, RegistryError, load_registry_file
from t2i_core.common.schemas import EngineRequest, GenerateRequest, to_engine

FAMILIES = ["builtin/tiny-sd", "builtin/tiny-sdxl", "builtin/tiny-sd3"]
SHIPPED = ["stabilityai/sd-turbo", "stabilityai/sdxl-turbo", "CompVis/stable-diffusion-v1-4",
           "Cagliostrolab/animagine-xl-3.0", "stabilityai/stable-diffusion-3-medium-diffusers", *FAMILIES]


def req(model, seed=1, **kw) -> EngineRequest:
    base = dict(model=model, prompt="a castle on a hill", steps=2, guidance_scale=4.0, width=64, height=64, seed=seed)
    return EngineRequest(**{**base, **kw})


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).reshape(result.height, result.width, 3)


# ---- registry file ---------------------------------------------------------------------------
def test_shipped_registry_has_the_required_models():
    file = load_registry_file(DEFAULT_REGISTRY)
    ids = [m.id for m in file.models]
    assert set(SHIPPED) <= set(ids)
    pipelines = {m.id: m.pipeline for m in file.models}
    assert pipelines["builtin/tiny-sdxl"] == "sdxl" and pipelines["stabilityai/stable-diffusion-3-medium-diffusers"] == "sd3"


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "models.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _entry(**over):
    base = json.loads(DEFAULT_REGISTRY.read_text())["models"][0]
    return {**base, **over}


@pytest.mark.parametrize("data, words", [
    ('{"models": [', ["not valid JSON", "line 1"]),
    ({"models": [_entry(), {k: v for k, v in _entry(id="x/y").items() if k != "pipeline"}]},
     ["entry 1 ('x/y')", "pipeline is required"]),
    ({"models": [_entry(source="s3:bucket/model")]}, ["entry 0", "source must be one of", "'s3:bucket/model'"]),
    ({"models": [_entry(defaults={"steps": 0, "guidance_scale": 1, "width": 64, "height": 64})]},
     ["entry 0", "defaults.steps"]),
    ({"models": [_entry(), _entry()]}, ["appears twice"]),
    ({"models": [_entry(pipeline="sd3", defaults={"steps": 2, "guidance_scale": 1, "width": 64, "height": 64,
                                                  "scheduler": "ddim"})]}, ["'ddim' does not work with sd3"]),
    ({"models": [_entry(colour="blue")]}, ["entry 0", "colour"]),
])
def test_a_bad_registry_file_names_file_entry_and_field(tmp_path, data, words):
    path = _write(tmp_path, data)
    with pytest.raises(RegistryError) as info:
        load_registry_file(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_registry_path_from_the_environment(tmp_path, monkeypatch):
    path = _write(tmp_path, {"default": "only/one", "models": [_entry(id="only/one")]})
    monkeypatch.setenv("T2I_REGISTRY", str(path))
    reg = Registry()
    assert reg.ids() == ["only/one"] and reg.default_id == "only/one"


# ---- families --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", FAMILIES)
def test_each_family_generates_and_edits(engine, model):
    a, b = engine.run([req(model, seed=3), req(model, seed=3, width=96)])
    assert pixels(a).shape == (64, 64, 3) and pixels(b).shape == (64, 96, 3)
    again = engine.run([req(model, seed=3)])[0]
    assert np.array_equal(pixels(a), pixels(again))
    edit = engine.run([req(model, seed=4, mode="edit", strength=0.6, steps=3, image=a.pixels)])[0]
    assert pixels(edit).shape == (64, 64, 3) and not np.array_equal(pixels(edit), pixels(a))


# ---- schedulers ------------------------------------------------------------------------------
def test_scheduler_per_sub_batch_shares_weights_and_does_not_leak(engine):
    model = "builtin/tiny-sd"
    base = engine.models.load(model)
    default_class = type(base.text2image.scheduler)
    dtype = base.text2image.unet.dtype
    out = engine.run([req(model, seed=5), req(model, seed=5, scheduler="ddim"), req(model, seed=5, scheduler="euler_a")])
    assert [r.batch_size for r in out] == [1, 1, 1]
    assert not np.array_equal(pixels(out[0]), pixels(out[1]))
    assert type(base.text2image.scheduler) is default_class  # nothing leaked into the model
    assert base.text2image.unet.dtype == dtype  # (Pipeline.from_pipe would have cast it to float32)
    variant = base.pipeline("generate", "ddim")
    assert variant.unet is base.text2image.unet and type(variant.scheduler).__name__ == "DDIMScheduler"
    assert np.array_equal(pixels(out[0]), pixels(engine.run([req(model, seed=5)])[0]))


def test_scheduler_must_suit_the_family():
    reg = Registry()
    with pytest.raises(InvalidRequest, match="'flow_euler' does not work with sd models"):
        to_engine(GenerateRequest(prompt="x", scheduler="flow_euler"), reg.get("builtin/tiny-sd"), seed=1)
    assert to_engine(GenerateRequest(prompt="x", scheduler="flow_euler"), reg.get("builtin/tiny-sd3"), seed=1).scheduler == "flow_euler"


# ---- memory budget, pins, single flight ------------------------------------------------------
@pytest.fixture(scope="module")
def sizes():
    probe = Engine(Settings(memory_budget_bytes=10**12))
    return {m: probe.models.load(m).bytes for m in FAMILIES}


def test_lru_unloads_the_least_recently_used_idle_model(sizes):
    sd, sdxl, sd3 = FAMILIES
    budget = sizes[sd] + sizes[sdxl] + sizes[sd3] - min(sizes.values()) // 2  # all three do not fit
    eng = Engine(Settings(memory_budget_bytes=budget))

    def use(model_id: str) -> None:  # the weights alone: a run's activations count against the budget too
        with eng.models.use(model_id):
            pass

    use(sd)
    use(sdxl)
    use(sd)  # sd is now more recently used than sdxl
    use(sd3)
    assert eng.models.evicted == [sdxl]
    assert set(eng.models.loaded_ids()) == {sd, sd3}
    states = {s["id"]: s["state"] for s in eng.models.states()}
    assert states[sdxl] == "available" and states[sd] == "loaded"


def test_a_model_in_flight_is_never_unloaded(sizes):
    sd, sdxl, _ = FAMILIES
    budget = int(max(sizes.values()) * 1.1)  # room for one model (and its estimate), not two
    assert budget < min(a + b for a, b in itertools.combinations(sizes.values(), 2))
    eng = Engine(Settings(memory_budget_bytes=budget))
    with eng.models.use(sd):
        with pytest.raises(ModelBusy, match="in flight"):
            eng.models.unload(sd)
        eng.models.load(sdxl)  # over budget, but sd is pinned
        assert sd in eng.models.loaded_ids()
    eng.models.load("builtin/tiny-sd3")  # now sd is idle and goes
    assert sd not in eng.models.loaded_ids()
    assert eng.models.unload("builtin/tiny-sd3") is True and eng.models.unload("builtin/tiny-sd3") is False


def test_concurrent_requests_for_a_loading_model_load_it_once():
    eng = Engine(Settings())
    barrier = threading.Barrier(4)
    results = []

    def worker():
        barrier.wait()
        results.append(eng.models.load("builtin/tiny-sdxl"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert eng.models.loads == 1 and len({id(r) for r in results}) == 1


def test_unavailable_model_has_a_reason_and_fails_alone(tmp_path):
    entries = list(Registry().entries())
    missing = entries[0].model_copy(update={"id": "local/missing", "source": f"local:{tmp_path / 'nothing'}"})
    eng = Engine(Settings(), registry=Registry(entries=[*entries, missing], default="builtin/tiny-sd"))
    state = next(s for s in eng.models.states() if s["id"] == "local/missing")
    assert state["state"] == "unavailable" and "model_index.json not found" in state["reason"]
    ok, bad = eng.run([req("builtin/tiny-sd"), req("local/missing")])
    assert ok.error is None and bad.error["code"] == "model_unavailable"


def test_admin_actions_report_errors_as_data(engine):
    assert engine.model_action("load", "builtin/tiny-sd")["state"] == "loaded"
    assert engine.model_action("load", "no/such")["error"]["code"] == "model_not_found"
    assert engine.model_action("explode", "builtin/tiny-sd")["error"]["param"] == "action"
