"""The opt-in GPU speed options, checked for correctness on the tiny pipeline (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.engine.core import Engine
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine.speedups import Speedups


def requests(n: int, size: int = 64, adapters: list[tuple[str, float]] | None = None) -> list[EngineRequest]:
    return [EngineRequest(model=TINY_SD_ID, prompt=f"p{i}", steps=2, guidance_scale=3.0, width=size, height=size, seed=i,
                          adapters=adapters or []) for i in range(n)]


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


def unique_graphs() -> int:
    """Graphs dynamo has compiled in this process (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compile_warms_up_and_no_batch_size_or_adapter_set_recompiles():
    """With T2I_COMPILE, start-up compiles (preload: batch 1, 2 and the maximum), and then batches of
    every size and every adapter set run on what was compiled: zero recompiles, the same images as the
    model uncompiled."""
    before = unique_graphs()
    engine = Engine(Settings(dtype="float32", compile=1, max_batch_size=4, warmup_sizes="64x64"))
    engine.preload()  # loads (reading the family's adapters into the LoRA slot), compiles, runs batch 1, 2 and 4
    graphs = unique_graphs()
    assert graphs > 0
    plain = Engine(Settings(dtype="float32"))
    ink, pastel = ("tiny-ink", 1.0), ("tiny-pastel", 0.5)
    for n, adapters in ((3, []), (1, [ink]), (4, [ink, pastel]), (2, [("tiny-pastel", 0.8)]), (3, [ink]), (1, [])):
        diff = np.abs(images(engine, requests(n, adapters=adapters)) - images(plain, requests(n, adapters=adapters)))
        assert diff.max() <= 2, (n, adapters, diff.max())
    assert unique_graphs() == graphs  # no recompiles in steady state
    assert engine.compile_watch.graphs == {"startup": graphs - before, "serving": 0}
    assert engine.models.adapter_switches()["adapter_switches"] >= 4


@pytest.mark.slow
def test_compiled_flux_blocks_serve_every_tier_adapter_set_and_batch_size_without_recompiling():
    """A DiT compiles block by block: a speed tier's step cache hooks the blocks outside the compiled
    code and the LoRA slot is swapped in place, so tiers, adapter sets and batch sizes change nothing
    compiled (the tiny FLUX, in float64: its images equal the uncompiled model's within 1 level of 255)."""
    flux, ink = "builtin/tiny-flux", "tiny-flux-ink"
    engine = Engine(Settings(compile=1, max_batch_size=4, warmup_sizes="64x64", model=flux))
    engine.preload()
    assert engine.compile_watch.graphs["startup"] > 0
    graphs = unique_graphs()
    plain = Engine(Settings())
    for n, speed, adapters in ((3, "quality", []), (1, "fast", [(ink, 1.0)]), (4, "balanced", [(ink, 0.6)]),
                               (2, "fast", []), (1, "quality", [(ink, -0.8)])):
        reqs = [EngineRequest(model=flux, prompt=f"p{i}" + " longer" * i, steps=6, guidance_scale=3.5, width=64,
                              height=64, seed=i, speed=speed, adapters=adapters) for i in range(n)]
        compiled, eager = engine.run(reqs), plain.run(reqs)
        assert compiled[0].cache_skipped == eager[0].cache_skipped and (speed == "quality") == (compiled[0].cache_calls == 0)
        diff = np.abs(np.stack([np.frombuffer(r.pixels, np.uint8).astype(int) for r in compiled])
                      - np.stack([np.frombuffer(r.pixels, np.uint8).astype(int) for r in eager]))
        assert diff.max() <= 1, (n, speed, adapters, diff.max())
    assert unique_graphs() == graphs and engine.compile_watch.graphs["serving"] == 0
    assert engine.stats()["compiled_graphs_serving"] == 0


@pytest.mark.slow
def test_a_compiled_reference_edit_model_compiles_its_edits_at_start_up():
    """A reference edit (Kontext) adds its image's tokens to every block's sequence: the warm-up runs
    edits too, so the first edits under traffic compile nothing."""
    from t2i_core.common.schemas import EditRequest, InputImage, to_engine

    kontext = "builtin/tiny-flux-kontext"
    engine = Engine(Settings(compile=1, max_batch_size=2, warmup_sizes="64x64", model=kontext))
    engine.preload()
    entry = engine.registry.get(kontext)
    rng = np.random.default_rng(0)

    def edit(seed: int) -> EngineRequest:
        image = InputImage(width=64, height=64, pixels=rng.integers(0, 256, 64 * 64 * 3, dtype=np.uint8).tobytes())
        item = to_engine(EditRequest(prompt=f"make it red {seed}", model=kontext), entry, seed=seed, mode="edit",
                         registry=engine.registry, image_size=(64, 64))
        return item.model_copy(update={"references": [image]})

    for batch in ([edit(1)], [edit(2), edit(3)]):
        assert all(r.error is None for r in engine.run(batch))
    assert engine.compile_watch.graphs["startup"] > 0 and engine.compile_watch.graphs["serving"] == 0
