"""SIGHUP in a worker: the API workers read the keys file again (``KeyRing.reload``), the engine
workers ignore it (a SIGHUP to the server's process group must not stop them: its default action
ends a process). The server's main process passes a SIGHUP on to its workers
(``t2i_core/patches/circus.py``)."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable


def on_sighup(action: Callable[[], None]) -> None:
    """Run ``action`` (it must not block: start a thread) on SIGHUP; from the main thread only."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
        def handler(signum: int, frame: Any) -> None:
            action()

        signal.signal(signal.SIGHUP, handler)


def ignore_sighup() -> None:
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
