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
    #: K > 0: only K distinct prompts, image i gets prompt i mod K (1: every image with one prompt, as n
    #: images of one request; more: clients repeating prompts with new seeds); 0: a prompt per image
    distinct_prompts: int = 0
    #: > 1 turns on classifier-free guidance: the (empty) negative prompt is encoded and denoised too
    guidance_scale: float = 0.0
    #: defaults of the command line's --max-batch-size, --requests and --repeats
    max_batch_size: int = 16
    requests: int = 1000
    repeats: int = 7
    #: each served level sends at least this many requests per client; the served warm-up sends this
    #: many per client of the largest level
    min_requests_per_client: int = 4
    warmup_per_client: int = 2
    #: also measure a server with T2I_MAX_BATCH_SIZE=1 (the "no batching" columns)
    no_batching: bool = True
    #: measure raw again after the served runs and keep the faster per batch size
    raw_after: bool = True

    def prompt(self, i: int) -> str:
        return f"benchmark image {i % self.distinct_prompts if self.distinct_prompts > 0 else i}"

    def body(self, i: int) -> dict[str, object]:
        return {"prompt": self.prompt(i), "model": self.model, "width": self.width, "height": self.height,
                "num_inference_steps": self.steps, "guidance_scale": self.guidance_scale, "seed": i, "format": "png"}

    def describe(self) -> str:
        """What the prompts and guidance are, for the table's title ("" for the defaults)."""
        parts = []
        if self.distinct_prompts == 1:
            parts.append("one prompt for every image")
        elif self.distinct_prompts > 1:
            parts.append(f"{self.distinct_prompts} distinct prompts")
        if self.guidance_scale:
            parts.append(f"guidance {self.guidance_scale:g}")
        return "".join(f", {p}" for p in parts)


PRESETS = {
    # CPU: the built-in tiny model at 64 px, 1 step, in float32 (the CPU dtype of every real model;
    # the tiny model's float64 default exists for the bit-exact batch-invariance tests)
    "tiny": Preset("tiny", "builtin/tiny-sd", 64, 64, 1, "float32"),
    # CPU: the built-in tiny FLUX.1 model (a DiT: packed latents, CLIP + T5, distilled guidance) at 64 px,
    # 2 steps, float32
    "tiny-flux": Preset("tiny-flux", "builtin/tiny-flux", 64, 64, 2, "float32", guidance_scale=3.5),
    # GPU: full-size architectures with random weights (the same compute as the real models)
    "sd-turbo-arch": Preset("sd-turbo-arch", "random/sd-turbo-arch", 512, 512, 1, "bfloat16",
                            batch_sizes=(1, 2, 4, 8, 16, 32), concurrency=(1, 4, 16, 32, 64)),
    # the same with a tiny VAE decoder (TAESD's architecture): what T2I's `tiny_vae` buys
    "sd-turbo-arch-taesd": Preset("sd-turbo-arch-taesd", "random/sd-turbo-arch-taesd", 512, 512, 1, "bfloat16",
                                  batch_sizes=(1, 2, 4, 8, 16, 32), concurrency=(1, 4, 16, 32, 64)),
    "sdxl-turbo-arch": Preset("sdxl-turbo-arch", "random/sdxl-turbo-arch", 512, 512, 1, "bfloat16",
                              batch_sizes=(1, 2, 4, 8, 16), concurrency=(1, 4, 16, 32, 64)),
    "sdxl-turbo-arch-taesd": Preset("sdxl-turbo-arch-taesd", "random/sdxl-turbo-arch-taesd", 512, 512, 1, "bfloat16",
                                    batch_sizes=(1, 2, 4, 8, 16), concurrency=(1, 4, 16, 32, 64)),
    # GPU: the DiT architectures at 1024 px with their own step counts, bfloat16 (and float8 weights)
    "flux-schnell-arch": Preset("flux-schnell-arch", "random/flux-schnell-arch", 1024, 1024, 4, "bfloat16",
                                batch_sizes=(1, 4), concurrency=(1, 8), max_batch_size=8),
    "flux-schnell-arch-fp8": Preset("flux-schnell-arch-fp8", "random/flux-schnell-arch-fp8", 1024, 1024, 4,
                                    "bfloat16", batch_sizes=(1, 4), concurrency=(1, 8), max_batch_size=8),
    "z-image-turbo-arch": Preset("z-image-turbo-arch", "random/z-image-turbo-arch", 1024, 1024, 9, "bfloat16",
                                 batch_sizes=(1, 4), concurrency=(1, 8), max_batch_size=8),
    # CPU: the tiny FLUX.1 model with float8 weights (the GPU run's rehearsal of its fp8 run)
    "tiny-flux-fp8": Preset("tiny-flux-fp8", "builtin/tiny-flux-fp8", 64, 64, 2, "float32", guidance_scale=3.5),
    # CPU: the SD-Turbo architecture at 512 px, 1 step, in the CPU's dtype ("auto": bfloat16 where the CPU
    # has it natively, else float32; T2I_CPU_BF16 decides as in the server). Seconds per image: short runs,
    # batches of at most 4 (a CPU gains nothing from waiting to fill 16), no "no batching" server.
    "sd-turbo-arch-cpu": Preset("sd-turbo-arch-cpu", "random/sd-turbo-arch", 512, 512, 1, "auto",
                                batch_sizes=(1,), concurrency=(1, 4), max_batch_size=4, requests=2, repeats=1,
                                min_requests_per_client=1, warmup_per_client=0, no_batching=False, raw_after=False),
    "sd-turbo-arch-taesd-cpu": Preset("sd-turbo-arch-taesd-cpu", "random/sd-turbo-arch-taesd", 512, 512, 1, "auto",
                                      batch_sizes=(1, 2), concurrency=(1, 4), max_batch_size=4, requests=4, repeats=2,
                                      min_requests_per_client=2, warmup_per_client=0, no_batching=False, raw_after=False),
}
