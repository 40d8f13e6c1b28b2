"""Speed tiers' step caches in the engine, on the tiny SD3 (a DiT) and the tiny FLUX."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.schemas import EngineRequest
from t2i_core.common.speed_tiers import SpeedTier
from t2i_core.engine.core import Engine
from t2i_core.engine.step_cache import step_cache

SD3 = "builtin/tiny-sd3"
STEPS = 7


def request(speed: str = "quality", seed: int = 0, steps: int = STEPS) -> EngineRequest:
    return EngineRequest(model=SD3, prompt=f"p{seed}", steps=steps, guidance_scale=0.0, width=64, height=64, seed=seed,
                         speed=speed)


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).astype(int)


@pytest.fixture(scope="module")
def sd3_engine() -> Engine:
    return Engine(Settings(dtype="float32"))


def test_a_tier_skips_block_work_and_counts_it(sd3_engine):
    (quality,) = sd3_engine.run([request()])
    (balanced,) = sd3_engine.run([request("balanced")])
    (fast,) = sd3_engine.run([request("fast")])
    assert (quality.cache_calls, quality.cache_skipped) == (0, 0)
    # tiny-sd3 has 2 blocks; its last (context_pre_only) is never cached: one hooked block per step
    assert balanced.cache_calls == fast.cache_calls == STEPS
    # balanced: computes steps 0 and 2, 4, 6 (every 2nd after the first); fast: 0, 2, 5
    assert (balanced.cache_skipped, fast.cache_skipped) == (3, 4)
    assert not np.array_equal(pixels(fast), pixels(quality))
    (again,) = sd3_engine.run([request()])  # the cache came off with its batch
    assert np.array_equal(pixels(again), pixels(quality)) and again.cache_calls == 0


def test_tiers_run_in_batches_of_their_own(sd3_engine):
    results = sd3_engine.run([request("quality", 1), request("fast", 2), request("balanced", 3), request("fast", 4)])
    assert [r.batch_size for r in results] == [1, 2, 1, 2]
    assert [r.cache_skipped for r in results] == [0, 4, 3, 4]
    (alone,) = sd3_engine.run([request("fast", 2)])
    # float32 kernels differ in the last bits by batch size; the cache's decisions do not depend on the batch
    assert np.abs(pixels(alone) - pixels(results[1])).max() <= 2


def test_a_scheduled_cache_keeps_an_image_independent_of_its_batch():
    """In float64 (bit-exact whatever the batch), a TaylorSeer tier's image is the same alone and batched:
    its skips follow the step schedule, not the batch's data."""
    engine = Engine(Settings(dtype="float64"))
    (alone,) = engine.run([request("fast", 5)])
    batched = engine.run([request("fast", 6), request("fast", 5), request("fast", 7)])
    assert np.array_equal(pixels(alone), pixels(batched[1]))


