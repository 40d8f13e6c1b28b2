"""Measure the peak memory of one stage of a pipeline (a VAE decode, a denoiser step, a whole engine
call) on the CPU, in a fresh process: the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` just before the stage) minus what it held before. Linux only.

    python -m t2i_core.devtools.bench.memory_probe '{"part": "vae-decode", "vae": "sd", "size": 512}'

prints one JSON line: ``{"before": bytes, "peak": bytes, "extra": bytes, ...}``. ``measure(spec)``
runs it in a subprocess (each measurement alone: the allocator's state and the peak are its own).
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable

#: VAE architectures by name: the tiny pipelines' VAE, SD's (SD 1.x/2.x, SDXL) and SD's at a quarter
#: of its width (activations scale with the width, compute with its square: cheap to run at 2048 px)
VAES: dict[str, dict[str, Any]] = {
    "tiny": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64),
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512),
    "sd-quarter": dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=32, sample_size=512),
}


#: the tiny SD pipeline's UNet (t2i_core/weights/tiny.py)
TINY_UNET_CONFIG: dict[str, Any] = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=8, out_channels=4, in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8)


def _kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def peak_of(stage: Callable[[], Any]) -> dict[str, int]:
    """Resident bytes before ``stage``, its peak, and the difference."""
    gc.collect()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _kib("VmRSS")
    result = stage()
    peak = _kib("VmHWM")
    del result
    return {"before": before, "peak": peak, "extra": peak - before}


def _vae(spec: dict[str, Any], dtype: Any) -> Any:
    from diffusers import AutoencoderKL, AutoencoderTiny

    if spec["vae"] == "taesd":
        vae = AutoencoderTiny()
    else:
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            **VAES[spec["vae"]])
    vae = vae.to(dtype).eval()
    if spec.get("tiling"):
        vae.enable_tiling()
    if spec.get("slicing"):
        vae.enable_slicing()
    return vae


def _unet(spec: dict[str, Any], dtype: Any) -> Any:
    from diffusers import UNet2DConditionModel

    from t2i_core.weights.random_arch import unet_config

    config = TINY_UNET_CONFIG if spec["unet"] == "tiny-sd" else unet_config(spec["unet"])
    return UNet2DConditionModel(**config).to(dtype).eval()


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure ``spec`` in this process (see the module docstring for the parts)."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    width = int(spec.get("width") or spec["size"])
    height = int(spec.get("height") or spec["size"])
    batch = int(spec.get("batch", 1))
    part = spec["part"]
    torch.manual_seed(0)
    with torch.inference_mode():
        if part == "vae-decode":
            vae = _vae(spec, dtype)
            vae.decode(torch.randn(1, 4, 8, 8, dtype=dtype))  # warm-up: the kernels' one-time allocations
            latents = torch.randn(batch, 4, height // 8, width // 8, dtype=dtype)
            out = peak_of(lambda: vae.decode(latents).sample)
        elif part == "vae-encode":
            vae = _vae(spec, dtype)
            vae.encode(torch.randn(1, 3, 64, 64, dtype=dtype))
            images = torch.randn(batch, 3, height, width, dtype=dtype)
            out = peak_of(lambda: vae.encode(images))
        elif part == "unet":
            unet = _unet(spec, dtype)
            context = torch.randn(batch, 77, unet.config.cross_attention_dim, dtype=dtype)
            unet(torch.randn(1, 4, 8, 8, dtype=dtype), 1, encoder_hidden_states=context[:1])
            latents = torch.randn(batch, 4, height // 8, width // 8, dtype=dtype)
            out = peak_of(lambda: unet(latents, 1, encoder_hidden_states=context).sample)
        elif part == "engine":
            out = _probe_engine(spec, width, height, batch)
        else:
            raise ValueError(f"part must be vae-decode, vae-encode, unet or engine; got {part!r}")
    return {**spec, **out}


def _probe_engine(spec: dict[str, Any], width: int, height: int, batch: int) -> dict[str, Any]:
    """One engine call of ``batch`` images of ``spec["model"]`` (a registry id), after a warm-up call."""
    from t2i_core.common.config import Settings
    from t2i_core.common.schemas import EngineRequest
    from t2i_core.devtools.bench.registry import bench_registry_file
    from t2i_core.engine.core import Engine

    os.environ["T2I_REGISTRY"] = str(bench_registry_file())  # the served models and the random architectures
    engine = Engine(Settings(model=spec["model"], memory_budget_bytes=int(spec.get("budget", 0)), preload=0,
                             dtype=spec.get("engine_dtype", "auto")))
    entry = engine.registry.get(spec["model"])

    def call(w: int, h: int, n: int) -> list[Any]:
        return engine.run([EngineRequest(model=entry.id, prompt=f"a photo {i}", steps=int(spec.get("steps", 1)),
                                         guidance_scale=float(spec.get("guidance", 0.0)), width=w, height=h, seed=i)
                           for i in range(n)])

    call(64, 64, 1)  # loads the model; the kernels' one-time allocations
    admission = getattr(engine, "admission", None)
    available = admission.available() if admission is not None else None  # for activations, now (idle)
    started = time.perf_counter()
    results: list[Any] = []
    out = peak_of(lambda: results.extend(call(width, height, batch)))
    plan = getattr(getattr(engine, "admission", None), "last_plan", None)  # None before the admission existed
    return {**out, "seconds": round(time.perf_counter() - started, 2), "errors": [r.error for r in results if r.error],
            "batch_sizes": [r.batch_size for r in results], "weights": engine.models.used_bytes(), "available": available,
            "plan": {"tile": plan.tile, "sliced": plan.sliced, **plan.estimate.as_dict()} if plan else None}


def measure(spec: dict[str, Any], timeout_s: float = 3600, cgroup: Any = None) -> dict[str, Any]:
    """``probe(spec)`` in a fresh Python process (inside ``cgroup``, a devtools.cgroup.MemoryCgroup,
    when given: under its memory limit)."""
    done = subprocess.run([sys.executable, "-m", "t2i_core.devtools.bench.memory_probe", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout_s, env={**os.environ},
                          preexec_fn=cgroup.join if cgroup is not None else None)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {**spec, "failed": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}", "returncode": done.returncode}
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))), flush=True)
