"""Per-request guidance on a guidance-distilled FLUX.1 model shares one pipeline call: each row's
transformer input carries its own scale (t2i_core/engine/row_guidance.py), so a batch of 1.5 and 6.0
gives what each gives alone: bit-exact in float64, within 1e-5 (of 1.0, the pixel range) in float32,
where the kernels may sum in another order at another batch size (measured: 3.6e-6)."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.schemas import GenerateRequest, to_engine

FLUX = "builtin/tiny-flux"


def run_raw(engine, guidances: list[float]) -> tuple[list[np.ndarray], list[int]]:
    """The images (floats 0..1 before the engine rounds them) of one engine call, and its batch sizes."""
    items = [to_engine(GenerateRequest(prompt=f"a red fox {i}", model=FLUX, guidance_scale=g), engine.registry.get(FLUX),
                       seed=10 + i) for i, g in enumerate(guidances)]
    import functools

    import diffusers

    found: list[np.ndarray] = []
    original = diffusers.FluxPipeline.__call__

    @functools.wraps(original)
    def keep(self, *args, **kwargs):  # the pipeline's own output, before the engine makes it 8-bit
        out = original(self, *args, **kwargs)
        found.extend(np.asarray(out.images))
        return out

    diffusers.FluxPipeline.__call__ = keep
    try:
        results = engine.run(items)
    finally:
        diffusers.FluxPipeline.__call__ = original
    assert all(r.error is None for r in results), [r.error for r in results]
    return found, [r.batch_size for r in results]


@pytest.fixture(scope="module", params=["float64", "float32"])
def engine(request):
    from t2i_core.engine.core import Engine

    engine = Engine(Settings(dtype=request.param, torch_threads=1))
    yield engine
    engine.close()


def test_two_guidance_scales_share_a_call_and_each_row_is_its_own(engine):
    batch, sizes = run_raw(engine, [1.5, 6.0])
    assert sizes == [2, 2]
    alone = [run_raw(engine, [1.5])[0][0], run_raw(engine, [9.0, 6.0])[0][1]]
    tolerance = 0.0 if engine.settings.dtype == "float64" else 1e-5
    for single, batched in zip(alone, batch):
        assert np.abs(single - batched).max() <= tolerance
    assert np.abs(batch[0] - run_raw(engine, [6.0])[0][0]).max() > 1e-3  # the scale matters


def test_models_without_per_row_guidance_keep_it_in_the_batch_key(engine):
    z = engine.registry.get("builtin/tiny-z-image")
    keys = {to_engine(GenerateRequest(prompt="x", model=z.id, guidance_scale=g), z, seed=1).batch_key() for g in (1, 2)}
    assert len(keys) == 2
