"""What LoRA adapters cost: loading one, switching the active set between engine batches, and the
extra compute of an active (unfused) adapter in a denoising step.

``--arch tiny`` uses the tiny model and its tiny adapters (seconds); ``--arch sd-turbo`` the full-size
SD-Turbo UNet with random weights and two random rank-``--rank`` adapters on its attention projections
(the shape of a typical style LoRA), built here, no download.

    python -m t2i_core bench-lora --arch sd-turbo --size 512
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def random_adapter(unet_folder: Path, out: Path, rank: int, seed: int) -> Path:
    """A random LoRA for the UNet in ``unet_folder`` (rank ``rank`` on the attention projections)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from t2i_core.weights.tiny_addons import LORA_TARGETS

    unet = UNet2DConditionModel.from_pretrained(unet_folder, subfolder="unet", local_files_only=True)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)
    return out


def _time(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main(arch: str, size: int, rank: int, repeats: int) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from t2i_core.engine.lora import AdapterSlots

    if arch == "tiny":
        from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline
        from t2i_core.weights.tiny_addons import ensure_tiny_adapter

        folder, dtype = ensure_tiny_pipeline("sd"), torch.float64
        adapters = {"a": str(ensure_tiny_adapter("sd/ink")), "b": str(ensure_tiny_adapter("sd/pastel"))}
        scratch = None
    else:
        from t2i_core.weights.random_arch import ensure_random_pipeline

        folder, dtype = ensure_random_pipeline(arch), torch.float32
        scratch = tempfile.TemporaryDirectory(prefix="t2i-bench-lora-")
        adapters = {name: str(random_adapter(folder, Path(scratch.name) / name, rank, seed))
                    for name, seed in (("a", 1), ("b", 2))}
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    slots = AdapterSlots()
    for name, path in adapters.items():
        loaded = slots.load(pipe, name, path, None)
        print(f"load adapter {name}: {loaded.load_s:.3f} s, {loaded.bytes / 2**20:.1f} MiB")

    def switch_to(active: list[tuple[str, float]]) -> None:
        slots.activate(pipe, active)

    flips = [[("a", 1.0)], [("b", 0.8)], [("a", 1.0), ("b", 0.5)], []]
    from t2i_core.engine.lora import peft_name

    def with_diffusers(active: list[tuple[str, float]]) -> None:  # what the engine's switch replaces
        if active:
            pipe.enable_lora()
            pipe.set_adapters([peft_name(a) for a, _ in active], adapter_weights=[w for _, w in active])
        else:
            pipe.disable_lora()

    ours, theirs = [], []
    for i in range(repeats * 4):  # interleaved: both see the same machine load
        for fn, out in ((lambda active: slots._apply(pipe, tuple(active)), ours), (with_diffusers, theirs)):
            started = time.perf_counter()
            fn(flips[i % len(flips)])
            out.append(time.perf_counter() - started)
    print(f"switch the active set: median {statistics.median(ours) * 1000:.2f} ms (engine, LoRA layers only), "
          f"{statistics.median(theirs) * 1000:.2f} ms (diffusers' set_adapters / disable_lora); {len(ours)} switches")
    latents = torch.randn(1, 4, size // 8, size // 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, dtype=dtype)
    t = torch.tensor([999])

    def step() -> None:
        with torch.inference_mode():
            pipe.unet(latents, t, encoder_hidden_states=text)

    settings = (([], "no adapter"), ([("a", 1.0)], "one adapter"), ([("a", 1.0), ("b", 0.5)], "two adapters"))
    step()  # warm-up
    seconds: dict[str, list[float]] = {label: [] for _, label in settings}
    for _ in range(repeats):  # interleaved: each setting sees the same machine load
        for active, label in settings:
            switch_to(active)
            seconds[label] += _time(step, 1)
    base = statistics.median(seconds["no adapter"])
    for _, label in settings:
        median = statistics.median(seconds[label])
        print(f"UNet step at {size}x{size}, {label}: median {median:.3f} s ({median / base:.3f}x)")
    if scratch is not None:
        scratch.cleanup()

