"""The opt-in GPU speed options, checked for correctness on the tiny pipeline (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.engine.core import Engine
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine.speedups import Speedups


def requests(n: int, size: int = 64) -> list[EngineRequest]:
    return [EngineRequest(model=TINY_SD_ID, prompt=f"p{i}", steps=2, guidance_scale=3.0, width=size, height=size, seed=i)
            for i in range(n)]


def images(engine: Engine, reqs: list[EngineRequest]) -> np.ndarray:
    results = engine.run(reqs)
    assert all(r.error is None for r in results), results[0].error
    return np.stack([np.frombuffer(r.pixels, np.uint8).astype(int) for r in results])


def test_warmup_sizes_are_validated():
    assert Speedups.from_settings(Settings(warmup_sizes="512x512, 768x512")).warmup_sizes == ((512, 512), (768, 512))
    with pytest.raises(ValueError, match="T2I_WARMUP_SIZES.*got '500x500'"):
        Speedups.from_settings(Settings(warmup_sizes="500x500"))


def test_channels_last_and_fused_qkv_keep_the_images():
    plain = Engine(Settings(dtype="float32"))
    fast = Engine(Settings(dtype="float32", channels_last=1, fuse_qkv=1))
    pipe = fast.load(TINY_SD_ID).text2image
    assert any("Fused" in type(p).__name__ for p in pipe.unet.attn_processors.values())
    conv = next(m for m in pipe.unet.modules() if m.__class__.__name__ == "Conv2d")
    import torch

    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    reqs = requests(3)
    diff = np.abs(images(plain, reqs) - images(fast, reqs))
    assert diff.max() <= 2, diff.max()  # float32 summation order only
    # the edit pipeline shares the optimized modules
    assert fast.load(TINY_SD_ID).image2image.unet is pipe.unet


@pytest.mark.slow
def test_compile_warms_up_and_steady_state_batches_do_not_recompile():
    from torch._dynamo.utils import counters

    engine = Engine(Settings(dtype="float32", compile=1, max_batch_size=4, warmup_sizes="64x64"))
    engine.preload()  # loads, compiles, runs batch 1, 2 and 4
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    plain = Engine(Settings(dtype="float32"))
    for n in (3, 4, 1, 2):
        diff = np.abs(images(engine, requests(n)) - images(plain, requests(n)))
        assert diff.max() <= 2, (n, diff.max())
    assert counters["stats"]["unique_graphs"] == graphs  # no recompiles in steady state
