"""Engine time spent after every image of a running batch became unwanted (its client left, or its
request timed out, in the middle of a step): with the block-level stop points
(``t2i_core/engine/stop_points.py``) and with the step callback alone. The tiny model at a large size
stands in for a large batch of a real model: what matters is how much of a step or a decode is left."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any


def main(size: int, images: int, steps: int, repeats: int) -> None:
    from t2i_core.common.config import Settings
    from t2i_core.common.registry import TINY_SD_ID, Registry
    from t2i_core.common.schemas import EngineRequest
    from t2i_core.engine.core import Engine

    engine = Engine(Settings(), registry=Registry(default=TINY_SD_ID))

    def batch(request_id: str) -> list[EngineRequest]:
        return [EngineRequest(model=TINY_SD_ID, prompt="x", steps=steps, guidance_scale=0.0, width=size, height=size,
                              seed=i, request_id=request_id) for i in range(images)]

    engine.run(batch("warm-up"))
    started = time.perf_counter()
    engine.run(batch("whole"))
    print(f"whole batch: {images} x {size}x{size}, {steps} steps: {time.perf_counter() - started:.2f} s")
    with engine.models.use(TINY_SD_ID) as loaded:
        pipe = loaded.pipeline("generate", None)
    watching = engine.stop_points.watching

    def busy_after_cancel(request_id: str, module: Any, block_level: bool) -> tuple[float, str]:
        cancelled_at: list[float] = []

        def cancel(*_: Any) -> None:
            if not cancelled_at:
                cancelled_at.append(time.perf_counter())
                engine.cancel([request_id])

        handle = module.register_forward_pre_hook(cancel)
        engine.stop_points.watching = watching if block_level else (lambda unwanted: contextlib.nullcontext())
        try:
            results = engine.run(batch(request_id))
        finally:
            handle.remove()
            engine.stop_points.watching = watching
        return time.perf_counter() - cancelled_at[0], (results[0].error or {}).get("code", "image made")

    for where, module in (("denoiser", pipe.unet.mid_block), ("VAE decoder", pipe.vae.decoder.mid_block)):
        for block_level in (True, False):
            runs = [busy_after_cancel(f"{where}-{block_level}-{k}", module, block_level) for k in range(repeats)]
            seconds = [round(s, 2) for s, _ in runs]
            label = "stop points" if block_level else "step callback only"
            print(f"cancelled at the {where}'s middle block, {label}: engine busy {statistics.median(seconds):.2f} s "
                  f"after (median of {seconds}); outcome: {runs[0][1]}")
