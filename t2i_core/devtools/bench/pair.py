"""Paired comparison of servers already running side by side: the same load against each in turn,
round after round, in alternating order; medians and per-round ratios to the first.

On a noisy machine two full benchmark runs minutes apart differ by 15% or more with the same code;
servers measured within seconds of each other, many times, show a 5% difference. Start each variant
with its own port and BENTOML_HOME, e.g.

    BENTOML_HOME=/tmp/a T2I_MODEL=builtin/tiny-sd T2I_DTYPE=float32 bentoml serve service:API --port 3001 &
    BENTOML_HOME=/tmp/b T2I_MODEL=builtin/tiny-sd T2I_DTYPE=float32 T2I_ENCODE_PROCESSES=0 \\
        bentoml serve service:API --port 3002 &
    python -m t2i_core bench-pair before=http://127.0.0.1:3002 after=http://127.0.0.1:3001
"""

from __future__ import annotations

import statistics
from typing import Any

from t2i_core.devtools.bench.load import run_load
from t2i_core.devtools.bench.presets import Preset


def compare(servers: dict[str, str], preset: Preset, rounds: int, requests: int, concurrency: int) -> dict[str, Any]:
    """images/s of each server per round (``servers``: name -> base URL), after a warm-up of each."""
    for url in servers.values():
        run_load(f"{url}/generate", preset.body, concurrency, max(concurrency * 4, 100))
    names = list(servers)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            result = run_load(f"{servers[name]}/generate", preset.body, concurrency, requests)
            if result.ok != requests:
                raise RuntimeError(f"{name}: {requests - result.ok} of {requests} requests failed: {result.statuses}")
            runs[name].append(result.images_per_s)
        print(f"round {r + 1}: " + "  ".join(f"{n} {runs[n][-1]:.1f}" for n in names), flush=True)
    first = names[0]
    return {
        "concurrency": concurrency, "requests": requests, "rounds": rounds, "images_per_s": runs,
        "median": {n: statistics.median(v) for n, v in runs.items()},
        "ratio_to_first": {n: statistics.median(a / b for a, b in zip(runs[n], runs[first])) for n in names[1:]},
    }


def table(report: dict[str, Any]) -> str:
    names = list(report["images_per_s"])
    lines = [f"{report['rounds']} rounds of {report['requests']} requests at {report['concurrency']} clients",
             "  server          median img/s   min     max     per-round ratio to " + names[0]]
    for n in names:
        v = report["images_per_s"][n]
        ratio = report["ratio_to_first"].get(n)
        lines.append(f"  {n:15s} {report['median'][n]:12.1f} {min(v):7.1f} {max(v):7.1f}"
                     f"     {'' if ratio is None else f'{ratio:.3f}'}")
    return "\n".join(lines)
