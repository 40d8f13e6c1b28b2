"""What the engine's request board costs, and how fast a cancel reaches another worker
(``python -m t2i_core bench-board [--redis redis://host:port/db]``).

- per denoising step: a step of a batch of ``batch`` requests writes the batch's progress, reads its
  live-preview wishes and checks each request's cancel (a set lookup: cancels are pushed), timed on
  each backend while a second process writes cancels and reads progress beside it (another worker);
- cancel latency: a second process (another engine worker, or another replica on Redis) cancels a
  request; the time until this process's board sees it (``is_cancelled``), from the cancel's own clock.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from t2i_core.engine.request_board import RequestBoard
from t2i_core.state.memory import MemoryState
from t2i_core.state.open import open_state

NEIGHBOUR = """
import sys, time
from t2i_core.engine.request_board import RequestBoard
from t2i_core.state.open import open_state
board = RequestBoard(open_state(sys.argv[1]), listen=False)
end = time.time() + float(sys.argv[2])
i = 0
while time.time() < end:
    board.cancel([f"elsewhere-{i}"]); board.progress([f"r{i % 8}"]); i += 1
    time.sleep(0.002)
"""

CANCELLER = """
import sys, time
from t2i_core.engine.request_board import RequestBoard
from t2i_core.state.open import open_state
board = RequestBoard(open_state(sys.argv[1]), listen=False)
for i in range(int(sys.argv[2])):
    line = sys.stdin.readline()
    sent = time.time()
    board.cancel([f"latency-{i}"])
    print(sent, flush=True)
"""


def step_times(board: RequestBoard, batch: int, steps: int) -> list[float]:
    ids = [f"r{i}" for i in range(batch)]
    board.set_progress(ids, state="running", step=0, steps=None)
    times = []
    for step in range(steps):
        started = time.perf_counter()
        board.set_progress(ids, step=step + 1, steps=steps)
        any(board.is_cancelled(rid) for rid in ids)
        board.take_wanted(ids)
        times.append(time.perf_counter() - started)
    return times


def cancel_latencies(spec: str, rounds: int) -> list[float]:
    """Seconds from a cancel in another process to this process's board seeing it."""
    board = RequestBoard(open_state(spec))
    other = subprocess.Popen([sys.executable, "-c", CANCELLER, spec, str(rounds)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    latencies = []
    try:
        time.sleep(1.0)  # both listening
        assert other.stdin is not None and other.stdout is not None
        for i in range(rounds):
            other.stdin.write("go\n")
            other.stdin.flush()
            sent = float(other.stdout.readline())
            while not board.is_cancelled(f"latency-{i}"):
                time.sleep(0.0002)
            latencies.append(time.time() - sent)
            time.sleep(0.02)
    finally:
        other.kill()
        board.close()
    return latencies


def _row(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    return (f"  {name:36s} median {1e3 * statistics.median(times):8.3f} ms   "
            f"p99 {1e3 * ordered[int(0.99 * (len(ordered) - 1))]:8.3f} ms")


def main(batch: int = 8, steps: int = 2000, rounds: int = 100, redis: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        specs = [("sqlite (workers of one server)", f"sqlite:{Path(folder) / 'state.sqlite'}")]
        if redis:
            specs.append(("redis (replicas)", redis))
        rows = [("memory (one worker)", step_times(RequestBoard(MemoryState(), listen=False), batch, steps))]
        for name, spec in specs:
            other = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, spec, "120"])
            try:
                time.sleep(1.0)
                rows.append((name, step_times(RequestBoard(open_state(spec), listen=False), batch, steps)))
            finally:
                other.kill()
        print(f"request board per denoising step, batch {batch}, {steps} steps, another worker writing beside:")
        for name, times in rows:
            print(_row(name, times))
            out[f"step {name}"] = times
        print(f"cancel seen by another worker's board ({rounds} cancels):")
        for name, spec in specs:
            latencies = cancel_latencies(spec, rounds)
            print(_row(name, latencies))
            out[f"cancel {name}"] = latencies
    return out
