"""Activation memory: the estimate, and the engine's admission of a batch (run, split, tile, refuse)
against the memory budget, on the tiny float64 model (its pixels are bit-exact whatever the batch)."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.errors import T2IError, http_status
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest
from t2i_core.weights.random_arch import VAE_CONFIG, unet_config
from t2i_core.engine.activations import estimate, shapes_from_configs, shapes_of, tile_sizes
from t2i_core.engine.core import Engine

#: SD-Turbo's structure in bfloat16 (its VAE's sample size, hence tile, is 768): no weights needed
SD_TURBO = shapes_from_configs(dict(VAE_CONFIG, sample_size=768), 2, unet=unet_config("sd-turbo"))


def req(seed: int = 1, side: int = 64, **kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt="a harbour", steps=2, guidance_scale=0.0, width=side, height=side, seed=seed)
    return EngineRequest(**{**base, **kw})


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).reshape(result.height, result.width, 3)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model's structure and weight bytes."""
    probe = Engine(Settings(memory_budget_bytes=10**12))
    loaded = probe.models.load(TINY_SD_ID)
    return shapes_of(loaded.text2image), loaded.bytes


def small_engine(weights: int, activations: int) -> Engine:
    return Engine(Settings(memory_budget_bytes=weights + activations))


# ---- the estimate ------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes", ["tiny", "sd-turbo"])
def test_the_estimate_grows_with_pixels_batch_and_guidance(shapes, tiny):
    shapes = tiny[0] if shapes == "tiny" else SD_TURBO
    sides = [64, 256, 512, 1024, 2048]
    totals = [estimate(shapes, s, s, 1).total for s in sides]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    assert estimate(shapes, 1024, 512, 1).total < estimate(shapes, 1024, 1024, 1).total
    batches = [estimate(shapes, 512, 512, n).total for n in (1, 2, 4, 8)]
    assert batches == sorted(batches) and len(set(batches)) == 4
    plain, guided = estimate(shapes, 512, 512, 2), estimate(shapes, 512, 512, 2, guidance=True)
    assert guided.denoise > plain.denoise  # the denoiser runs the negative prompt too


def test_the_vae_decode_dominates_large_images_and_tiling_bounds_it():
    """SD-Turbo's VAE decode at full resolution is what took a 4 GB engine down at 2048 px."""
    whole = estimate(SD_TURBO, 2048, 2048, 1)
    assert whole.decode > 4 * whole.denoise and whole.total > 8 * 2**30  # bfloat16 SD-Turbo: ~9 GiB
    tiles = tile_sizes(SD_TURBO)
    assert tiles == [768, 512]
    tiled = [estimate(SD_TURBO, 2048, 2048, 1, tile=t) for t in tiles]
    assert whole.total > tiled[0].total > tiled[1].total and tiled[1].tile == 512
    # the tiled decode's peak is one tile's: nearly the same at 1024 and 2048
    assert estimate(SD_TURBO, 2048, 2048, 1, tile=512).decode < 1.5 * estimate(SD_TURBO, 1024, 1024, 1, tile=512).decode
    # an image no larger than one tile is decoded whole either way
    assert estimate(SD_TURBO, 512, 512, 1, tile=768) == estimate(SD_TURBO, 512, 512, 1)


def test_slicing_decodes_one_image_at_a_time():
    batch, sliced = estimate(SD_TURBO, 1024, 1024, 4), estimate(SD_TURBO, 1024, 1024, 4, sliced=True)
    assert sliced.decode == estimate(SD_TURBO, 1024, 1024, 1).decode < batch.decode
    assert sliced.denoise == batch.denoise  # the denoiser still runs the batch at once


def test_an_edit_counts_the_encoder_too():
    assert estimate(SD_TURBO, 1024, 1024, 1, edit=True).encode > 0 == estimate(SD_TURBO, 1024, 1024, 1).encode


