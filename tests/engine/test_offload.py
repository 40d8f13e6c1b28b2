"""Offloading per registry entry (``memory.offload``: model, sequential, group), checked on the CPU:
the same images as without (the hooks move weights, never change them), and what stays on the device
under each mode, which the memory budget counts on an accelerator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.schemas import GenerateRequest, to_engine

MODES = ("model", "sequential", "group")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The tiny FLUX.1 model as it ships, and the same with each offload mode."""
    from t2i_core.common.registry import DEFAULT_REGISTRY, Registry
    from t2i_core.engine.core import Engine

    raw = json.loads(DEFAULT_REGISTRY.read_text())
    base = next(m for m in raw["models"] if m["id"] == "builtin/tiny-flux")
    for mode in MODES:
        raw["models"].append({**base, "id": f"builtin/tiny-flux-{mode}-offload",
                              "memory": {**base["memory"], "offload": mode}})
    path = tmp_path_factory.mktemp("offload") / "models.json"
    path.write_text(json.dumps(raw))
    engine = Engine(Settings(torch_threads=1), registry=Registry(path=path))
    yield engine
    engine.close()


def images(engine, model: str) -> list[bytes]:
    entry = engine.registry.get(model)
    items = [to_engine(GenerateRequest(prompt=f"a red fox {i}", model=model), entry, seed=i) for i in range(2)]
    results = engine.run(items)
    assert all(r.error is None for r in results), [r.error for r in results]
    return [r.pixels for r in results]


@pytest.mark.parametrize("mode", MODES)
def test_an_offloaded_model_makes_the_same_images(engine, mode):
    assert images(engine, f"builtin/tiny-flux-{mode}-offload") == images(engine, "builtin/tiny-flux")


def test_what_stays_on_the_device_per_mode(engine):
    from t2i_core.engine.offload import resident_bytes
    from t2i_core.weights.quantize import component_bytes

    pipe = engine.models.load("builtin/tiny-flux").text2image
    sizes = {name: component_bytes(c) for name, c in pipe.components.items() if hasattr(c, "parameters")}
    whole = resident_bytes(pipe, "none")
    assert whole == sum(sizes.values())
    assert resident_bytes(pipe, "model") == max(sizes.values())
    assert resident_bytes(pipe, "sequential") < resident_bytes(pipe, "group") <= resident_bytes(pipe, "model") < whole
    # on the CPU the budget counts every weight: offloading to the CPU frees no RAM
    assert engine.models.load("builtin/tiny-flux-model-offload").bytes == whole


def test_an_unknown_mode_is_refused_naming_the_field(tmp_path):
    from t2i_core.common.registry import DEFAULT_REGISTRY, RegistryError, load_registry_file

    raw = json.loads(DEFAULT_REGISTRY.read_text())
    raw["models"][0]["memory"]["offload"] = "disk"
    path = tmp_path / "models.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match="memory.offload"):
        load_registry_file(path)
