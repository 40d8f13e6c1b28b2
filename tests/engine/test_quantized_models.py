"""Quantized registry entries in the engine: the tiny FLUX.1 model with its transformer (and T5 encoder)
in fp8, int8 and GGUF Q8_0 loads quantized, is counted by its real bytes (below the unquantized
model's), generates within the bound of the unquantized model's image (bounds and their reasons:
tests/weights/test_quantize.py), and nf4 is refused on a machine without CUDA with the reason.

All in float32 (``T2I_DTYPE``): the quantized entries compute in float32 (torchao's int8 has no float64
kernels), and the starting noise of one seed differs between float32 and float64."""

from __future__ import annotations

import json

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.errors import ModelUnavailable
from t2i_core.common.schemas import GenerateRequest, to_engine

#: relative L2 error of the 64 px image against the unquantized model's (measured: fp8 0.007, int8 0.003,
#: Q8_0 0.003); the same bounds as tests/weights/test_quantize.py's
REL_ERR = {"fp8": 0.08, "int8": 0.02, "gguf": 0.02}
QUANTIZED = {"builtin/tiny-flux-fp8": "fp8", "builtin/tiny-flux-int8": "int8", "builtin/tiny-flux-gguf": "gguf"}


@pytest.fixture(scope="module")
def engine():
    from t2i_core.engine.core import Engine

    engine = Engine(Settings(dtype="float32", torch_threads=1))
    yield engine
    engine.close()


def image(engine, model: str) -> np.ndarray:
    entry = engine.registry.get(model)
    (result,) = engine.run([to_engine(GenerateRequest(prompt="a red fox", model=model), entry, seed=3)])
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).astype(np.float64) / 255


@pytest.fixture(scope="module")
def reference(engine) -> np.ndarray:
    return image(engine, "builtin/tiny-flux")


@pytest.mark.parametrize("model", sorted(QUANTIZED))
def test_a_quantized_entry_loads_smaller_and_generates_within_the_bound(engine, reference, model):
    from t2i_core.weights.quantize import quantized_method

    out = image(engine, model)
    error = np.linalg.norm(out - reference) / np.linalg.norm(reference)
    assert error < REL_ERR[QUANTIZED[model]], error
    loaded = engine.models.load(model)
    assert quantized_method(loaded.text2image.transformer) == QUANTIZED[model]
    states = {row["id"]: row for row in engine.models.states()}
    assert states[model]["bytes"] < states["builtin/tiny-flux"]["bytes"]
    assert loaded.bytes == states[model]["bytes"]  # the real bytes: what the memory budget counts


def test_the_estimate_before_loading_counts_quantized_bytes():
    from pathlib import Path

    from t2i_core.common.registry import Registry
    from t2i_core.engine.model_manager import estimate_bytes

    registry = Registry()
    folder = Path(registry.get("builtin/tiny-flux").local_path())
    plain = estimate_bytes(folder, 4)
    for model in QUANTIZED:
        assert estimate_bytes(folder, 4, registry.get(model).quantization_spec) < plain, model


def test_nf4_is_refused_without_cuda_naming_the_reason(tmp_path):
    from t2i_core.common.registry import DEFAULT_REGISTRY, Registry
    from t2i_core.engine.core import Engine

    raw = json.loads(DEFAULT_REGISTRY.read_text())
    entry = dict(next(m for m in raw["models"] if m["id"] == "builtin/tiny-flux"), id="builtin/tiny-flux-nf4",
                 quantization={"transformer": "nf4"})
    raw["models"].append(entry)
    path = tmp_path / "models.json"
    path.write_text(json.dumps(raw))
    engine = Engine(Settings(torch_threads=1), registry=Registry(path=path))
    try:
        with pytest.raises(ModelUnavailable, match="nf4 .bitsandbytes. needs a CUDA GPU"):
            engine.models.load("builtin/tiny-flux-nf4")
        row = next(r for r in engine.models.states() if r["id"] == "builtin/tiny-flux-nf4")
        assert row["state"] == "unavailable" and "CUDA" in row["reason"]
    finally:
        engine.close()
