"""Run the benchmark: raw, served, no batching; print a table and write JSON.

Each raw batch size and served level also reports its stage split: text encoding, denoising and VAE
decoding per engine batch, and image encoding per image (raw: the server's PNG encoder timed in
process; served: the server's own ``t2i_stage_seconds`` histograms on ``/metrics``)."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from t2i_core.devtools.bench.cpu import server_cpu
from t2i_core.devtools.bench.load import run_load
from t2i_core.devtools.bench.presets import Preset
from t2i_core.devtools.bench.registry import bench_registry_file

ROOT = Path(__file__).resolve().parents[3]


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


STAGES = ("text_encoding", "denoising", "vae_decoding")
#: seconds a benchmark server may take to answer its first image: loading a full-size model, and with
#: T2I_COMPILE compiling it at startup (minutes for SDXL's UNet), or one 512 px image on a small CPU
READY_TIMEOUT_S = 900


def engine_dtype(preset: Preset) -> str:
    """The T2I_DTYPE the benchmark runs with: the preset's, with "auto" resolved as the server resolves
    a model whose CPU dtype is left to it (on CPU: bfloat16 where the CPU has it natively or
    T2I_CPU_BF16=on, else float32), so that the table says which one was measured."""
    if preset.dtype != "auto":
        return preset.dtype
    from t2i_core.common.config import Settings
    from t2i_core.engine.devices import pick_device, pick_dtype

    settings = Settings.from_env()
    return str(pick_dtype("auto", pick_device(settings.device), "auto", settings.cpu_bf16)).removeprefix("torch.")


def raw_engine(preset: Preset) -> Any:
    """The engine in process, with the T2I_* settings of the environment (e.g. T2I_COMPILE=1) and the
    preset's dtype."""
    import dataclasses

    from t2i_core.common.config import Settings
    from t2i_core.engine.core import Engine

    from t2i_core.common.registry import Registry

    settings = dataclasses.replace(Settings.from_env(), dtype=engine_dtype(preset))
    return Engine(settings, Registry(default=settings.model, path=bench_registry_file()))


def _median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in STAGES if runs and all(k in r for r in runs)}


def png_seconds(preset: Preset, pixels: bytes, repeats: int = 3) -> float:
    """Median seconds the server's encoder takes for one of these images as PNG, parameters included."""
    from t2i_core.api.images.codecs import timed_encode

    text = f"{preset.prompt(0)}\nSteps: {preset.steps}, Seed: 0, Size: {preset.width}x{preset.height}"
    return statistics.median(timed_encode(pixels, preset.width, preset.height, "png", text)[1] for _ in range(repeats))


def raw(preset: Preset, repeats: int, engine: Any = None, keep: list[Any] | None = None) -> list[dict[str, Any]]:
    """Images/s of the engine in process, per batch size (median of ``repeats`` timed runs); ``keep``
    gets the results of each batch size's last run."""
    from t2i_core.common.schemas import EngineRequest

    engine = engine or raw_engine(preset)
    def request(i: int) -> EngineRequest:
        return EngineRequest(model=preset.model, prompt=preset.prompt(i), steps=preset.steps, guidance_scale=preset.guidance_scale,
                             width=preset.width, height=preset.height, seed=i)
    rows = []
    for batch in preset.batch_sizes:
        engine.run([request(i) for i in range(batch)])  # warm-up (and first load)
        times, stages = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            results = engine.run([request(i) for i in range(batch)])
            times.append(time.perf_counter() - started)
            assert all(r.error is None for r in results), results[0].error
            stages.append(results[0].stages)
        if keep is not None:
            keep.append(results)
        median = statistics.median(times)
        rows.append({"batch": batch, "images_per_s": batch / median, "batch_latency_s": median,
                     # per batch, median of the timed runs; image encoding per image
                     "stages_s": {**_median_stages(stages), "image_encoding": png_seconds(preset, results[0].pixels)}})
    return rows


