"""``python -m t2i_core bench-fairness``: does one caller's flood make another wait?

A server with two keys (a keys file written for the run): A, class batch, keeps ``flood`` requests
in flight; B, class interactive, sends one request at a time. Measured: B's median latency alone,
then while A floods, and A's median meanwhile; the figure is B's median under the flood over B's
median alone, and B's median under the flood over A's median meanwhile (``B/A``: both measured at
the same time, so a machine busy with other work moves both alike). With ``--fcfs`` the same run on a
server with ``T2I_FAIR_SHARE=0`` (first come, first served: B waits behind A's queue). Every request is a
``/generate`` of the default model (the built-in tiny model on a machine without sd-turbo).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from t2i_core.api.keys.records import digest

ROOT = Path(__file__).resolve().parents[3]
READY_TIMEOUT_S = 300


def keys_file(folder: Path) -> tuple[Path, str, str]:
    """A keys file with A (batch) and B (interactive); returns it and the two keys."""
    a, b = "a-" + secrets.token_hex(16), "b-" + secrets.token_hex(16)
    path = folder / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - {{name: flood-a, key_sha256: {digest(a)}, priority: batch}}\n"
        f"  - {{name: interactive-b, key_sha256: {digest(b)}, priority: interactive}}\n")
    return path, a, b


class Served:
    """A ``bentoml serve`` of this project with ``env``, stopped on exit."""

    def __init__(self, env: dict[str, str]):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.gettempdir()) / f"t2i-bench-fairness-{self.port}.log"
        self._log = open(self.log_path, "wb")
        bentoml = Path(sys.executable).with_name("bentoml")
        self.proc = subprocess.Popen(
            [str(bentoml), "serve", "service:API", "--host", "127.0.0.1", "--port", str(self.port)], cwd=ROOT,
            env={**os.environ, "BENTOML_CONFIG": str(ROOT / "configuration.yaml"), **env},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        import httpx

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log_path}")
            try:
                if httpx.post(f"{self.url}/generate", json=body, headers=headers, timeout=60).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


async def measure(url: str, a_key: str, b_key: str, flood: int, requests: int, body: dict[str, Any]) -> dict[str, Any]:
    """B alone, then B while A keeps ``flood`` requests in flight; latencies in seconds."""
    import httpx

    a_auth, b_auth = {"Authorization": f"Bearer {a_key}"}, {"Authorization": f"Bearer {b_key}"}
    limits = httpx.Limits(max_connections=flood + 8, max_keepalive_connections=flood + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(auth: dict[str, str], seed: int) -> float:
            started = time.perf_counter()
            r = await client.post(f"{url}/generate", json={**body, "seed": seed}, headers=auth)
            if r.status_code != 200:
                raise RuntimeError(f"/generate answered {r.status_code}: {r.text[:300]}")
            return time.perf_counter() - started

        async def b_phase() -> list[float]:
            return [await one(b_auth, 10_000 + i) for i in range(requests)]

        for i in range(3):
            await one(b_auth, i)  # warm
        alone = await b_phase()
        a_times: list[float] = []
        flooding = True

        async def a_loop(k: int) -> None:
            i = 0
            while flooding:
                a_times.append(await one(a_auth, 100_000 * (k + 1) + i))
                i += 1

        loops = [asyncio.create_task(a_loop(k)) for k in range(flood)]
        while len(a_times) < 2 * flood:  # A's queue is full and turning over
            await asyncio.sleep(0.05)
        a_before = len(a_times)
        under = await b_phase()
        a_during = a_times[a_before:]
        flooding = False
        await asyncio.gather(*loops)
    quartiles = statistics.quantiles(a_during, n=4) if len(a_during) >= 2 else [None] * 3
    return {"b_alone_median_s": statistics.median(alone), "b_flood_median_s": statistics.median(under),
            "a_flood_median_s": statistics.median(a_during) if a_during else None,
            "a_flood_p25_s": quartiles[0],
            "b_ratio": statistics.median(under) / statistics.median(alone),
            "b_over_a": statistics.median(under) / statistics.median(a_during) if a_during else None,
            "a_answers_during": len(a_during),
            "b_alone_s": alone, "b_flood_s": under, "a_flood_s": a_during}


def run_one(fair: bool, flood: int, requests: int, api_workers: int, body: dict[str, Any],
            max_batch_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="t2i-fairness-") as folder:
        path, a_key, b_key = keys_file(Path(folder))
        server = Served({"T2I_API_KEYS_FILE": str(path), "T2I_FAIR_SHARE": "1" if fair else "0",
                         "T2I_API_WORKERS": str(api_workers), "T2I_MAX_IN_FLIGHT": "100000",
                         "T2I_MAX_BATCH_SIZE": str(max_batch_size), "T2I_REQUEST_TIMEOUT_S": "600"})
        try:
            server.wait_ready(body, {"Authorization": f"Bearer {b_key}"})
            row = asyncio.run(measure(server.url, a_key, b_key, flood, requests, body))
        finally:
            server.stop()
    return {"mode": "fair share" if fair else "first come, first served", "api_workers": api_workers, **row}


def table(rows: list[dict[str, Any]], flood: int) -> str:
    lines = [f"B sends one request at a time; A keeps {flood} in flight (medians, seconds)",
             f"{'mode':<26} {'workers':>7} {'B alone':>8} {'B flood':>8} {'A flood':>8} {'B ratio':>8} {'B/A':>6}"]
    for r in rows:
        a = f"{r['a_flood_median_s']:.3f}" if r["a_flood_median_s"] is not None else "-"
        b_over_a = f"{r['b_over_a']:.2f}" if r["b_over_a"] is not None else "-"
        lines.append(f"{r['mode']:<26} {r['api_workers']:>7} {r['b_alone_median_s']:>8.3f} "
                     f"{r['b_flood_median_s']:>8.3f} {a:>8} {r['b_ratio']:>7.2f}x {b_over_a:>6}")
    return "\n".join(lines)


def main(flood: int = 32, requests: int = 40, api_workers: int = 1, fcfs: bool = False, size: int = 64,
         steps: int = 4, max_batch_size: int = 16) -> dict[str, Any]:
    body = {"prompt": "a lighthouse at dawn", "width": size, "height": size, "steps": steps}
    rows = [run_one(True, flood, requests, api_workers, body, max_batch_size)]
    if fcfs:
        rows.append(run_one(False, flood, requests, api_workers, body, max_batch_size))
    print(table(rows, flood))
    return {"flood": flood, "requests": requests, "body": body, "max_batch_size": max_batch_size, "rows": rows}
