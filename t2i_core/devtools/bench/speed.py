"""What the speed tiers and torch.compile cost and save, measured with the engine in process.

- ``tiers``: per tier of a model (``quality``, then its ``balanced`` / ``fast``), images per second, the
  time against ``quality``, the work skipped (denoising steps cut; calls of the step cache's blocks
  answered from the cache) and the difference from the full computation: the mean and largest absolute
  pixel difference (0-255) from the ``quality`` images of the same prompts and seeds.
- ``compile_switches``: an engine with ``T2I_COMPILE`` (compiled at start-up by its warm-up), then
  batches that change size and LoRA adapter set every time (and tier, where the model has tiers),
  against the same batches uncompiled: graphs compiled at start-up and while serving (0 is the goal),
  images per second each way, and the largest pixel difference between the two.

On the CPU with the tiny models (seconds; compile a minute or two)::

    python -m t2i_core.devtools.bench.speed --model builtin/tiny-flux --steps 8
    python -m t2i_core.devtools.bench.speed --model builtin/tiny-sd --steps 8 --compile

``scripts/gpu_bench.sh`` runs both on the FLUX.1 and SD-Turbo architectures (``gpu.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from typing import Any

from t2i_core.devtools.bench.environment import environment

PROMPTS = ("a lighthouse on a cliff at dusk", "a bowl of ripe figs, studio light", "a fox in fresh snow",
           "an old tram in a narrow street")


def requests(engine: Any, model: str, speed: str, batch: int, steps: int, size: tuple[int, int] | None = None,
             adapters: list[tuple[str, float]] | None = None) -> list[Any]:
    """``batch`` requests as the API resolves them (``to_engine``: a steps tier cuts the steps there)."""
    from t2i_core.common.schemas import GenerateRequest, to_engine

    entry = engine.registry.get(model)
    width, height = size or (entry.defaults.width, entry.defaults.height)
    out = []
    for i in range(batch):
        req = GenerateRequest(prompt=PROMPTS[i % len(PROMPTS)], model=model, speed=speed, num_inference_steps=steps,
                              width=width, height=height,
                              adapters=[{"id": a, "weight": w} for a, w in adapters] if adapters else None)
        out.append(to_engine(req, entry, seed=i, registry=engine.registry))
    return out


def _pixels(results: list[Any]) -> Any:
    import numpy as np

    failed = next((r.error for r in results if r.error), None)
    if failed:
        raise RuntimeError(f"the engine failed: {failed['message']}")
    return np.stack([np.frombuffer(r.pixels, np.uint8).astype(np.int16) for r in results])


def tiers(engine: Any, model: str, steps: int, batch: int = 1, repeats: int = 3,
          size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """One row per tier of ``model`` (quality first); the tiers interleaved, so each sees the same load."""
    import numpy as np

    names = ["quality", *engine.registry.get(model).speed]
    batches = {name: requests(engine, model, name, batch, steps, size) for name in names}
    for name in names:  # loads, and the first call of each tier is not timed
        engine.run(batches[name])
    seconds: dict[str, list[float]] = {name: [] for name in names}
    pixels, first = {}, {}
    for _ in range(repeats):
        for name in names:
            started = time.perf_counter()
            results = engine.run(batches[name])
            seconds[name].append(time.perf_counter() - started)
            pixels[name], first[name] = _pixels(results), results[0]
    base = statistics.median(seconds["quality"])
    rows = []
    for name in names:
        median = statistics.median(seconds[name])
        diff = np.abs(pixels[name] - pixels["quality"])
        item = batches[name][0]
        rows.append({"speed": name, "batch": batch, "steps": item.steps, "steps_skipped": item.steps_skipped,
                     "cache_calls": first[name].cache_calls, "cache_skipped": first[name].cache_skipped,
                     "seconds": round(median, 4), "images_per_s": round(batch / median, 3),
                     "time_vs_quality": round(median / base, 3),
                     "mean_abs_diff": round(float(diff.mean()), 3), "max_abs_diff": int(diff.max())})
    return rows


def make_engine(env: dict[str, str], registry_path: Any = None, dtype: str | None = None) -> Any:
    """An engine with the T2I_* settings of the environment plus ``env`` (and ``dtype``), on the registry
    file ``registry_path`` (None: the served one)."""
    import dataclasses

    from t2i_core.common.config import Settings
    from t2i_core.common.registry import Registry
    from t2i_core.engine.core import Engine

    with environment(env):
        settings = Settings.from_env()
    if dtype:
        settings = dataclasses.replace(settings, dtype=dtype)
    registry = Registry(default=settings.model, path=registry_path) if registry_path else None
    return Engine(settings, registry)


def compile_switches(model: str, steps: int, adapters: list[str], max_batch: int = 4, rounds: int = 2,
                     size: tuple[int, int] | None = None, registry_path: Any = None,
                     dtype: str | None = None) -> dict[str, Any]:
    """Compiled against uncompiled over the same batches, each changing size, adapter set and tier from
    the one before: the uncompiled engine first (its images kept), then the compiled one (one model in
    memory at a time: a full-size FLUX.1 twice would not fit a GPU)."""
    import gc

    import numpy as np

    from t2i_core.engine.compile_watch import compiled_graphs

    env = {"T2I_MODEL": model, "T2I_MAX_BATCH_SIZE": str(max_batch)}
    if size:
        env["T2I_WARMUP_SIZES"] = f"{size[0]}x{size[1]}"
    plain = make_engine(env, registry_path, dtype)
    tier_names = ["quality", *plain.registry.get(model).speed]
    sets = [[], *([(a, 1.0)] for a in adapters), [(a, 0.7 - 0.3 * i) for i, a in enumerate(adapters)]]
    sizes = sorted({1, 2, max_batch}) if max_batch > 1 else [1]
    plan = list(itertools.islice(zip(itertools.cycle(sizes), itertools.cycle(sets), itertools.cycle(tier_names)),
                                 rounds * max(len(sizes), len(sets), len(tier_names))))

    def run_plan(engine: Any) -> tuple[float, list[Any]]:
        seconds, images = 0.0, []
        for batch, adapter_set, tier in plan:
            reqs = requests(engine, model, tier, batch, steps, size, adapter_set)
            started = time.perf_counter()
            images.append(_pixels(engine.run(reqs)))
            seconds += time.perf_counter() - started
        return seconds, images

    plain.run(requests(plain, model, "quality", 1, steps, size))  # loads
    plain_s, plain_images = run_plan(plain)
    plain.close()
    del plain
    gc.collect()
    before = compiled_graphs()
    started = time.perf_counter()
    compiled = make_engine({**env, "T2I_COMPILE": "1"}, registry_path, dtype)
    compiled.preload()  # loads, reads the adapters into the LoRA slot, compiles (the warm-up)
    startup_s = time.perf_counter() - started
    startup_graphs = compiled_graphs() - before
    compiled_s, compiled_images = run_plan(compiled)
    images = sum(batch for batch, _, _ in plan)
    largest = max(int(np.abs(a - b).max()) for a, b in zip(compiled_images, plain_images))
    result = {"model": model, "steps": steps, "batches": len(plan), "images": images, "batch_sizes": sizes,
              "adapter_sets": [[a for a, _ in s] for s in sets], "tiers": tier_names,
              "startup_s": round(startup_s, 2), "graphs_startup": startup_graphs,
              "graphs_serving": compiled.compile_watch.graphs["serving"],
              "images_per_s": {"compiled": round(images / compiled_s, 3), "uncompiled": round(images / plain_s, 3)},
              "speedup": round(plain_s / compiled_s, 3), "max_abs_diff_vs_uncompiled": largest,
              "adapter_switches": compiled.models.adapter_switches().get("adapter_switches", 0)}
    compiled.close()
    return result


def tiers_table(model: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"{model}: speed tiers", "| speed | steps run | blocks computed / called | img/s | time vs quality "
             "| mean abs diff vs quality (max) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        blocks = f"{r['cache_calls'] - r['cache_skipped']} / {r['cache_calls']}" if r["cache_calls"] else "-"
        lines.append(f"| {r['speed']} | {r['steps']} | {blocks} | {r['images_per_s']:.3g} | {r['time_vs_quality']:.2f} "
                     f"| {r['mean_abs_diff']:.2f} ({r['max_abs_diff']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i_core.devtools.bench.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin/tiny-flux")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also compile with adapter switches")
    parser.add_argument("--adapters", default="", help="comma-separated adapter ids for --compile (default: the "
                                                       "registered adapters of the model's family, at most 2)")
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    engine = make_engine({})
    report: dict[str, Any] = {"model": args.model, "tiers": tiers(engine, args.model, args.steps, args.batch, args.repeats)}
    print(tiers_table(args.model, report["tiers"]))
    if args.compile:
        family = engine.registry.get(args.model).pipeline
        adapters = [a for a in args.adapters.split(",") if a] or \
            [a.id for a in engine.registry.adapters() if a.family == family][:2]
        del engine
        report["compile"] = compile_switches(args.model, args.steps, adapters, max_batch=max(2, args.batch * 2))
        print(json.dumps(report["compile"], indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    import sys

    from t2i_core.common.config import Settings as _Settings
    from t2i_core.patches import install_patches

    install_patches(_Settings.from_env())
    sys.exit(main())
