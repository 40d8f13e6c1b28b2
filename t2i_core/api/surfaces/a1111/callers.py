"""What the server keeps of each A1111 caller: its latest request, for ``/sdapi/v1/progress``,
``interrupt`` and ``skip``, and the checkpoint it chose with ``POST options``.

The A1111 API names no job in those calls: they act on "the current one", which for a shared server
is the caller's latest (its API key, else its address). Likewise ``POST options`` sets "the" model: a
caller with a key sets its own (its later requests use it; ``GET options`` shows it), so one client
never switches another's model. A later call may reach another API worker (``T2I_API_WORKERS``) or
another replica than the one that took the earlier one, so both are kept in the shared state
(``T2I_STATE``). API keys are kept as hashes, never as given.
"""

from __future__ import annotations

import json
import time

from t2i_core.api.callers import caller_id  # noqa: F401 - where the A1111 routes find it
from t2i_core.state.aio import call
from t2i_core.state.store import StateStore

#: the callers whose checkpoint choice is remembered (the latest choosers)
CALLERS_KEPT = 1024
#: seconds a caller's latest request is remembered (progress polls come while it runs)
LATEST_KEPT_S = 3600.0
CHECKPOINTS = "a1111:checkpoints"


class CallerJobs:
    """Each caller's latest request (``a1111:latest:<caller>``) and chosen checkpoint
    (``a1111:checkpoint:<caller>``, the latest ``CALLERS_KEPT`` choosers), in the shared state."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    async def remember(self, caller: str, request_id: str) -> None:
        await call(self.state, self.state.put, f"a1111:latest:{caller}",
                   json.dumps([request_id, time.time()]).encode(), ttl_s=LATEST_KEPT_S)

    async def restore(self, caller: str, request_id: str, previous: tuple[str, float] | None) -> None:
        """``request_id`` failed before it ran: the caller's job is ``previous`` again (e.g. one still
        running), unless the caller sent another request meanwhile."""

        def change(raw: bytes | None) -> bytes | None:
            if raw is None or json.loads(raw)[0] != request_id:
                return None
            return json.dumps(list(previous) if previous else ["", 0.0]).encode()

        await call(self.state, self.state.update, f"a1111:latest:{caller}", change)

    async def latest(self, caller: str) -> tuple[str, float] | None:
        """The caller's latest request id and when it started (epoch seconds)."""
        raw = await call(self.state, self.state.get, f"a1111:latest:{caller}")
        if raw is None:
            return None
        request_id, started = json.loads(raw)
        return (request_id, float(started)) if request_id else None

    async def choose_checkpoint(self, caller: str, model_id: str) -> None:
        await call(self.state, self._choose, caller, model_id)

    def _choose(self, caller: str, model_id: str) -> None:
        self.state.put(f"a1111:checkpoint:{caller}", model_id.encode())
        self.state.index_add(CHECKPOINTS, caller, time.time())
        extra = self.state.index_count(CHECKPOINTS) - CALLERS_KEPT
        if extra > 0:
            oldest = [c for c, _ in self.state.index_range(CHECKPOINTS, limit=extra, newest_first=False)]
            self.state.index_remove(CHECKPOINTS, *oldest)
            self.state.delete(*(f"a1111:checkpoint:{c}" for c in oldest))

    async def checkpoint(self, caller: str) -> str | None:
        """The model the caller chose with ``POST options``; None: the server's default."""
        raw = await call(self.state, self.state.get, f"a1111:checkpoint:{caller}")
        return raw.decode() if raw is not None else None
