"""SIGHUP to ``bentoml serve`` reloads the keys file instead of restarting every worker.

BentoML's process manager is circus (the ``kantoku`` distribution, 0.18.3), whose arbiter answers
SIGHUP with a graceful reload: every watcher's processes replaced, the engine's included (its models
loaded again, the requests it held lost). A SIGHUP to a server means "read your configuration
again" (the keys file, ``T2I_API_KEYS_FILE``): ``forward_sighup`` makes the arbiter pass the signal on
to its workers instead, where the API workers reload their keys and the engine workers ignore it
(``t2i_core/common/hangup.py``). A SIGHUP sent to the whole process group reaches them directly too
(a second reload is harmless).

Upstream: circus's own behaviour, documented; nothing to fix there. Applied only on kantoku
``WRITTEN_FOR``; elsewhere it warns once and the arbiter restarts the workers on SIGHUP (then reload
through ``POST /admin/keys/reload``).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from t2i_core.common.version_guard import written_for

WRITTEN_FOR = "0.18.3"
log = logging.getLogger("t2i.patches")


def forward_sighup() -> None:
    if not written_for("kantoku", WRITTEN_FOR, "forward_sighup"):
        return
    from circus.sighandler import SysHandler

    if getattr(SysHandler.handle_hup, "_t2i", False):
        return

    def handle_hup(self: Any) -> None:
        arbiter = getattr(self.controller, "arbiter", None)
        for watcher in getattr(arbiter, "watchers", []):
            for pid in watcher.get_active_pids():
                try:
                    os.kill(pid, signal.SIGHUP)
                except OSError:
                    pass
        log.warning("SIGHUP passed on to the workers (the API workers read the keys file again)")

    handle_hup._t2i = True  # type: ignore[attr-defined]
    SysHandler.handle_hup = handle_hup
