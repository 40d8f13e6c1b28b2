"""The GPU run, in one command (``bash scripts/gpu_bench.sh``): the random-weight SD-Turbo and
SDXL-Turbo architectures at 512 px, 1 step, bfloat16, with the model's VAE and with a tiny VAE (TAESD's
architecture), with and without ``torch.compile``, each raw (the engine in process) at batch 1/8/32 and
served (a real ``bentoml serve``) at 1, 8 and 32 clients; and the FLUX.1 [schnell] (4 steps, bfloat16 and
float8 weights) and Z-Image-Turbo (9 steps) architectures at 1024 px, raw at batch 1/4 and served at 1/8
clients (``DIT_SIZING``). The speed runs (``Run.speed_steps``) measure, on the FLUX.1 and SD-Turbo
architectures, each speed tier (images/s, the work skipped, the mean absolute pixel difference from the
``quality`` tier) and ``torch.compile`` over batches that switch size, LoRA adapter set (two random
rank-16 adapters) and tier: graphs compiled at start-up and while serving (0), images/s against
uncompiled, the largest pixel difference (``speed.py``). Writes one JSON and a markdown table.

Sized to finish within ``--budget-s`` (default 450 s, for an H100): the runs go in the order of
``PLAN`` (most wanted first), and a run whose expected duration (``Run.expect_s``, an estimate for an
H100; the JSON records what each run took) would end past the budget is reported as skipped rather
than started. ``--dry-run`` does the same on the CPU with the built-in tiny model (64 px), so the
orchestration is checked where no GPU is at hand (``tests/devtools/test_gpu_bench.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from t2i_core.devtools.bench.environment import environment
from t2i_core.devtools.bench.presets import PRESETS, Preset

#: T2I_* settings of a compiled run: torch.compile of the denoiser with its warm-up at startup, plus the
#: channels-last format and fused QKV projections that usually come with it on a GPU
COMPILE_ENV = {"T2I_COMPILE": "1", "T2I_CHANNELS_LAST": "1", "T2I_FUSE_QKV": "1"}


@dataclasses.dataclass(frozen=True)
class Sizing:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    concurrency: tuple[int, ...] = (1, 8, 32)
    max_batch_size: int = 32
    repeats: int = 5
    requests: int = 256  # per served level, at least 4 per client
    warmup_per_client: int = 2


def _dit() -> Sizing:
    """The DiT runs' sizing: 1024 px images take about a second each on an H100."""
    return Sizing(batch_sizes=(1, 4), concurrency=(1, 8), max_batch_size=8, repeats=3, requests=32,
                  warmup_per_client=1)


@dataclasses.dataclass(frozen=True)
class Run:
    label: str
    preset: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: seconds it is expected to take on an H100 (loads, compiles, raw and served); 0: do not check
    expect_s: float = 0.0
    #: the run's own batch sizes and client counts (the DiT runs'); None: the plan's
    sizing: Sizing | None = None
    #: > 0: a speed run (``measure_speed``): the tiers at this many steps, then compile with adapter switches
    speed_steps: int = 0