# ---- admission in the engine --------------------------------------------------------------------
def test_an_image_that_can_never_fit_is_refused_with_422_and_the_engine_keeps_serving(tiny):
    shapes, weights = tiny
    side = 1024
    smallest = estimate(shapes, side, side, 1, tile=tile_sizes(shapes)[-1]).total
    eng = small_engine(weights, smallest - 1)  # not even the tiled decode of one image fits
    (out,) = eng.run([req(side=side)])
    assert out.error is not None and out.error["code"] == "image_too_large", out.error
    err = T2IError.from_dict(out.error)
    assert http_status(err) == 422 and err.param == "size"
    message = out.error["message"]
    assert "1024x1024" in message and "T2I_MEMORY_BUDGET_BYTES" in message and "largest size" in message
    fits = message.rsplit("fits is ", 1)[1]
    w, h = (int(v) for v in fits.split("x"))
    assert w == h and 64 <= w < side
    assert eng.run([req(side=w)])[0].error is None  # the size it names is made
    assert eng.run([req()])[0].error is None  # and the engine serves the next request
    assert eng.stats()["errors_by_code"] == {"image_too_large": 1}


def test_a_batch_that_does_not_fit_runs_in_sub_batches_with_the_same_pixels(tiny, engine):
    shapes, weights = tiny
    side = 128
    two = estimate(shapes, side, side, 2, sliced=True).total
    three = estimate(shapes, side, side, 3, sliced=True).total
    eng = small_engine(weights, (two + three) // 2)  # two images at a time fit, three do not
    out = eng.run([req(seed=i, side=side) for i in range(5)])
    assert [r.batch_size for r in out] == [2, 2, 2, 2, 1]
    assert eng.stats()["memory_splits"] == 1 and eng.stats()["oom_retries"] == 0
    for i in (0, 4):  # an image is the one its request makes alone
        assert np.array_equal(pixels(out[i]), pixels(engine.run([req(seed=i, side=side)])[0]))


def test_a_batch_decodes_one_image_at_a_time_before_it_is_split(tiny, engine):
    shapes, weights = tiny
    side = 128
    eng = small_engine(weights, estimate(shapes, side, side, 4, sliced=True).total)
    assert estimate(shapes, side, side, 4).total > estimate(shapes, side, side, 4, sliced=True).total
    out = eng.run([req(seed=i, side=side) for i in range(4)])
    assert [r.batch_size for r in out] == [4] * 4 and eng.admission.last_plan.sliced
    assert eng.stats()["memory_splits"] == 0
    assert np.array_equal(pixels(out[3]), pixels(engine.run([req(seed=3, side=side)])[0]))


def test_an_image_too_large_to_decode_whole_is_decoded_in_tiles(tiny, engine):
    shapes, weights = tiny
    side = 256
    tiled = estimate(shapes, side, side, 1, tile=tile_sizes(shapes)[0]).total
    assert tiled < estimate(shapes, side, side, 1).total
    eng = small_engine(weights, tiled)
    (out,) = eng.run([req(side=side)])
    assert eng.admission.last_plan.tile == tile_sizes(shapes)[0]
    assert pixels(out).shape == (side, side, 3)
    assert not eng.models.load(TINY_SD_ID).text2image.vae.use_tiling  # the VAE is as it was after the call
    # decided by the size and the engine only: the same request gives the same pixels every time
    assert np.array_equal(pixels(out), pixels(eng.run([req(side=side)])[0]))
    # and the same size with room enough is decoded whole (as the unconstrained engine does)
    assert np.array_equal(pixels(engine.run([req(side=side)])[0]),
                          pixels(small_engine(weights, estimate(shapes, side, side, 1).total).run([req(side=side)])[0]))


def test_idle_models_are_unloaded_to_make_room_for_activations(tiny):
    shapes, weights = tiny
    other = "builtin/tiny-sd3"
    probe = Engine(Settings(memory_budget_bytes=10**12))
    other_bytes = probe.models.load(other).bytes
    side = 128
    need = estimate(shapes, side, side, 1).total
    eng = small_engine(weights + other_bytes, need - other_bytes // 2)  # both weights fit, not with the image
    assert eng.run([req(model=other, width=64, height=64)])[0].error is None
    assert eng.run([req(side=side)])[0].error is None
    assert eng.models.evicted == [other]
