"""Partial images: real intermediate decodes of the latents of the requests that ask, at steps spread
over the run; the other images of the batch are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine.previews import preview_steps


def req(request_id: str, seed: int, partial_images: int = 0, steps: int = 6) -> EngineRequest:
    return EngineRequest(model=TINY_SD_ID, prompt="a kite", steps=steps, guidance_scale=0.0, width=64, height=64,
                         seed=seed, request_id=request_id, partial_images=partial_images)


def test_preview_steps_spread_over_the_run():
    assert preview_steps(2, 6) == [2, 4]
    assert preview_steps(3, 28) == [7, 14, 21]
    assert preview_steps(1, 1) == []  # one step: the final image is the only one
    assert preview_steps(3, 2) == [1]  # fewer steps than partial images: fewer partial images
    assert preview_steps(0, 10) == []


@pytest.fixture(scope="module")
def vae_engine():
    """An engine that decodes partial images with the model's VAE (``T2I_PREVIEW_DECODE=vae``)."""
    from t2i_core.engine.core import Engine

    return Engine(Settings(preview_decode="vae"))


@pytest.mark.parametrize("decoder", ["approx", "vae"])
def test_partial_images_are_intermediate_decodes_and_change_nothing_else(engine, vae_engine, decoder):
    engine = vae_engine if decoder == "vae" else engine
    alone = engine.run([req("quiet-alone", 2)])[0]
    asked, quiet = engine.run([req("asks", 1, partial_images=2), req("quiet", 2)])
    previews = engine.take_previews("asks")
    assert [(p.index, p.step, p.steps) for p in previews] == [(0, 2, 6), (1, 4, 6)]
    assert all(p.width == 64 and p.height == 64 and len(p.pixels) == 64 * 64 * 3 for p in previews)
    final = np.frombuffer(asked.pixels, np.uint8).astype(int)
    first, second = (np.frombuffer(p.pixels, np.uint8).astype(int) for p in previews)
    # real decodes of the latents on their way: different from each other (with the VAE, closer to the
    # final image as they go; the approximation is another decoder than the final image's)
    assert not np.array_equal(first, second)
    if decoder == "vae":
        assert np.abs(second - final).mean() < np.abs(first - final).mean()
    assert engine.take_previews("quiet") == [] and engine.take_previews("asks", since=1) == previews[1:]
    assert quiet.pixels == alone.pixels  # a previewing batch-mate changes no other image


@pytest.mark.parametrize("decoder", ["approx", "vae"])
def test_a_previewing_neighbour_adds_no_work_to_its_batch_mates(engine, vae_engine, decoder):
    """The cost a batch-mate pays for a neighbour's partial images, counted rather than timed: the same
    denoiser calls; by default no VAE decode at all (the latents are projected to RGB), with
    ``T2I_PREVIEW_DECODE=vae`` one decode of the asking row per partial image, never of the other rows.
    (Timed: docs/performance.md, "Partial images".)"""
    engine = vae_engine if decoder == "vae" else engine
    calls: list[tuple[str, int]] = []
    with engine.models.use(TINY_SD_ID) as loaded:
        pipe = loaded.pipeline("generate", None)
    hooks = [pipe.unet.register_forward_pre_hook(lambda m, args, kw: calls.append(("unet", args[0].shape[0])) and None,
                                                 with_kwargs=True),
             pipe.vae.decoder.register_forward_pre_hook(lambda m, args: calls.append(("decode", args[0].shape[0])) and None)]
    try:
        engine.run([req(f"plain-{i}", 10 + i) for i in range(4)])
        plain, calls[:] = list(calls), []
        engine.run([req(f"previewing-{decoder}", 9, partial_images=2)] + [req(f"mate-{i}", 10 + i) for i in range(3)])
        mixed = list(calls)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(engine.take_previews(f"previewing-{decoder}")) == 2
    assert [c for c in mixed if c[0] == "unet"] == [c for c in plain if c[0] == "unet"]
    assert [c for c in plain if c[0] == "decode"] == [("decode", 4)]
    extra = [("decode", 1), ("decode", 1)] if decoder == "vae" else []
    assert sorted(c for c in mixed if c[0] == "decode") == sorted(extra + [("decode", 4)])