PLAN = (
    Run("sd-turbo, bf16", "sd-turbo-arch", expect_s=50),
    # speed tiers at 20 steps (the UNet tiers cut steps), then compile with adapter and tier switches
    Run("sd-turbo, bf16, speed tiers + compile with adapter switches", "sd-turbo-arch", expect_s=120, speed_steps=20),
    # the first FLUX run builds the architecture first (33 GB: random weights on the GPU, then written) and
    # loads it twice (the engine in process, then the server); the fp8 run after it reuses it
    Run("flux-schnell 1024 px, bf16", "flux-schnell-arch", expect_s=150, sizing=_dit()),
    Run("flux-schnell 1024 px, fp8", "flux-schnell-arch-fp8", expect_s=100, sizing=_dit()),
    # FLUX.1 [dev]'s tiers (TaylorSeer on the blocks) at its 28 steps; compile block by block
    Run("flux 1024 px, bf16, speed tiers + compile with adapter switches", "flux-schnell-arch", expect_s=240,
        speed_steps=28),
    Run("z-image-turbo 1024 px, bf16", "z-image-turbo-arch", expect_s=150, sizing=_dit()),
    Run("sd-turbo, bf16, TAESD", "sd-turbo-arch-taesd", expect_s=50),
    Run("sd-turbo, bf16, TAESD, compile", "sd-turbo-arch-taesd", COMPILE_ENV, expect_s=150),
    Run("sdxl-turbo, bf16", "sdxl-turbo-arch", expect_s=70),
    Run("sdxl-turbo, bf16, TAESD", "sdxl-turbo-arch-taesd", expect_s=70),
    Run("sdxl-turbo, bf16, TAESD, compile", "sdxl-turbo-arch-taesd", COMPILE_ENV, expect_s=200),
    Run("sd-turbo, bf16, compile", "sd-turbo-arch", COMPILE_ENV, expect_s=150),
)
#: the CPU rehearsal: the same steps on the tiny model (channels-last stands in for compile, which
#: takes minutes on a small CPU)
DRY_PLAN = (Run("tiny, float32", "tiny"), Run("tiny, float32, channels-last", "tiny", {"T2I_CHANNELS_LAST": "1"}),
            Run("tiny-flux, float32, fp8", "tiny-flux-fp8"),
            Run("tiny, speed tiers + compile with adapter switches", "tiny", speed_steps=4))
ARCHS = ("sd-turbo", "sdxl-turbo", "flux-schnell", "z-image-turbo")


GPU_SIZING = Sizing()
DIT_SIZING = _dit()
DRY_SIZING = Sizing(batch_sizes=(1, 2), concurrency=(1, 2), max_batch_size=2, repeats=1, requests=4, warmup_per_client=1)


def sized(preset: Preset, sizing: Sizing) -> Preset:
    return dataclasses.replace(preset, batch_sizes=sizing.batch_sizes, concurrency=sizing.concurrency,
                               max_batch_size=sizing.max_batch_size, repeats=sizing.repeats, requests=sizing.requests,
                               warmup_per_client=sizing.warmup_per_client, min_requests_per_client=4, no_batching=False)


#: disk each architecture takes once built (bytes), checked before it is built
ARCH_BYTES = {"sd-turbo": 3.5e9, "sdxl-turbo": 8.0e9, "flux-schnell": 34e9, "z-image-turbo": 21e9}


def arch_of(run: Run) -> str | None:
    model = PRESETS[run.preset].model
    return next((arch for arch in ARCHS if model.startswith(f"random/{arch}-arch")), None)


def build_arch(run: Run, built: dict[str, float]) -> None:
    """Build (or find cached) the random-weight pipeline ``run`` needs, recording the seconds in
    ``built``; RuntimeError when the disk cannot hold it."""
    import shutil

    from t2i_core.weights.random_arch import ensure_random_pipeline, random_folder
    from t2i_core.weights.tiny_vae import ensure_built

    arch = arch_of(run)
    if arch is not None and not (random_folder(arch) / "model_index.json").is_file():
        folder = random_folder(arch)
        folder.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder.parent).free
        if free < 1.1 * ARCH_BYTES[arch]:
            raise RuntimeError(f"the {arch} architecture needs about {ARCH_BYTES[arch] / 1e9:.0f} GB of disk under "
                               f"{folder.parent}; {free / 1e9:.0f} GB free")
        started = time.perf_counter()
        ensure_random_pipeline(arch)
        built[arch] = round(time.perf_counter() - started, 1)
    if PRESETS[run.preset].model.endswith("-taesd"):
        ensure_built("random:taesd")


def free_archs(done: Run, rest: tuple[Run, ...], built: dict[str, float]) -> None:
    """Remove a DiT architecture this invocation built once no later run needs it (33 GB for FLUX.1:
    the machine's disk holds the UNet ones and one DiT at a time)."""
    import shutil

    from t2i_core.weights.random_arch import DIT_ARCHS, random_folder

    arch = arch_of(done)
    if arch in DIT_ARCHS and arch in built and all(arch_of(r) != arch for r in rest):
        shutil.rmtree(random_folder(arch), ignore_errors=True)


