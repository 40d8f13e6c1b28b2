"""Decode time of the full SD VAE against TAESD's AutoencoderTiny (random weights, same shapes as
real models): what a model's ``tiny_vae`` buys in the ``vae_decoding`` stage."""

from __future__ import annotations

import statistics
import time


def decode_times(size: int = 512, repeats: int = 5, dtype: str = "float32") -> dict[str, float]:
    """Median seconds to decode one ``size`` x ``size`` image, per decoder."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from t2i_core.engine.devices import pick_device
    from t2i_core.weights.random_arch import VAE_CONFIG

    device = pick_device("auto")
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    latents = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=torch_dtype)
    times = {}
    for name, vae in (("AutoencoderKL (SD VAE)", AutoencoderKL(**VAE_CONFIG)), ("AutoencoderTiny (TAESD)", AutoencoderTiny())):
        vae = vae.to(device=device, dtype=torch_dtype).eval()
        with torch.inference_mode():
            vae.decode(latents)  # warm-up
            runs = []
            for _ in range(repeats):
                started = time.perf_counter()
                vae.decode(latents)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                runs.append(time.perf_counter() - started)
        times[name] = statistics.median(runs)
    return times


def main(size: int, repeats: int, dtype: str) -> None:
    times = decode_times(size, repeats, dtype)
    for name, seconds in times.items():
        print(f"{name:26s} decode one {size}x{size} image: {seconds * 1000:8.1f} ms (median of {repeats}, {dtype})")
    full, tiny = times.values()
    print(f"tiny VAE speed-up: {full / tiny:.1f}x")
