"""A batch nobody waits for stops at the next block of the denoiser or the VAE decoder, not only
after a whole denoising step (one step, or the decode, of a large batch takes minutes on a CPU)."""

from __future__ import annotations

import pytest

from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest


def cancel_hook(engine, request_id: str):
    """A forward pre-hook that cancels ``request_id`` (the client leaves mid-step) and changes nothing."""

    def hook(*_):
        engine.cancel([request_id])

    return hook


def req(request_id: str, seed: int) -> EngineRequest:
    return EngineRequest(model=TINY_SD_ID, prompt="a kite", steps=1, guidance_scale=0.0, width=64, height=64,
                         seed=seed, request_id=request_id)


@pytest.mark.parametrize("where", ["unet", "vae"])
def test_a_batch_cancelled_inside_a_step_stops_at_the_next_block(engine, where):
    with engine.models.use(TINY_SD_ID) as loaded:
        pipe = loaded.pipeline("generate", None)
    module = pipe.unet if where == "unet" else pipe.vae.decoder
    first, rest = module.up_blocks[0], list(module.up_blocks[1:])
    request_id = f"stop-{where}"
    ran_after_cancel: list[str] = []
    handles = [first.register_forward_pre_hook(cancel_hook(engine, request_id))]
    handles += [b.register_forward_pre_hook(lambda *_: ran_after_cancel.append("block") and None) for b in rest]
    try:
        results = engine.run([req(request_id, 1), req(request_id, 2)])  # one request's two images
    finally:
        for handle in handles:
            handle.remove()
    assert [r.error["code"] for r in results] == ["client_closed", "client_closed"]
    assert ran_after_cancel == []  # the blocks after the cancellation never ran


def test_a_wanted_image_keeps_its_batch_running(engine):
    """Only a batch whose every image is unwanted stops: a live batch-mate's image is still made."""
    with engine.models.use(TINY_SD_ID) as loaded:
        pipe = loaded.pipeline("generate", None)
    handle = pipe.unet.up_blocks[0].register_forward_pre_hook(cancel_hook(engine, "gone"))
    try:
        gone, live = engine.run([req("gone", 1), req("live", 2)])
    finally:
        handle.remove()
    assert live.error is None and live.pixels and live.batch_size == 2
    # computed with its batch-mate, then dropped: a client still waiting (an A1111 interrupt, a task
    # cancel) gets the error, not the image
    assert gone.error["code"] == "client_closed" and not gone.pixels
    assert engine.progress(["gone", "live"]) == {"gone": {"state": "cancelled", "step": 1, "steps": 1},
                                                 "live": {"state": "done", "step": 1, "steps": 1}}
