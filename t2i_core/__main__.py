"""The t2i-server command line (one function per command below; ``build_parser`` has the options).

    python -m t2i_core tiny --family sd|sdxl|sd3 --out DIR   write a tiny pipeline any diffusers user can load
    python -m t2i_core pull MODEL_ID                          download a hub model into the local cache
    python -m t2i_core pull MODEL_ID --from-folder DIR        import a diffusers folder into the BentoML model store
    python -m t2i_core bench --preset tiny                    the benchmark (raw, served, no batching)
    python -m t2i_core bench-pair | bench-vae | bench-prompts | bench-stop | bench-lora | bench-previews | bench-board
                                                              focused measurements (docs/performance.md)
    python -m t2i_core config-doc                             write docs/configuration.md from the settings
    python -m t2i_core key-new --name web-app                 a new API key and its keys-file entry
    python -m t2i_core bench-fairness                         one key's latency while another floods the server
    python -m t2i_core bench-memory --admits --budget 4GiB    activation memory: what a budget admits, measured peaks
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

from t2i_core.common.config import Settings
from t2i_core.patches import install_patches

install_patches(Settings.from_env())  # before torch loads: the benchmark's raw engine runs as the server's does


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m t2i_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a tiny random-weight pipeline that diffusers loads offline")
    from t2i_core.weights.tiny import TINY_FAMILIES
    from t2i_core.weights.tiny_dit import DIT_FAMILIES

    tiny.add_argument("--family", choices=TINY_FAMILIES + DIT_FAMILIES, default="sd")
    tiny.add_argument("--out", type=Path, required=True, help="folder to write (replaced if present)")
    pull = sub.add_parser("pull", help="put a model's weights on disk (hub cache or BentoML model store)")
    pull.add_argument("model_id")
    pull.add_argument("--from-folder", type=Path, help="import this diffusers folder into the BentoML model store")
    pull.add_argument("--to-store", action="store_true", help="also copy a downloaded hub model into the BentoML model store")
    bench = sub.add_parser("bench", help="benchmark: raw engine, served, and served without batching")
    bench.add_argument("--preset", default="tiny",
                       help="tiny, sd-turbo-arch-cpu, sd-turbo-arch-taesd-cpu (CPU), sd-turbo-arch, sdxl-turbo-arch (GPU)")
    bench.add_argument("--out", type=Path, default=Path("bench-results.json"))
    bench.add_argument("--repeats", type=int, help="timed runs per raw batch size (median; default: the preset's, 7 for tiny)")
    bench.add_argument("--requests", type=int,
                       help="requests per served concurrency level (default: the preset's, 1000 for tiny; "
                            "at least 4 per client for tiny and the GPU presets)")
    bench.add_argument("--concurrency", default="", help="comma-separated client counts (default: the preset's)")
    bench.add_argument("--max-batch-size", type=int, help="default: the preset's (16; 4 for the CPU presets)")
    bench.add_argument("--same-prompt", action="store_true", help="every image with one prompt (--distinct-prompts 1)")
    bench.add_argument("--distinct-prompts", type=int, default=0, metavar="K",
                       help="only K distinct prompts, repeating (default: a prompt per image)")
    bench.add_argument("--guidance", type=float, default=0.0,
                       help="guidance scale; above 1 the negative prompt is encoded and denoised too (default 0)")
    bench.add_argument("--raw-only", action="store_true", help="only the engine in process (no server)")
    bench.add_argument("--backends", default="", metavar="torch,openvino",
                       help="compare CPU backends (T2I_CPU_BACKEND) in one run: each one's plain pipeline and served "
                            "engine at the preset's client counts, and their images against the first one's")
    vae = sub.add_parser("bench-vae", help="decode time: the full SD VAE against a tiny VAE (TAESD)")
    vae.add_argument("--size", type=int, default=512)
    vae.add_argument("--repeats", type=int, default=5)
    vae.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    text = sub.add_parser("bench-prompts", help="prompt encoding of a batch, plain and once per distinct prompt")
    text.add_argument("--encoder", default="vit-l", choices=("vit-l", "vit-h", "vit-bigg"))
    text.add_argument("--batch", type=int, default=16)
    text.add_argument("--distinct", type=int, default=16, help="distinct prompts in the batch")
    text.add_argument("--no-guidance", action="store_true", help="no negative prompts (guidance 1 or less)")
    text.add_argument("--repeats", type=int, default=5)
    text.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    stop = sub.add_parser("bench-stop", help="engine time left after a running batch is cancelled, with and without stop points")
    stop.add_argument("--size", type=int, default=1024)
    stop.add_argument("--images", type=int, default=4)
    stop.add_argument("--steps", type=int, default=2)
    stop.add_argument("--repeats", type=int, default=3)
    controls = sub.add_parser("bench-lora", help="LoRA adapters: load, switch between batches, step cost")
    controls.add_argument("--arch", choices=("tiny", "sd-turbo"), default="tiny")
    controls.add_argument("--size", type=int, default=64)
    controls.add_argument("--rank", type=int, default=16)
    controls.add_argument("--repeats", type=int, default=5)
    previews = sub.add_parser("bench-previews", help="a batch's time with and without one request asking partial images")
    previews.add_argument("--size", type=int, default=256)
    previews.add_argument("--steps", type=int, default=8)
    previews.add_argument("--batch", type=int, default=8)
    previews.add_argument("--partial", type=int, default=3)
    previews.add_argument("--repeats", type=int, default=7)
    previews.add_argument("--decode", choices=("approx", "vae"), default="approx", help="T2I_PREVIEW_DECODE")
    board = sub.add_parser("bench-board", help="the engine's request board: cost per denoising step, cancel latency")
    board.add_argument("--batch", type=int, default=8)
    board.add_argument("--steps", type=int, default=2000)
    board.add_argument("--rounds", type=int, default=100, help="cancels timed per backend")
    board.add_argument("--redis", default=None, help="also Redis at this URL (redis://host:port/db)")
    memory = sub.add_parser("bench-memory", help="activation memory: the estimate against measured peaks (CPU), "
                                                 "and what a memory budget admits")
    memory.add_argument("--calibrate", action="store_true", help="measure each stage of the calibration set (slow)")
    memory.add_argument("--admits", action="store_true", help="the admission of one square image per size, 256-2048 px")
    memory.add_argument("--engine", type=int, metavar="SIDE", help="measure one engine call of SIDE x SIDE images")
    memory.add_argument("--model", default="random/sd-turbo-arch", help="registry id (with the benchmark's models)")
    memory.add_argument("--budget", default="", help="T2I_MEMORY_BUDGET_BYTES for --admits / --engine, e.g. 4GiB")
    memory.add_argument("--cgroup-limit", default="", help="--engine inside a cgroup with this memory limit, e.g. 4GiB")
    memory.add_argument("--batch", type=int, default=1)
    memory.add_argument("--guidance", type=float, default=0.0)
    memory.add_argument("--threads", type=int, default=0, help="torch threads in each measurement (0: torch's default)")
    memory.add_argument("--out", type=Path, help="write the figures as JSON")
    pair = sub.add_parser("bench-pair", help="the same load against servers running side by side, alternating")
    pair.add_argument("servers", nargs="+", metavar="NAME=URL", help="e.g. before=http://127.0.0.1:3001 (the first is the reference)")
    pair.add_argument("--preset", default="tiny")
    pair.add_argument("--rounds", type=int, default=6)
    pair.add_argument("--requests", type=int, default=2000)
    pair.add_argument("--concurrency", type=int, default=16)
    pair.add_argument("--out", type=Path, help="write the figures as JSON")
    sub.add_parser("config-doc", help="write docs/configuration.md from the T2I_* settings and their comments")
    key = sub.add_parser("key-new", help="a new API key (printed once) and its keys-file entry (its SHA-256)")
    key.add_argument("--name", required=True, help="what logs, metrics and usage call it")
    key.add_argument("--role", choices=("user", "admin"), default="user")
    key.add_argument("--priority", choices=("interactive", "batch"), default="interactive")
    key.add_argument("--weight", type=float, default=1.0)
    fair = sub.add_parser("bench-fairness", help="an interactive key's latency alone and while a batch key floods "
                                                 "the server (fair share against first come, first served)")
    fair.add_argument("--flood", type=int, default=32, help="requests key A keeps in flight")
    fair.add_argument("--requests", type=int, default=40, help="requests key B sends one at a time, per phase")
    fair.add_argument("--api-workers", type=int, default=1)
    fair.add_argument("--fcfs", action="store_true", help="also measure with T2I_FAIR_SHARE=0 (first come, first served)")
    fair.add_argument("--size", type=int, default=64, help="image side (px)")
    fair.add_argument("--steps", type=int, default=4)
    fair.add_argument("--max-batch-size", type=int, default=16)
    fair.add_argument("--out", type=Path, help="write the figures as JSON")
    return parser


def run_config_doc(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.config_doc import write

    print(f"wrote {write()}")
    return 0


def run_bench_pair(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.pair import compare, table
    from t2i_core.devtools.bench.presets import PRESETS

    servers = dict(s.split("=", 1) for s in args.servers if "=" in s)
    if len(servers) != len(args.servers) or args.preset not in PRESETS or args.rounds < 1:
        parser.error("servers are NAME=URL (distinct names), --preset one of " + ", ".join(PRESETS) + ", --rounds >= 1")
    report = compare({n: u.rstrip("/") for n, u in servers.items()}, PRESETS[args.preset], args.rounds,
                     args.requests, args.concurrency)
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def run_bench_vae(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.vae import main as run_vae_bench

    run_vae_bench(args.size, args.repeats, args.dtype)
    return 0


def run_bench_prompts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.prompts import main as run_prompts_bench

    if not 1 <= args.distinct <= args.batch:
        parser.error(f"--distinct must be 1 to --batch ({args.batch}); got {args.distinct}")
    run_prompts_bench(args.encoder, args.batch, args.distinct, not args.no_guidance, args.repeats, args.dtype)
    return 0


def run_bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.presets import PRESETS
    from t2i_core.devtools.bench.run import main as run_benchmark

    if args.preset not in PRESETS:
        parser.error(f"--preset must be one of {', '.join(PRESETS)}; got {args.preset!r}")
    levels = tuple(int(c) for c in args.concurrency.split(",") if c) or None
    if args.distinct_prompts < 0 or not 0 <= args.guidance <= 30:
        parser.error(f"--distinct-prompts must be >= 0 and --guidance 0 to 30; got {args.distinct_prompts}, {args.guidance}")
    preset = dataclasses.replace(PRESETS[args.preset], distinct_prompts=1 if args.same_prompt else args.distinct_prompts,
                                 guidance_scale=args.guidance)
    if args.backends:
        from t2i_core.devtools.bench.backends import BACKENDS, main as compare_backends

        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        if len(backends) < 1 or not set(backends) <= set(BACKENDS) or len(set(backends)) != len(backends):
            parser.error(f"--backends must name distinct backends of {', '.join(BACKENDS)}; got {args.backends!r}")
        compare_backends(preset, backends, args.out, args.repeats or preset.repeats, args.requests or preset.requests,
                         levels or preset.concurrency, args.max_batch_size or preset.max_batch_size)
        return 0
    run_benchmark(preset, args.out, args.repeats, args.requests, levels, args.max_batch_size, args.raw_only)
    return 0


def run_bench_stop(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.stop import main as run_stop_bench

    run_stop_bench(args.size, args.images, args.steps, args.repeats)
    return 0


def run_bench_lora(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.lora import main as run_lora_bench

    run_lora_bench(args.arch, args.size, args.rank, args.repeats)
    return 0


def run_bench_previews(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.previews import main as run_previews_bench

    run_previews_bench(args.size, args.steps, args.batch, args.partial, args.repeats, args.decode)
    return 0


def run_bench_board(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.board import main as run_board_bench

    run_board_bench(args.batch, args.steps, args.rounds, args.redis)
    return 0


def run_bench_memory(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.memory import main as run_memory_bench

    if not (args.calibrate or args.admits or args.engine):
        parser.error("bench-memory needs --calibrate, --admits or --engine SIDE")
    if args.admits and not args.budget:
        parser.error("--admits needs --budget, e.g. 4GiB")
    return run_memory_bench(args)


def run_pull(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.common.errors import T2IError
    from t2i_core.devtools.pull import PullError, pull as do_pull

    try:
        print(do_pull(args.model_id, args.from_folder, to_store=args.to_store))
    except (PullError, T2IError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_tiny(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.weights.tiny import build_tiny_pipeline
    from t2i_core.weights.tiny_dit import DIT_FAMILIES, build_tiny_dit

    started = time.perf_counter()
    out = (build_tiny_dit if args.family in DIT_FAMILIES else build_tiny_pipeline)(args.family, args.out)
    print(f"wrote tiny {args.family} pipeline to {out} in {time.perf_counter() - started:.2f}s")
    print(f"load it with: DiffusionPipeline.from_pretrained({str(out)!r}, local_files_only=True)")
    return 0


def run_key_new(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.key_new import main as new_key

    if not 0 < args.weight <= 1000:
        parser.error(f"--weight must be above 0 and at most 1000; got {args.weight}")
    try:
        return new_key(args.name, args.role, args.priority, args.weight)
    except ValueError as exc:
        parser.error(str(exc))
    return 2


def run_bench_fairness(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from t2i_core.devtools.bench.fairness import main as run_fairness

    if args.flood < 1 or args.requests < 3 or args.api_workers < 1:
        parser.error("--flood >= 1, --requests >= 3 and --api-workers >= 1")
    report = run_fairness(flood=args.flood, requests=args.requests, api_workers=args.api_workers, fcfs=args.fcfs,
                          size=args.size, steps=args.steps, max_batch_size=args.max_batch_size)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


COMMANDS: dict[str, Callable[[argparse.ArgumentParser, argparse.Namespace], int]] = {
    "tiny": run_tiny, "pull": run_pull, "bench": run_bench, "bench-vae": run_bench_vae,
    "bench-prompts": run_bench_prompts, "bench-pair": run_bench_pair, "bench-stop": run_bench_stop,
    "bench-lora": run_bench_lora, "bench-previews": run_bench_previews, "bench-board": run_bench_board,
    "bench-memory": run_bench_memory, "config-doc": run_config_doc, "key-new": run_key_new,
    "bench-fairness": run_bench_fairness,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return COMMANDS[args.command](parser, args)


if __name__ == "__main__":
    sys.exit(main())
