"""What a neighbour's partial images cost the other images of its batch: engine seconds per batch
with and without one request asking for partial images, runs interleaved so both see the same machine.

    python -m t2i_core bench-previews --size 256 --steps 8 --batch 8 --partial 3 --repeats 7 --decode approx|vae
"""

from __future__ import annotations

import statistics
import time


def main(size: int, steps: int, batch: int, partial: int, repeats: int, decode: str = "approx") -> None:
    from t2i_core.common.config import Settings
    from t2i_core.common.registry import TINY_SD_ID, Registry
    from t2i_core.common.schemas import EngineRequest
    from t2i_core.engine.core import Engine

    engine = Engine(Settings(preview_decode=decode), registry=Registry(default=TINY_SD_ID))

    def run(asking: int, tag: str) -> float:
        items = [EngineRequest(model=TINY_SD_ID, prompt="x", steps=steps, guidance_scale=0.0, width=size, height=size,
                               seed=i, request_id=f"{tag}-{i}", partial_images=partial if i < asking else 0)
                 for i in range(batch)]
        started = time.perf_counter()
        engine.run(items)
        return time.perf_counter() - started

    run(1, "warm-up")
    plain, previewing = [], []
    for r in range(repeats):
        plain.append(run(0, f"plain-{r}"))
        previewing.append(run(1, f"previewing-{r}"))
    a, b = statistics.median(plain), statistics.median(previewing)
    print(f"batch of {batch} at {size}x{size}, {steps} steps: {a:.3f} s without partial images, {b:.3f} s with one "
          f"request asking {partial}, decoded by {decode} (medians of {repeats}); the other {batch - 1} images wait {100 * (b - a) / a:+.1f}%")