def best_of(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch size, the faster of the raw runs before and after the served ones: the ceiling is the
    best the engine did in process in this run, so a slow spell of the machine during one raw run
    cannot flatter the served/raw ratio."""
    rows = []
    for b, a in zip(before, after):
        best = b if b["images_per_s"] >= a["images_per_s"] else a
        rows.append({**best, "images_per_s_before": b["images_per_s"], "images_per_s_after": a["images_per_s"]})
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_STAGE_LINE = re.compile(r'^t2i_stage_seconds_(sum|count)\{[^}]*stage="(\w+)"[^}]*\}\s+(\S+)', re.M)


def stage_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(seconds, observations) per stage from a Prometheus ``/metrics`` page, summed over label sets."""
    totals: dict[str, list[float]] = {}
    for kind, stage, value in _STAGE_LINE.findall(metrics_text):
        totals.setdefault(stage, [0.0, 0.0])[0 if kind == "sum" else 1] += float(value)
    return {k: (v[0], v[1]) for k, v in totals.items()}


def stage_split(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean seconds per observation (an engine batch; an image for image_encoding) between two pages."""
    split = {}
    for stage in (*STAGES, "image_encoding"):
        seconds = after.get(stage, (0.0, 0.0))[0] - before.get(stage, (0.0, 0.0))[0]
        count = after.get(stage, (0.0, 0.0))[1] - before.get(stage, (0.0, 0.0))[1]
        if count > 0:
            split[stage] = seconds / count
    return split


def served(preset: Preset, max_batch_size: int, requests_per_level: int, concurrency: tuple[int, ...]) -> list[dict[str, Any]]:
    """Start ``bentoml serve`` with ``max_batch_size`` and load it at each concurrency level."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "T2I_MAX_BATCH_SIZE": str(max_batch_size), "T2I_DTYPE": engine_dtype(preset),
           "T2I_MODEL": preset.model, "T2I_MAX_IN_FLIGHT": "100000", "T2I_REGISTRY": str(bench_registry_file()),
           "BENTOML_CONFIG": str(ROOT / "configuration.yaml"),
           # a 512 px image on a small CPU takes tens of seconds, more than the default 120 s limit once queued
           "T2I_REQUEST_TIMEOUT_S": os.environ.get("T2I_REQUEST_TIMEOUT_S") or str(READY_TIMEOUT_S)}
    bentoml = Path(sys.executable).with_name("bentoml")
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"t2i-bench-{port}.log", "wb")
    proc = subprocess.Popen([str(bentoml), "serve", "service:API", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.post(f"{url}/generate", json=preset.body(0), timeout=READY_TIMEOUT_S).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited; see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s; see {log.name}")
            time.sleep(0.5)
        if preset.warmup_per_client:
            run_load(f"{url}/generate", preset.body, max(concurrency), max(concurrency) * preset.warmup_per_client)
        for c in concurrency:
            before = httpx.post(f"{url}/stats", json={}, timeout=60).json()
            stages_before = stage_totals(httpx.get(f"{url}/metrics", timeout=60).text)
            cpu_before = server_cpu(proc.pid)
            result = run_load(f"{url}/generate", preset.body, c, max(requests_per_level, c * preset.min_requests_per_client))
            cpu_after = server_cpu(proc.pid)
            after = httpx.post(f"{url}/stats", json={}, timeout=60).json()
            stages = stage_split(stages_before, stage_totals(httpx.get(f"{url}/metrics", timeout=60).text))
            batches = after["batches"] - before["batches"]
            rows.append({
                "concurrency": c, "requests": result.requests, "ok": result.ok, "statuses": result.statuses,
                "images_per_s": result.images_per_s,
                "p50_s": result.percentile(50), "p95_s": result.percentile(95), "p99_s": result.percentile(99),
                "images_per_batch": (after["images"] - before["images"]) / batches if batches else 0.0,
                "engine_utilization": (after["busy_s"] - before["busy_s"]) / result.seconds,
                # CPU per answered request in the API worker(s), per image in the engine worker
                "api_cpu_ms_per_request": 1000 * (cpu_after.api_s - cpu_before.api_s) / max(result.ok, 1),
                "engine_cpu_ms_per_image": 1000 * (cpu_after.engine_s - cpu_before.engine_s) / max(result.ok, 1),
                # mean seconds per engine batch (text encoding, denoising, VAE decoding), per image (image encoding)
                "stages_s": stages,
            })
    finally:
        import signal

        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    return rows


def benchmark(preset: Preset, repeats: int, requests_per_level: int, concurrency: tuple[int, ...] | None = None,
              max_batch_size: int = 16, raw_only: bool = False) -> dict[str, Any]:
    concurrency = () if raw_only else (concurrency or preset.concurrency)
    engine = raw_engine(preset)
    raw_rows = raw(preset, repeats, engine)
    served_rows = served(preset, max_batch_size, requests_per_level, concurrency) if concurrency else []
    unbatched_rows = served(preset, 1, requests_per_level, concurrency) if concurrency and preset.no_batching else []
    if concurrency and preset.raw_after:  # measured again after the served runs; each batch size keeps its faster run
        raw_rows = best_of(raw_rows, raw(preset, repeats, engine))
    best_raw = max(r["images_per_s"] for r in raw_rows)
    ratios = []
    for i, s in enumerate(served_rows):
        u = unbatched_rows[i] if i < len(unbatched_rows) else None
        ratios.append({"concurrency": s["concurrency"],
                       "served_over_raw_best": s["images_per_s"] / best_raw,
                       "served_over_no_batching": s["images_per_s"] / u["images_per_s"] if u and u["images_per_s"] else None})
    return {"preset": preset.__dict__, "device": _device_name(), "dtype": engine_dtype(preset), "max_batch_size": max_batch_size,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # the raw and the served engine run with the same OpenMP spin (t2i_core/patches/openmp.py)
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            "raw": raw_rows, "served": served_rows, "no_batching": unbatched_rows, "ratios": ratios,
            "raw_best_images_per_s": best_raw}


def _rate(images_per_s: float) -> str:
    """Images/s in 7 characters, with three decimals below 10 (a CPU at 512 px makes a fraction of one)."""
    return f"{images_per_s:7.1f}" if images_per_s >= 10 else f"{images_per_s:7.3f}"


def table(report: dict[str, Any]) -> str:
    twice = bool(report["raw"]) and "images_per_s_after" in report["raw"][0]
    described = Preset(**report["preset"]).describe()
    dtype = f", {report['dtype']}" if "dtype" in report else ""
    lines = [f"preset {report['preset']['name']} on {report['device']}  (max_batch_size {report['max_batch_size']}{dtype}{described})", "",
             "raw (engine in process: the faster of a run before the served runs and one after them)"
             if twice else "raw (engine in process)",
             "  batch   img/s   batch latency" + ("   img/s before   img/s after" if twice else "")]
    for r in report["raw"]:
        lines.append(f"  {r['batch']:5d} {_rate(r['images_per_s'])}   {r['batch_latency_s'] * 1000:8.1f} ms"
                     + (f"   {r['images_per_s_before']:12.1f}   {r['images_per_s_after']:11.1f}" if twice else ""))
    for title, key in (("served (bentoml serve, adaptive batching)", "served"), ("no batching (max_batch_size=1)", "no_batching")):
        if not report[key] and key == "no_batching" and not report["preset"].get("no_batching", True):
            continue
        lines += ["", title, "  clients   img/s     p50 ms    p95 ms    p99 ms   img/batch   engine busy   non-200"
                             "   API cpu ms/req   engine cpu ms/img"]
        for r in report[key]:
            bad = r["requests"] - r["ok"]
            lines.append(f"  {r['concurrency']:7d} {_rate(r['images_per_s'])} {r['p50_s'] * 1000:9.1f} {r['p95_s'] * 1000:9.1f}"
                         f" {r['p99_s'] * 1000:9.1f} {r['images_per_batch']:10.2f} {r['engine_utilization']:12.0%} {bad:8d}"
                         f" {r.get('api_cpu_ms_per_request', float('nan')):16.2f} {r.get('engine_cpu_ms_per_image', float('nan')):19.2f}")
    lines += ["", "ratios", "  clients   served/raw(best)   served/no-batching"]
    for r in report["ratios"]:
        nb = r["served_over_no_batching"]
        lines.append(f"  {r['concurrency']:7d} {r['served_over_raw_best']:18.2f} {nb if nb is None else f'{nb:20.2f}'}")
    split = [(f"raw batch {r['batch']}", r["stages_s"]) for r in report["raw"] if r.get("stages_s")]
    split += [(f"served {r['concurrency']} client{'s' if r['concurrency'] > 1 else ''}", r["stages_s"])
              for r in report["served"] if r.get("stages_s")]
    if split:
        lines += ["", "stage split (ms; text encoding, denoising, VAE decoding per engine batch; image encoding per image)",
                  "  where                text enc    denoise    VAE dec    img enc"]
        for where, st in split:
            cells = "".join(f" {st[k] * 1000:10.1f}" if k in st else f" {'-':>10}" for k in (*STAGES, "image_encoding"))
            lines.append(f"  {where:18s} {cells}")
    return "\n".join(lines)


def main(preset: Preset, out: Path, repeats: int | None, requests_per_level: int | None, concurrency: tuple[int, ...] | None,
         max_batch_size: int | None, raw_only: bool = False) -> None:
    """Run and report; None for ``repeats``, ``requests_per_level`` or ``max_batch_size``: the preset's."""
    report = benchmark(preset, repeats or preset.repeats, requests_per_level or preset.requests, concurrency,
                       max_batch_size or preset.max_batch_size, raw_only)
    print(table(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
