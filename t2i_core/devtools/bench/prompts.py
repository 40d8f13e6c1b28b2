"""Prompt encoding time of a batch with and without running the text encoder once per distinct row
(``t2i_core/engine/prompt_dedupe.py``), on a full-size CLIP text encoder with random weights.

It encodes a batch as the SD pipelines do: the prompts, padded to 77 tokens, then with
classifier-free guidance the negative prompts (empty here, as most requests send them) in a second
call. The tiny model's encoder is too small to show what real ones cost."""

from __future__ import annotations

import statistics
import time
from typing import Any

ENCODERS = {"vit-l": ("sdxl-turbo", 0), "vit-h": ("sd-turbo", 0), "vit-bigg": ("sdxl-turbo", 1)}


def _encoder(name: str, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import CLIPTextModel

    from t2i_core.weights.random_arch import clip_text_configs, clip_tokenizer

    tokenizer = clip_tokenizer()
    arch, index = ENCODERS[name]
    config = clip_text_configs(arch, tokenizer)[index]
    return tokenizer, CLIPTextModel(config).to(device=device, dtype=dtype).eval()


def encode_times(encoder: str = "vit-l", batch: int = 16, distinct: int = 16, guidance: bool = True,
                 repeats: int = 5, dtype: str = "float32") -> dict[str, float]:
    """Median seconds to encode one batch, plain and deduplicated."""
    import torch

    from t2i_core.engine.devices import pick_device
    from t2i_core.engine.prompt_dedupe import dedupe_text_encoders

    device = pick_device("auto")
    torch.manual_seed(0)
    tokenizer, model = _encoder(encoder, device, getattr(torch, dtype))
    prompts = [f"a photo of thing number {i % distinct}" for i in range(batch)]
    calls = [prompts, [""] * batch] if guidance else [prompts]

    def encode() -> None:
        for texts in calls:
            ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            model(ids.to(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    plain_forward = model.forward
    dedupe_text_encoders(type("Pipe", (), {"text_encoder": model})())
    forwards = {"plain": plain_forward, "deduplicated": model.forward}
    runs: dict[str, list[float]] = {name: [] for name in forwards}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # alternating, so that a slow moment hits both; round 0 warms up
            for name, forward in forwards.items():
                model.forward = forward
                started = time.perf_counter()
                encode()
                if round_:
                    runs[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in runs.items()}


def main(encoder: str, batch: int, distinct: int, guidance: bool, repeats: int, dtype: str) -> None:
    times = encode_times(encoder, batch, distinct, guidance, repeats, dtype)
    what = f"{batch} prompts ({distinct} distinct){', with empty negative prompts' if guidance else ''}, CLIP {encoder}, {dtype}"
    for name, seconds in times.items():
        print(f"{name:13s} {seconds * 1000:9.1f} ms  ({what}; median of {repeats})")
    print(f"speed-up: {times['plain'] / times['deduplicated']:.2f}x")