def test_the_caches_hook_any_dit_family_and_leave_it_as_it_was(tmp_path):
    """New DiT families need only registry data: the caches find their blocks (here FLUX's double- and
    single-stream blocks) and the modules' forwards come back unchanged."""
    import torch
    from diffusers import FluxPipeline

    from t2i_core.weights.tiny_dit import build_tiny_dit

    pipe = FluxPipeline.from_pretrained(build_tiny_dit("flux", tmp_path / "flux"), dtype=torch.float32,
                                        local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def run() -> np.ndarray:
        return pipe(prompt=["a", "b"], num_inference_steps=6, guidance_scale=3.5, width=64, height=64, output_type="np",
                    generator=[torch.Generator().manual_seed(i) for i in range(2)]).images

    before = {name: module.__dict__.get("forward") for name, module in pipe.transformer.named_modules()}
    full = run()
    for tier in (SpeedTier(cache="first_block", options={"threshold": 0.5}),
                 SpeedTier(cache="taylorseer", options={"cache_interval": 3, "disable_cache_before_step": 1}),
                 SpeedTier(cache="mag", options={"mag_ratios": [1.0] * 6, "threshold": 0.5}),
                 SpeedTier(cache="pab", options={"spatial_attention_block_skip_range": 2,
                                                 "spatial_attention_timestep_skip_range": [0, 1000]})):
        with step_cache(pipe, tier, 6) as count:
            cached = run()
        assert count.calls > 0 and 0 < count.skipped < count.calls, (tier.cache, count)
        assert not np.array_equal(cached, full), tier.cache
        assert {name: module.__dict__.get("forward") for name, module in pipe.transformer.named_modules()} == before
        assert np.array_equal(run(), full), tier.cache


FLUX = "builtin/tiny-flux"
#: the tiny DiT builtins besides SD3 and FLUX.1: each family's tiers are registry data only
OTHER_DITS = ["builtin/tiny-flux-kontext", "builtin/tiny-flux2-klein", "builtin/tiny-qwen-image",
              "builtin/tiny-qwen-image-edit", "builtin/tiny-z-image"]


@pytest.fixture(scope="module")
def dit_engine() -> Engine:
    from t2i_core.patches.transformers import video_processor_optional

    video_processor_optional()  # what install_patches does in the server (Qwen-Image-Edit's processor)
    engine = Engine(Settings(torch_threads=1))  # each tiny DiT in its entry's cpu_dtype
    yield engine
    engine.close()


def dit_request(model: str, speed: str, seed: int, steps: int = 8) -> EngineRequest:
    return EngineRequest(model=model, prompt=f"p{seed}", steps=steps, guidance_scale=3.5, width=64, height=64, seed=seed,
                         speed=speed)


def test_a_tier_changes_the_work_on_the_tiny_flux_and_batches_apart(dit_engine):
    results = dit_engine.run([dit_request(FLUX, "quality", 1), dit_request(FLUX, "fast", 2),
                              dit_request(FLUX, "balanced", 3), dit_request(FLUX, "fast", 4)])
    assert [r.batch_size for r in results] == [1, 2, 1, 2]
    # tiny-flux: one double-stream and one single-stream block, both hooked: 2 calls a step over 8 steps;
    # balanced computes steps 0, 2, 4, 6 (4 predicted per block), fast 0, 2, 5 (5 predicted per block)
    assert [r.cache_calls for r in results] == [0, 16, 16, 16]
    assert [r.cache_skipped for r in results] == [0, 10, 8, 10]
    (full,) = dit_engine.run([dit_request(FLUX, "quality", 2)])
    (alone,) = dit_engine.run([dit_request(FLUX, "fast", 2)])
    assert not np.array_equal(pixels(alone), pixels(full))
    # float64: the cache's schedule, not the batch, decides; an image is the same alone and batched (1 level
    # of 255 allowed for the order of float sums over a batch)
    assert np.abs(pixels(alone) - pixels(results[1])).max() <= 1


@pytest.mark.parametrize("model", OTHER_DITS)
def test_every_dit_familys_tiers_skip_block_work(dit_engine, model):
    (quality,) = dit_engine.run([dit_request(model, "quality", 1, steps=4)])
    (fast,) = dit_engine.run([dit_request(model, "fast", 1, steps=4)])
    assert quality.cache_calls == 0 and fast.cache_calls > 0
    # fast (every 3rd step after the first computed): steps 1 and 3 of 4 predicted in every hooked block
    assert fast.cache_skipped * 2 == fast.cache_calls, (fast.cache_calls, fast.cache_skipped)
    assert not np.array_equal(pixels(fast), pixels(quality))


@pytest.fixture(scope="module")
def offload_engine(tmp_path_factory) -> Engine:
    """The tiny FLUX.1 as it ships and the same with group offloading (whose hook comes before the cache's)."""
    import json

    from t2i_core.common.registry import DEFAULT_REGISTRY, Registry

    raw = json.loads(DEFAULT_REGISTRY.read_text())
    base = next(m for m in raw["models"] if m["id"] == FLUX)
    raw["models"].append({**base, "id": "builtin/tiny-flux-group", "memory": {**base["memory"], "offload": "group"}})
    path = tmp_path_factory.mktemp("offload") / "models.json"
    path.write_text(json.dumps(raw))
    engine = Engine(Settings(torch_threads=1), registry=Registry(path=path))
    yield engine
    engine.close()


def test_a_tier_counts_the_same_under_group_offloading_batch_after_batch(offload_engine):
    """Group offloading puts its hook on each block before the cache's: the counts wrap the cache's own
    hook, so they are those without offloading, the same every batch, and the images do not change."""
    (plain,) = offload_engine.run([dit_request(FLUX, "fast", 2)])
    assert (plain.cache_calls, plain.cache_skipped) == (16, 10)
    net = offload_engine.models.load("builtin/tiny-flux-group").text2image.transformer
    before = {name: (module.__dict__.get("forward"), [ref.forward for ref in module._diffusers_hook._fn_refs])
              for name, module in net.named_modules() if hasattr(module, "_diffusers_hook")}
    for _ in range(3):
        (offloaded,) = offload_engine.run([dit_request("builtin/tiny-flux-group", "fast", 2)])
        assert (offloaded.cache_calls, offloaded.cache_skipped) == (16, 10)
        assert np.array_equal(pixels(offloaded), pixels(plain))
        after = {name: (module.__dict__.get("forward"), [ref.forward for ref in module._diffusers_hook._fn_refs])
                 for name, module in net.named_modules() if hasattr(module, "_diffusers_hook")}
        assert after == before  # the offload hooks' references are as they were


def test_the_mag_cache_is_told_the_steps_an_image_to_image_call_runs(tmp_path):
    """At strength 0.5, 8 steps run 4: with retention_ratio 0.5 the cache computes the first half of
    those 4 (2) and answers the rest (ratios of 1: nothing to correct), in each of the 2 hooked blocks.
    Told 8 steps, it would have computed all 4."""
    import json

    from t2i_core.common.registry import DEFAULT_REGISTRY, Registry

    raw = json.loads(DEFAULT_REGISTRY.read_text())
    base = next(m for m in raw["models"] if m["id"] == FLUX)
    mag = {"cache": "mag", "options": {"mag_ratios": [1.0] * 4, "retention_ratio": 0.5, "threshold": 1.0,
                                       "max_skip_steps": 4}}
    raw["models"].append({**base, "id": "builtin/tiny-flux-mag", "speed": {"fast": mag}})
    path = tmp_path / "models.json"
    path.write_text(json.dumps(raw))
    engine = Engine(Settings(torch_threads=1), registry=Registry(path=path))
    side = 64
    gradient = np.tile(np.linspace(0, 255, side, dtype=np.uint8)[None, :, None], (side, 1, 3)).tobytes()
    try:
        (edit,) = engine.run([EngineRequest(model="builtin/tiny-flux-mag", prompt="p", steps=8, guidance_scale=3.5,
                                            width=side, height=side, seed=1, speed="fast", mode="edit", image=gradient,
                                            strength=0.5)])
        assert edit.error is None, edit.error
        assert (edit.cache_calls, edit.cache_skipped) == (8, 4)
    finally:
        engine.close()


def test_a_pab_tier_is_refused_on_a_compiled_engine_before_anything_loads(tmp_path):
    """The pab cache hooks attention layers inside the compiled blocks: with T2I_COMPILE its tier is a 400
    naming the field (nothing is loaded or compiled for it); the model's other tiers still run."""
    import json

    from t2i_core.common.errors import InvalidRequest
    from t2i_core.common.registry import DEFAULT_REGISTRY, Registry

    raw = json.loads(DEFAULT_REGISTRY.read_text())
    base = next(m for m in raw["models"] if m["id"] == FLUX)
    pab = {"cache": "pab", "options": {"spatial_attention_block_skip_range": 2,
                                       "spatial_attention_timestep_skip_range": [0, 1000]}}
    raw["models"].append({**base, "id": "builtin/tiny-flux-pab", "speed": {**base.get("speed", {}), "fast": pab}})
    path = tmp_path / "models.json"
    path.write_text(json.dumps(raw))
    engine = Engine(Settings(torch_threads=1, compile=1), registry=Registry(path=path))
    try:
        (refused,) = engine.run([dit_request("builtin/tiny-flux-pab", "fast", 1, steps=2)])
        assert refused.error is not None and refused.error["code"] == InvalidRequest.code, refused.error
        assert refused.error["param"] == "speed" and "pab" in refused.error["message"], refused.error
        assert "T2I_COMPILE=1" in refused.error["message"] and engine.models.loaded_ids() == []
    finally:
        engine.close()
