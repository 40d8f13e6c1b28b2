"""What the engine workers' shared ledger costs per denoising step (``python -m t2i_core bench-ledger``).

A step of a batch of ``batch`` requests does, in the engine: one progress write for the batch, one read
of the preview wishes, and a cancellation check per request (a read of the shared file at most every
``POLL_S``, here forced each step: the worst case). Timed for the in-memory ledger of one worker and
the shared one of several, on a file in a fresh folder, while a second process writes cancels and
reads progress (another worker answering calls).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from t2i_core.engine.ledger import LocalLedger, SharedLedger
from t2i_core.engine.shared_db import SharedDB

NEIGHBOUR = """
import sys, time
from t2i_core.engine.ledger import SharedLedger
from t2i_core.engine.shared_db import SharedDB
ledger = SharedLedger(SharedDB(sys.argv[1]), worker=2)
end = time.time() + float(sys.argv[2])
i = 0
while time.time() < end:
    ledger.cancel([f"elsewhere-{i}"]); ledger.progress([f"r{i % 8}"]); i += 1
    time.sleep(0.002)
"""


def step_times(ledger: LocalLedger, batch: int, steps: int) -> list[float]:
    ids = [f"r{i}" for i in range(batch)]
    ledger.set_progress(ids, state="running", step=0, steps=None)
    times = []
    for step in range(steps):
        started = time.perf_counter()
        ledger.set_progress(ids, step=step + 1, steps=steps)
        ledger.refresh()
        any(ledger.is_cancelled(rid) for rid in ids)
        ledger.take_wanted(ids)
        times.append(time.perf_counter() - started)
    return times


def main(batch: int = 8, steps: int = 2000) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "engine.sqlite")
        shared = SharedLedger(SharedDB(path), worker=1)
        other = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, path, "60"])
        try:
            time.sleep(1.0)
            rows = [("in memory (one worker)", step_times(LocalLedger(), batch, steps)),
                    ("shared file (several workers)", step_times(shared, batch, steps))]
        finally:
            other.kill()
    print(f"ledger cost per denoising step, batch {batch}, {steps} steps (median, p99):")
    for name, times in rows:
        ordered = sorted(times)
        print(f"  {name:32s} {1e6 * statistics.median(times):8.1f} us {1e6 * ordered[int(0.99 * len(ordered))]:8.1f} us")