def measure(run: Run, sizing: Sizing) -> dict[str, Any]:
    """One run: raw per batch size, then served per client count."""
    from t2i_core.devtools.bench.run import engine_dtype, raw, raw_engine, served

    sizing = run.sizing or sizing
    preset = sized(PRESETS[run.preset], sizing)
    started = time.perf_counter()
    with environment({**run.env, "T2I_MAX_BATCH_SIZE": str(sizing.max_batch_size)}):
        engine = raw_engine(preset)
        raw_rows = raw(preset, preset.repeats, engine)
        del engine
        gc.collect()
        _empty_cuda_cache()
        raw_s = time.perf_counter() - started
        served_rows = served(preset, preset.max_batch_size, preset.requests, preset.concurrency)
    best = max(r["images_per_s"] for r in raw_rows)
    return {"label": run.label, "preset": run.preset, "model": preset.model, "dtype": engine_dtype(preset),
            "env": run.env, "sizing": dataclasses.asdict(sizing), "raw": raw_rows, "served": served_rows, "raw_best_images_per_s": best,
            "served_over_raw_best": {str(r["concurrency"]): r["images_per_s"] / best for r in served_rows},
            "seconds": {"raw": round(raw_s, 1), "total": round(time.perf_counter() - started, 1)}}


def measure_speed(run: Run) -> dict[str, Any]:
    """A speed run: each tier at ``run.speed_steps`` steps (batch 1), then compile with adapter switches
    (at most 8 steps: compile does not depend on the steps), with two random LoRA adapters of the
    architecture registered for it."""
    import shutil
    import tempfile

    from t2i_core.common.registry import Registry
    from t2i_core.devtools.bench import speed
    from t2i_core.devtools.bench.random_lora import random_lora, with_adapters
    from t2i_core.devtools.bench.registry import bench_registry_file
    from t2i_core.devtools.bench.run import engine_dtype
    from t2i_core.weights import sources

    preset = PRESETS[run.preset]
    dtype, size, started = engine_dtype(preset), (preset.width, preset.height), time.perf_counter()
    base = bench_registry_file()
    entry = Registry(path=base).get(preset.model)
    folder = Path(sources.resolve(entry.parsed_source, "pipeline", entry.id))
    scratch = Path(tempfile.mkdtemp(prefix="t2i-bench-lora-"))
    try:
        adapters = {f"bench-lora-{i}": random_lora(folder, scratch / f"lora-{i}", rank=16, seed=i) for i in (1, 2)}
        registry_path = with_adapters(base, entry.pipeline, adapters)
        with environment(run.env):
            engine = speed.make_engine({"T2I_MODEL": preset.model}, registry_path, dtype)
            tier_rows = speed.tiers(engine, preset.model, run.speed_steps, batch=1, repeats=2, size=size)
            engine.close()
            del engine
            gc.collect()
            _empty_cuda_cache()
            tiers_s = time.perf_counter() - started
            compiled = speed.compile_switches(preset.model, min(run.speed_steps, 8), list(adapters), max_batch=2,
                                              rounds=1, size=size, registry_path=registry_path, dtype=dtype)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    gc.collect()
    _empty_cuda_cache()
    return {"label": run.label, "preset": run.preset, "model": preset.model, "dtype": dtype, "env": run.env,
            "speed_steps": run.speed_steps, "tiers": tier_rows, "compile": compiled,
            "seconds": {"tiers": round(tiers_s, 1), "total": round(time.perf_counter() - started, 1)}}


