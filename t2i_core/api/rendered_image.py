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
        }
