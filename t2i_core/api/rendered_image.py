"""An encoded output image and what made it: what every surface answers from."""

from __future__ import annotations

from dataclasses import dataclass

from t2i_core.api.images.codecs import MEDIA_TYPES


@dataclass(frozen=True)
class RenderedImage:
    """An encoded output image and what produced it."""

    data: bytes
    format: str
    seed: int
    model: str
    width: int
    height: int
    batch_size: int
    inference_s: float
    total_s: float
    #: the generation parameters written into the file (A1111's text; empty when turned off)
    parameters: str = ""
    #: its speed tier, the steps the tier cut, and its request's step cache (summed over the request's
    #: engine batches): hooked calls, and those skipped
    speed: str = "quality"
    steps_skipped: int = 0
    cache_calls: int = 0
    cache_skipped: int = 0

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def headers(self) -> dict[str, str]:
        return {
            "X-Seed": str(self.seed),
            "X-Model": self.model,
            "X-Image-Size": f"{self.width}x{self.height}",
            "X-Batch-Size": str(self.batch_size),
            "X-Inference-Time": f"{self.inference_s:.4f}",
            "X-Total-Time": f"{self.total_s:.4f}",
            **self.speed_headers(),
        }

    def speed_headers(self) -> dict[str, str]:
        """The work its speed tier saved: the steps it cut, and its request's step cache (skipped / hooked calls)."""
        return {"X-Speed": self.speed, "X-Steps-Skipped": str(self.steps_skipped),
                "X-Cache-Skipped": f"{self.cache_skipped}/{self.cache_calls}"}
