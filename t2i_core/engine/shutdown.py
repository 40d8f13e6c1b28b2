"""Drain before shutting down: on SIGTERM the engine keeps serving until it has been idle for a
moment, then starts its server's own graceful shutdown.

BentoML signals the API and the engine at the same time. The API stops accepting connections and
finishes its in-flight requests, but some of those still have to reach the engine (requests waiting
to be merged into the next engine call): if the engine closed its socket at once, they failed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable

log = logging.getLogger("t2i.shutdown")


def drain_on_sigterm(idle_since: Callable[[], float | None], idle_s: float = 1.0, max_s: float = 120.0) -> None:
    """Install (in the main thread) a SIGTERM handler that waits until ``idle_since()`` (the monotonic
    time the engine last became idle, None while busy) is ``idle_s`` old, then calls the previous
    handler. A second SIGTERM, or ``max_s``, shuts down at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    draining = threading.Event()

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
        log.info("engine drained; shutting down")
        hand_over(signum, None)

    def on_sigterm(signum: int, frame: Any) -> None:
        if draining.is_set():
            hand_over(signum, frame)
            return
        draining.set()
        log.info("SIGTERM: the engine finishes what reaches it, then shuts down")
        threading.Thread(target=wait_then_hand_over, args=(signum,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
