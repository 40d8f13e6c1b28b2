"""``python -m t2i_core bench-memory``: the activation estimate (t2i_core/engine/activations.py) against
measured peaks on the CPU, one fresh process per measurement (memory_probe.py), and what a memory
budget admits.

    python -m t2i_core bench-memory --calibrate                 # stages: VAE decode, UNet step (minutes)
    python -m t2i_core bench-memory --admits --budget 4GiB      # largest square SD-Turbo image a 4 GiB engine admits
    python -m t2i_core bench-memory --engine 512 --model random/sd-turbo-arch   # one engine call, measured

Each row: the estimate, the measured peak (resident set above what the process held before the stage),
and estimate / measured (at least 1 means the estimate is on the safe side).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2i_core.devtools.bench.memory_probe import VAES, measure
from t2i_core.engine.activations import Shapes, decode_bytes, denoise_bytes, encode_bytes, held_bytes, shapes_from_configs

DTYPE_SIZES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
TAESD = dict(decoder_block_out_channels=(64, 64, 64, 64), encoder_block_out_channels=(64, 64, 64, 64),
             upsampling_scaling_factor=2)

#: the calibration set: stage, architecture, sizes, dtypes (see the docstring of activations.py)
CALIBRATION: list[dict[str, Any]] = (
    [dict(part="vae-decode", vae="tiny", size=s, dtype=d) for d in ("float64", "float32") for s in (256, 512)]
    + [dict(part="vae-decode", vae="sd-quarter", size=s, dtype="float32") for s in (256, 512, 1024, 2048)]
    + [dict(part="vae-decode", vae="sd-quarter", size=1024, dtype="bfloat16"),
       dict(part="vae-decode", vae="sd-quarter", size=2048, dtype="float32", tiling=True),
       dict(part="vae-decode", vae="sd-quarter", size=1024, dtype="float32", batch=2),
       dict(part="vae-decode", vae="sd-quarter", size=1024, dtype="float32", batch=2, slicing=True),
       dict(part="vae-decode", vae="taesd", size=1024, dtype="float32"),
       dict(part="vae-encode", vae="sd-quarter", size=1024, dtype="float32")]
    + [dict(part="vae-decode", vae="sd", size=s, dtype=d) for s in (256, 512) for d in ("float32", "bfloat16")]
    + [dict(part="unet", unet="tiny-sd", size=s, dtype=d) for d in ("float64", "float32") for s in (256, 512)]
    + [dict(part="unet", unet="sd-turbo", size=s, dtype=d) for s in (256, 512) for d in ("bfloat16", "float32")]
    + [dict(part="vae-decode", vae="sd", size=1024, dtype="bfloat16", tiling=True)]
    + [dict(part="unet", unet="sd-turbo", size=s, dtype="bfloat16") for s in (1024, 1536, 2048)]
    + [dict(part="unet", unet="sd-turbo", size=1024, dtype="float32")]
)


def unet_parameters(config: dict[str, Any]) -> int:
    """How many parameters a UNet of ``config`` has (built on the meta device: no memory, no time)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return sum(p.numel() for p in UNet2DConditionModel(**config).parameters())


def spec_shapes(spec: dict[str, Any]) -> Shapes:
    """The estimate's view of a probe's architecture (no weights built)."""
    from t2i_core.devtools.bench.memory_probe import TINY_UNET_CONFIG
    from t2i_core.weights.random_arch import unet_config

    size = DTYPE_SIZES[spec.get("dtype", "float32")]
    vae = TAESD if spec.get("vae") == "taesd" else dict(VAES[spec.get("vae", "sd")])
    unet = TINY_UNET_CONFIG if spec.get("unet") == "tiny-sd" else unet_config(spec.get("unet", "sd-turbo"))
    return shapes_from_configs(vae, size, unet=unet, im2col=spec.get("dtype") == "float64",
                               denoiser_bytes=unet_parameters(unet) * size if spec["part"] == "unet" else 0)


def stage_estimate(spec: dict[str, Any]) -> int:
    """The estimate of the one stage a probe measures."""
    shapes = spec_shapes(spec)
    size = int(spec["size"])
    batch = int(spec.get("batch", 1))
    per_decode = 1 if spec.get("slicing") else batch
    tile = shapes.tile_px if spec.get("tiling") else 0
    if spec["part"] == "vae-decode":
        return decode_bytes(shapes, size, size, per_decode, tile)  # sliced: one image after another
    if spec["part"] == "vae-encode":
        return encode_bytes(shapes, size, size, per_decode, tile)
    return held_bytes(shapes) + denoise_bytes(shapes, size, size, batch)


def mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def calibrate(specs: list[dict[str, Any]], threads: int, out: Path | None) -> list[dict[str, Any]]:
    rows = []
    print(f"{'stage':50s} {'estimate MiB':>12s} {'measured MiB':>12s} {'ratio':>6s}")
    for spec in specs:
        result = measure({**spec, "threads": threads})
        name = " ".join(f"{k}={v}" for k, v in spec.items())
        if "failed" in result:
            print(f"{name:50s} failed: {result['failed'][-300:]}")
            continue
        est = stage_estimate(spec)
        rows.append({**result, "estimate": est})
        print(f"{name:50s} {mib(est):>12s} {mib(result['extra']):>12s} {est / max(1, result['extra']):6.2f}", flush=True)
    if out:
        out.write_text(json.dumps(rows, indent=2))
    return rows


def parse_bytes(text: str) -> int:
    units = {"gib": 2**30, "mib": 2**20, "gb": 10**9, "mb": 10**6, "": 1}
    low = text.strip().lower()
    for unit, factor in units.items():
        if unit and low.endswith(unit):
            return int(float(low[: -len(unit)]) * factor)
    return int(low)


def admits(model_id: str, budget: int, guidance: float, sides: list[int]) -> dict[str, Any]:
    """What an engine with ``budget`` does with one square image of each side of ``model_id``: the
    admission's decision (run whole, in tiles, or refuse), without running it. Loads the model."""
    import os

    from t2i_core.common.config import Settings
    from t2i_core.common.errors import T2IError
    from t2i_core.common.schemas import EngineRequest
    from t2i_core.devtools.bench.registry import bench_registry_file
    from t2i_core.engine.core import Engine

    os.environ["T2I_REGISTRY"] = str(bench_registry_file())
    engine = Engine(Settings(model=model_id, memory_budget_bytes=budget, preload=0))
    rows = []
    with engine.models.use(model_id) as loaded:
        pipe = loaded.text2image
        capacity = engine.admission.capacity()
        for side in sides:
            item = EngineRequest(model=model_id, prompt="x", steps=1, guidance_scale=guidance, width=side, height=side, seed=1)
            try:
                plan = engine.admission.plan(loaded, pipe, [item])
                rows.append({"side": side, "admitted": True, "tile": plan.tile, "estimate": plan.estimate.total})
            except T2IError as err:
                rows.append({"side": side, "admitted": False, "code": err.code, "status": err.status, "message": err.message})
    return {"model": model_id, "budget": budget, "weights": engine.models.used_bytes(),
            "capacity": capacity, "rows": rows}


def main(args: Any) -> int:
    from t2i_core.devtools.cgroup import memory_cgroup

    if args.calibrate:
        calibrate(CALIBRATION, args.threads, args.out)
    if args.admits:
        report = admits(args.model, parse_bytes(args.budget), args.guidance, list(range(256, 2048 + 1, 64)))
        print(f"{args.model}: budget {mib(report['budget']).strip()} MiB, weights {mib(report['weights']).strip()} MiB, "
              f"left for activations {mib(report['capacity']).strip()} MiB")
        for row in report["rows"]:
            what = (f"admitted, {'VAE in %d px tiles' % row['tile'] if row['tile'] else 'decoded whole'}, "
                    f"estimate {mib(row['estimate']).strip()} MiB") if row["admitted"] else f"{row['status']} {row['code']}"
            print(f"  {row['side']:5d} px: {what}")
        refused = [r for r in report["rows"] if not r["admitted"]]
        if refused:
            print(f"  message: {refused[-1]['message']}")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
    if args.engine:
        spec = {"part": "engine", "model": args.model, "size": args.engine, "batch": args.batch, "steps": 1,
                "guidance": args.guidance, "budget": parse_bytes(args.budget) if args.budget else 0, "threads": args.threads}
        if args.cgroup_limit:  # a container's limit for real: past it the kernel kills the engine
            with memory_cgroup(parse_bytes(args.cgroup_limit)) as cgroup:
                result = {**measure(spec, cgroup=cgroup), "cgroup_limit": parse_bytes(args.cgroup_limit),
                          "cgroup_peak": cgroup.peak(), "oom_kills": cgroup.oom_kills()}
        else:
            result = measure(spec)
        print(json.dumps(result, indent=2))
    return 0
