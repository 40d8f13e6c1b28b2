"""What each benchmark preset generates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    model: str
    width: int
    height: int
    steps: int
    dtype: str  # T2I_DTYPE for the engine ("auto": the model's)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    #: every image with the same prompt (as n images of one request): exercises the shared prompt encoding
    same_prompt: bool = False

    def prompt(self, i: int) -> str:
        return "benchmark image" if self.same_prompt else f"benchmark image {i}"

    def body(self, i: int) -> dict[str, object]:
        return {"prompt": self.prompt(i), "model": self.model, "width": self.width, "height": self.height,
                "num_inference_steps": self.steps, "guidance_scale": 0.0, "seed": i, "format": "png"}


PRESETS = {
    # CPU: the built-in tiny model at 64 px, 1 step, in float32 (the CPU dtype of every real model;
    # the tiny model's float64 default exists for the bit-exact batch-invariance tests)
    "tiny": Preset("tiny", "builtin/tiny-sd", 64, 64, 1, "float32"),
    # GPU: full-size architectures with random weights (the same compute as the real models)
    "sd-turbo-arch": Preset("sd-turbo-arch", "random/sd-turbo-arch", 512, 512, 1, "bfloat16",
                            batch_sizes=(1, 2, 4, 8, 16, 32), concurrency=(1, 4, 16, 32, 64)),
    # the same with a tiny VAE decoder (TAESD's architecture): what T2I's `tiny_vae` buys
    "sd-turbo-arch-taesd": Preset("sd-turbo-arch-taesd", "random/sd-turbo-arch-taesd", 512, 512, 1, "bfloat16",
                                  batch_sizes=(1, 2, 4, 8, 16, 32), concurrency=(1, 4, 16, 32, 64)),
    "sdxl-turbo-arch": Preset("sdxl-turbo-arch", "random/sdxl-turbo-arch", 512, 512, 1, "bfloat16",
                              batch_sizes=(1, 2, 4, 8, 16), concurrency=(1, 4, 16, 32, 64)),
}
