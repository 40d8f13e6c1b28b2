"""Against a real `bentoml serve` with ``T2I_COMPILE=1`` (the tiny SD model, CPU): the model compiles at
start-up, before ``/readyz`` says ready, and then serving batches of other sizes and adapter sets
compiles nothing more (``t2i_compiled_graphs_total`` on ``/metrics``, dynamo's own count)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
INK, PASTEL = {"id": "tiny-ink", "weight": 1.0}, {"id": "tiny-pastel", "weight": 0.5}


def compiled(metrics: str, phase: str) -> float:
    found = re.search(r't2i_compiled_graphs_total\{phase="%s"\} ([0-9.e+]+)' % phase, metrics)
    return float(found.group(1)) if found else 0.0


def test_readiness_waits_for_the_startup_compile_and_serving_never_recompiles():
    srv = Server({"T2I_COMPILE": "1", "T2I_MAX_BATCH_SIZE": "2", "T2I_WARMUP_SIZES": "64x64"})
    try:
        answers: list[int] = []
        deadline = time.monotonic() + 500
        while not answers or answers[-1] != 200:
            assert srv.proc.poll() is None and time.monotonic() < deadline, srv.log()[-4000:]
            try:
                answers.append(httpx.get(f"{srv.url}/readyz", timeout=10).status_code)
            except httpx.HTTPError:
                time.sleep(0.5)
        # asked while it compiled: not ready; when it first said ready, the warm-up had compiled (the
        # engine counts its graphs after each warm-up batch: a readiness that did not wait for them
        # would answer 200 minutes before any was counted on this CPU)
        metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
        assert 503 in answers, answers
        startup = compiled(metrics, "startup")
        assert startup > 0, metrics

        def generate(body: dict) -> None:
            r = httpx.post(f"{srv.url}/generate", json={"steps": 2, "guidance_scale": 3.0, **body}, timeout=300)
            assert r.status_code == 200, r.text

        with ThreadPoolExecutor(3) as pool:  # concurrent requests of one adapter set batch together
            for adapters in ([], [INK], [INK, PASTEL], [PASTEL], []):
                list(pool.map(generate, [{"prompt": f"p{i}" + " longer" * i, "seed": i, "adapters": adapters}
                                         for i in range(3)]))
        metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
        assert compiled(metrics, "serving") == 0 and compiled(metrics, "startup") == startup, metrics
        assert 't2i_engine_calls_total{control="adapters",kind="generate"}' in metrics
        assert "while serving" not in srv.log()
    finally:
        srv.stop()
