"""The CPU backends side by side in one run (``bench --backends torch,openvino``): for each backend, the
plain pipeline in process (the engine's raw batches) and the served engine (``bentoml serve``) at the
preset's client counts, then the images of each backend against the first one's (the quality guard
at the benchmark's size).

The figures the comparison is judged by: served seconds per image at 1 client (p50 latency) over the
same backend's plain pipeline at batch 1 (goal: at most 1.05), and images/s at the largest client
count over 1 client (goal: above 1)."""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from t2i_core.devtools.bench.presets import Preset
from t2i_core.devtools.bench.run import _device_name, _rate, engine_dtype, raw, raw_engine, served

#: the backends ``--backends`` may name
BACKENDS = ("torch", "openvino")


def _pixel_difference(a: list[bytes], b: list[bytes]) -> dict[str, float]:
    """Max and mean absolute difference (levels of 255) between two backends' images of the same requests."""
    diffs = [np.abs(np.frombuffer(x, np.uint8).astype(np.int16) - np.frombuffer(y, np.uint8).astype(np.int16))
             for x, y in zip(a, b)]
    return {"max": float(max(d.max() for d in diffs)), "mean": float(np.mean([d.mean() for d in diffs])),
            "images": len(diffs)}


def _with_backend(backend: str) -> None:
    os.environ["T2I_CPU_BACKEND"] = backend  # read by the raw engine's Settings and passed to the server


def compare(preset: Preset, backends: tuple[str, ...], repeats: int, requests_per_level: int,
            concurrency: tuple[int, ...], max_batch_size: int) -> dict[str, Any]:
    before = os.environ.get("T2I_CPU_BACKEND")
    report: dict[str, Any] = {"preset": preset.__dict__, "device": _device_name(), "dtype": engine_dtype(preset),
                              "max_batch_size": max_batch_size, "backends": {},
                              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    images: dict[str, list[bytes]] = {}
    try:
        for backend in backends:  # the plain pipelines first, one engine at a time (each holds the weights)
            _with_backend(backend)
            engine = raw_engine(preset)
            started = time.perf_counter()
            engine.load(preset.model)  # on its torch thread, as the server loads
            load_s = time.perf_counter() - started
            kept: list[Any] = []
            rows = raw(preset, repeats, engine, keep=kept)
            listed = next(r for r in engine.models.states() if r["id"] == preset.model)
            images[backend] = [r.pixels for r in kept[-1]]
            report["backends"][backend] = {"backend": listed.get("backend"), "load_s": load_s, "raw": rows}
            engine.close()
            del engine, kept
            gc.collect()
        for backend in backends:
            _with_backend(backend)
            report["backends"][backend]["served"] = served(preset, max_batch_size, requests_per_level, concurrency)
    finally:
        if before is None:
            os.environ.pop("T2I_CPU_BACKEND", None)
        else:
            os.environ["T2I_CPU_BACKEND"] = before
    first = backends[0]
    for backend in backends[1:]:
        report["backends"][backend]["pixels_vs_" + first] = _pixel_difference(images[first], images[backend])
    for backend, row in report["backends"].items():
        one = row["raw"][0]
        plain_s = one["batch_latency_s"] / one["batch"]
        levels = row["served"]
        row["summary"] = {
            "plain_s_per_image": plain_s,
            "served_1_client_s_per_image": levels[0]["p50_s"] if levels else None,
            "served_over_plain": levels[0]["p50_s"] / plain_s if levels else None,
            "clients_gain": levels[-1]["images_per_s"] / levels[0]["images_per_s"] if len(levels) > 1 else None,
        }
    return report


def table(report: dict[str, Any]) -> str:
    backends = report["backends"]
    lines = [f"preset {report['preset']['name']} on {report['device']}  (max_batch_size {report['max_batch_size']}, "
             f"{report['dtype']}): CPU backends", ""]
    lines.append("  backend     listed as   load s   plain s/img (batch 1)   served s/img (1 client, p50)   "
                 "served/plain   img/s at each client count   last/first")
    for name, row in backends.items():
        s = row["summary"]
        rates = " ".join(f"{r['concurrency']}:{_rate(r['images_per_s']).strip()}" for r in row["served"])
        lines.append(f"  {name:10s}  {str(row['backend']):10s} {row['load_s']:7.1f}   {s['plain_s_per_image']:21.2f}   "
                     f"{s['served_1_client_s_per_image'] or float('nan'):28.2f}   {s['served_over_plain'] or float('nan'):12.3f}"
                     f"   {rates:26s}   {s['clients_gain'] or float('nan'):10.2f}")
    lines += ["", "  plain pipeline per batch size (s per image)"]
    for name, row in backends.items():
        lines.append(f"  {name:10s}  " + "  ".join(f"batch {r['batch']}: {r['batch_latency_s'] / r['batch']:.2f}"
                                                 for r in row["raw"]))
    first = next(iter(backends))
    for name, row in backends.items():
        diff = row.get(f"pixels_vs_{first}")
        if diff:
            lines.append(f"\n  {name} against {first}, the same requests ({diff['images']} images): pixel difference "
                         f"max {diff['max']:.0f}, mean {diff['mean']:.3f} levels of 255")
    return "\n".join(lines)


def main(preset: Preset, backends: tuple[str, ...], out: Path, repeats: int, requests_per_level: int,
         concurrency: tuple[int, ...], max_batch_size: int) -> None:
    report = compare(preset, backends, repeats, requests_per_level, concurrency, max_batch_size)
    print(table(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