def _speed_cells(r: dict[str, Any]) -> str:
    tiers = "; ".join(f"{t['speed']} {t['images_per_s']:.2f} img/s ({t['time_vs_quality']:.2f}x time, diff "
                      f"{t['mean_abs_diff']:.1f})" for t in r["tiers"])
    c = r["compile"]
    return (f"| {r['label']} | tiers at {r['speed_steps']} steps: {tiers} | compile, {c['batches']} batches switching "
            f"size/adapters/tier: {c['images_per_s']['compiled']:.2f} img/s vs {c['images_per_s']['uncompiled']:.2f} "
            f"uncompiled; graphs {c['graphs_startup']} at start-up ({c['startup_s']:.0f} s), {c['graphs_serving']} "
            f"serving; max diff {c['max_abs_diff_vs_uncompiled']} | | |")


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def markdown(report: dict[str, Any]) -> str:
    """The table for docs/performance.md: per run, raw img/s per batch size, served img/s and p50 per
    client count (each run at its own sizes: the DiT runs at fewer), served / raw best at the most
    clients, and the stage split at batch 1."""
    lines = [f"GPU run on {report['device']}, {report['when']}, {report['seconds']:.0f} s "
             f"(`{report['command']}`)", "",
             "| run | raw img/s (batch) | served img/s, p50 ms (clients) | served/raw at the most clients "
             "| batch 1: text / denoise / VAE / PNG ms |",
             "| --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or f"failed: {r['error']}"
            lines.append(f"| {r['label']} | {why} | | | |")
            continue
        if "tiers" in r:
            lines.append(_speed_cells(r))
            continue
        raw_cells = ", ".join(f"b{row['batch']} {row['images_per_s']:.1f}" for row in r["raw"])
        served_cells = ", ".join(f"{row['concurrency']}c {row['images_per_s']:.1f} / {row['p50_s'] * 1000:.0f}"
                                 for row in r["served"])
        most = max((row["concurrency"] for row in r["served"]), default=0)
        ratio = r["served_over_raw_best"].get(str(most))
        st = r["raw"][0].get("stages_s", {})
        split = " / ".join(f"{st[k] * 1000:.1f}" if k in st else "-"
                           for k in ("text_encoding", "denoising", "vae_decoding", "image_encoding"))
        lines.append(f"| {r['label']} | {raw_cells} | {served_cells} | {'-' if ratio is None else f'{ratio:.2f}'} "
                     f"| {split} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i_core.devtools.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-bench"), help="folder for gpu-bench.json and gpu-bench.md")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no run after this many seconds")
    parser.add_argument("--only", default="", help="comma-separated run numbers of the plan (1-based) to run")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with the tiny model")
    args = parser.parse_args(argv)

    plan, sizing = (DRY_PLAN, DRY_SIZING) if args.dry_run else (PLAN, GPU_SIZING)
    if args.only:
        plan = tuple(plan[int(i) - 1] for i in args.only.split(","))
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: this run is for a GPU (use --dry-run to rehearse it on the CPU)", file=sys.stderr)
            return 2
    from t2i_core.devtools.bench.run import _device_name

    started = time.perf_counter()
    report: dict[str, Any] = {"device": _device_name(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "command": " ".join(["scripts/gpu_bench.sh", *(argv if argv is not None else sys.argv[1:])]),
                              "sizing": dataclasses.asdict(sizing), "budget_s": args.budget_s, "runs": []}
    report["build_s"] = {}  # each architecture is built before its first run (seconds, when built here)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, run in enumerate(plan):
        elapsed = time.perf_counter() - started
        if elapsed + run.expect_s > args.budget_s:
            report["runs"].append({"label": run.label, "preset": run.preset, "env": run.env,
                                   "skipped": f"not started: {elapsed:.0f} s gone + {run.expect_s:.0f} s expected "
                                              f"> the {args.budget_s:.0f} s budget"})
            continue
        print(f"[{elapsed:5.0f} s] {run.label} ...", flush=True)
        try:
            build_arch(run, report["build_s"])
            report["runs"].append(measure_speed(run) if run.speed_steps else measure(run, sizing))
        except Exception as exc:  # noqa: BLE001 - one failing run must not lose the others
            traceback.print_exc()
            report["runs"].append({"label": run.label, "preset": run.preset, "env": run.env,
                                   "error": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            free_archs(run, plan[index + 1:], report["build_s"])
        report["seconds"] = time.perf_counter() - started
        (args.out / "gpu-bench.json").write_text(json.dumps(report, indent=2))  # what was measured so far
    report["seconds"] = time.perf_counter() - started
    (args.out / "gpu-bench.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "gpu-bench.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'gpu-bench.json'} and {args.out / 'gpu-bench.md'} in {report['seconds']:.0f} s")
    failed = [r for r in report["runs"] if "error" in r]
    return 1 if failed and len(failed) == len(report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
