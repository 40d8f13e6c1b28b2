"""What the server keeps of each A1111 caller: its latest request, for ``/sdapi/v1/progress``,
``interrupt`` and ``skip``, and the checkpoint it chose with ``POST options``.

The A1111 API names no job in those calls: they act on "the current one", which for a shared server
is the caller's latest (its API key, else its address). Likewise ``POST options`` sets "the" model: a
caller with a key sets its own (its later requests use it; ``GET options`` shows it), so one client
never switches another's model. With one API worker that is kept in memory; with several
(``T2I_API_WORKERS``), a later call may reach another worker than the one that took the earlier one,
so the workers share a small SQLite file in the server's run folder. API keys are kept as hashes,
never as given.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict

from t2i_core.api.callers import caller_id  # noqa: F401 - where the A1111 routes find it
from t2i_core.engine.shared_db import SharedDB

#: the callers whose latest request is remembered
CALLERS_KEPT = 1024


class CallerJobs:
    """In this process (one API worker)."""

    def __init__(self) -> None:
        self._latest: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._checkpoints: OrderedDict[str, str] = OrderedDict()

    async def remember(self, caller: str, request_id: str) -> None:
        self._latest.pop(caller, None)
        self._latest[caller] = (request_id, time.time())
        while len(self._latest) > CALLERS_KEPT:
            self._latest.popitem(last=False)

    async def restore(self, caller: str, request_id: str, previous: tuple[str, float] | None) -> None:
        """``request_id`` failed before it ran: the caller's job is ``previous`` again (e.g. one still
        running), unless the caller sent another request meanwhile."""
        if self._latest.get(caller, ("",))[0] != request_id:
            return
        if previous is None:
            del self._latest[caller]
        else:
            self._latest[caller] = previous

    async def latest(self, caller: str) -> tuple[str, float] | None:
        """The caller's latest request id and when it started (epoch seconds)."""
        return self._latest.get(caller)

    async def choose_checkpoint(self, caller: str, model_id: str) -> None:
        self._checkpoints.pop(caller, None)
        self._checkpoints[caller] = model_id
        while len(self._checkpoints) > CALLERS_KEPT:
            self._checkpoints.popitem(last=False)

    async def checkpoint(self, caller: str) -> str | None:
        """The model the caller chose with ``POST options``; None: the server's default."""
        return self._checkpoints.get(caller)


SCHEMA = """
CREATE TABLE IF NOT EXISTS callers (caller TEXT PRIMARY KEY, request_id TEXT NOT NULL, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (caller TEXT PRIMARY KEY, model TEXT NOT NULL, chosen REAL NOT NULL)
"""


class SharedCallerJobs(CallerJobs):
    """In a file that the API workers of one server share (its reads and writes run off the event loop)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.db = SharedDB(path)
        self.db.executescript(SCHEMA)

    async def remember(self, caller: str, request_id: str) -> None:
        await asyncio.to_thread(self._write, caller, request_id)

    def _write(self, caller: str, request_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO callers VALUES (?, ?, ?)", (caller, request_id, time.time()))
            conn.execute("DELETE FROM callers WHERE caller NOT IN (SELECT caller FROM callers ORDER BY started DESC "
                         "LIMIT ?)", (CALLERS_KEPT,))

    async def restore(self, caller: str, request_id: str, previous: tuple[str, float] | None) -> None:
        await asyncio.to_thread(self._restore, caller, request_id, previous)

    def _restore(self, caller: str, request_id: str, previous: tuple[str, float] | None) -> None:
        with self.db.write() as conn:
            if previous is None:
                conn.execute("DELETE FROM callers WHERE caller = ? AND request_id = ?", (caller, request_id))
            else:
                conn.execute("UPDATE callers SET request_id = ?, started = ? WHERE caller = ? AND request_id = ?",
                             (*previous, caller, request_id))

    async def latest(self, caller: str) -> tuple[str, float] | None:
        rows = await asyncio.to_thread(self.db.read, "SELECT request_id, started FROM callers WHERE caller = ?",
                                       (caller,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def choose_checkpoint(self, caller: str, model_id: str) -> None:
        await asyncio.to_thread(self._choose, caller, model_id)

    def _choose(self, caller: str, model_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (caller, model_id, time.time()))
            conn.execute("DELETE FROM checkpoints WHERE caller NOT IN (SELECT caller FROM checkpoints ORDER BY chosen "
                         "DESC LIMIT ?)", (CALLERS_KEPT,))

    async def checkpoint(self, caller: str) -> str | None:
        rows = await asyncio.to_thread(self.db.read, "SELECT model FROM checkpoints WHERE caller = ?", (caller,))
        return rows[0][0] if rows else None


def open_caller_jobs(api_workers: int, run_dir: str) -> CallerJobs:
    """In memory for one API worker; the run folder's file for several."""
    return CallerJobs() if api_workers <= 1 else SharedCallerJobs(os.path.join(run_dir, "a1111-callers.sqlite"))
