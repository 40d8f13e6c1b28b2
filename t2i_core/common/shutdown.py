"""Drain before shutting down: on SIGTERM a process keeps serving until it has been idle for a
moment, then starts its server's own graceful shutdown. Both processes use it:

- the engine: BentoML signals the API and the engine at the same time, and requests the API accepted
  still have to reach the engine (requests waiting to be merged into the next engine call): if the
  engine closed its socket at once, they failed;
- the API: uvicorn stopped accepting at once, while BentoML's supervisor kept the listening socket
  open, so a request sent during the drain waited in the backlog and was reset when the process
  exited (a ``/generate`` 0.5 s after SIGTERM: reset after 5.8 s; ``/readyz`` timed out). Draining,
  the API keeps accepting and answers new generation requests 503 with ``Connection: close`` and
  ``/readyz`` 503 (``DRAINING``, read by the guard middleware), while its requests in flight finish.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable

log = logging.getLogger("t2i.shutdown")
#: set on this process's first SIGTERM (``drain_on_sigterm``)
DRAINING = threading.Event()


def drain_on_sigterm(
    idle_since: Callable[[], float | None], idle_s: float = 1.0, max_s: float = 120.0, who: str = "the engine"
) -> None:
    """Install (in the main thread) a SIGTERM handler that waits until ``idle_since()`` (the monotonic
    time the process last became idle, None while busy) is ``idle_s`` old, then calls the previous
    handler. A second SIGTERM, or ``max_s``, shuts down at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    draining = DRAINING

    def hand_over(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)

    def wait_then_hand_over(signum: int) -> None:
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            since = idle_since()
            if since is not None and time.monotonic() - since >= idle_s:
                break
            time.sleep(0.05)
        log.info("%s drained; shutting down", who)
        hand_over(signum, None)

    def on_sigterm(signum: int, frame: Any) -> None:
        if draining.is_set():
            hand_over(signum, frame)
            return
        draining.set()
        log.info("SIGTERM: %s finishes what it has accepted, then shuts down", who)
        threading.Thread(target=wait_then_hand_over, args=(signum,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
