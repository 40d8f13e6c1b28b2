"""LoRA adapters and a ControlNet for FLUX.1, in the engine: a tiny random FLUX LoRA changes the image
(its weight matters, switching back gives the same image again), also on the fp8 and int8 quantized
entries; the tiny FLUX ControlNet follows each item's control image in a batch, with per-row guidance.
A1111's ``<lora:...>`` tags resolve through the same registry lookup (``registry.adapter``)."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.schemas import GenerateRequest, to_engine

INK, CANNY = "tiny-flux-ink", "tiny-flux-canny"


@pytest.fixture(scope="module")
def engine():
    from t2i_core.engine.core import Engine

    engine = Engine(Settings(torch_threads=1))
    yield engine
    engine.close()


def run(engine, model: str = "builtin/tiny-flux", seeds=(3,), guidance=None, control=None, **fields) -> list[np.ndarray]:
    entry = engine.registry.get(model)
    items = []
    for i, seed in enumerate(seeds):
        req = GenerateRequest(prompt="a red fox", model=model, guidance_scale=guidance[i] if guidance else None, **fields)
        item = to_engine(req, entry, seed=seed, registry=engine.registry)
        if control is not None:
            item = item.model_copy(update={"control_image": control[i]})
        items.append(item)
    results = engine.run(items)
    assert all(r.error is None for r in results), [r.error for r in results]
    return [np.frombuffer(r.pixels, np.uint8).reshape(64, 64, 3).astype(int) for r in results]


def test_a_flux_lora_changes_the_image_and_its_weight_matters(engine):
    (plain,) = run(engine)
    (inked,) = run(engine, adapters=[{"id": INK}])
    (half,) = run(engine, adapters=[{"id": INK, "weight": 0.5}])
    assert np.abs(inked - plain).mean() > 1 and np.abs(half - plain).mean() < np.abs(inked - plain).mean()
    (again,) = run(engine)
    assert np.array_equal(again, plain)  # never fused: off again, the same image


@pytest.mark.parametrize("model", ["builtin/tiny-flux-fp8", "builtin/tiny-flux-int8"])
def test_a_flux_lora_loads_and_switches_on_a_quantized_model(engine, model):
    (plain,) = run(engine, model)
    (inked,) = run(engine, model, adapters=[{"id": INK}])
    assert np.abs(inked - plain).mean() > 1
    assert np.array_equal(run(engine, model)[0], plain)
    assert np.array_equal(run(engine, model, adapters=[{"id": INK}])[0], inked)


def test_the_flux_controlnet_follows_each_items_control_image(engine):
    rng = np.random.default_rng(5)
    controls = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8).tobytes() for _ in range(2)]
    batch = run(engine, seeds=(3, 3), guidance=(2.0, 5.0), control=controls, controlnet=CANNY,
                control_image="x")
    assert np.abs(batch[0] - batch[1]).mean() > 1
    for i in range(2):  # each row as alone: its own control image and guidance
        (alone,) = run(engine, guidance=((2.0, 5.0)[i],), control=[controls[i]], controlnet=CANNY, control_image="x")
        assert np.array_equal(alone, batch[i])
    (plain,) = run(engine)
    assert np.abs(plain - batch[0]).mean() > 1


def test_flux_adapters_and_controlnets_fit_flux_models_only(engine):
    from t2i_core.common.errors import UnknownAdapter, UnknownControlNet

    registry = engine.registry
    assert registry.adapter(INK, registry.get("builtin/tiny-flux-gguf")).family == "flux"
    with pytest.raises(UnknownAdapter, match="tiny-flux-ink"):
        registry.adapter("tiny-ink", registry.get("builtin/tiny-flux"))
    with pytest.raises(UnknownControlNet):
        registry.controlnet(CANNY, registry.get("builtin/tiny-sd"))
