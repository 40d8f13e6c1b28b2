"""Retention for BentoML's task store: finished results are deleted by age and by size.

BentoML 1.4.39 keeps every task's request and answer (the image, base64 in JSON) in a SQLite file
(``BentoMLContainer.result_store_file``, table ``result``) and deletes them only 24 h after they
finished: 449 finished 256 px tasks took the store from 6.5 to 53 MB, about 43 MB a minute under load.
``cap_task_store`` caps it, in the API process, every ``T2I_TASK_STORE_CHECK_S`` seconds:

- age: finished results (``completed_at`` set, status not ``in_progress``) older than
  ``T2I_TASK_RESULT_TTL_S`` are deleted. A result is deleted between ttl and ttl + one check
  interval after it finished; BentoML's own 24 h deletion still applies above that.
- size: when the store's data takes more than ``T2I_TASK_STORE_MAX_BYTES``, the oldest finished
  results (by ``completed_at``) are deleted until it takes at most ``LOW_WATER`` (90%) of it, so that
  the next checks under load do not each delete a sliver.

In-progress tasks (status ``in_progress``, or canceled while their work still runs: ``completed_at``
not set yet) are never deleted. A deleted task's ``status`` / ``get`` answer 404, as BentoML's own
24 h deletion does.

Only BentoML's own connection writes the store: a second writer connection left BentoML's aiosqlite
connection with a stale read snapshot, and every later write failed with "database is locked". So the
deletes go through BentoML's ``Sqlite3Store`` connection (``store._conn``): ``cap_task_store`` wraps
``Sqlite3Store.__aenter__`` (BentoML opens its store there, in ``ServiceAppFactory.create_instance``,
after the service's startup hooks, so no hook of ours can see it) to start the check loop beside the
store, and ``__aexit__`` to stop it before BentoML closes the connection. aiosqlite runs one statement
at a time, in order, so our statements interleave with BentoML's and never overlap them; deletes go
in chunks (``CHUNK_ROWS`` rows, ``CHUNK_BYTES`` bytes), each committed, so BentoML's calls wait at most
one chunk. Our reads close their cursors at once (a cursor left open holds a read snapshot, and keeps
checkpoints from resetting the WAL). We never roll back: on this shared connection a rollback could
undo a BentoML statement that it has not committed yet. (With several API workers, each worker's
store runs its own checks on its own BentoML connection, as each worker's BentoML writes already do.)

Size accounting (no VACUUM): the cap counts the pages that hold data, ``(page_count -
freelist_count) * page_size`` (rows, both blobs, indexes): exact, two header reads, where a sum of
blob lengths needs a pass over the table (blob lengths only pick how many of the oldest rows to
delete). Deleted rows' pages go on SQLite's free list; the file does not shrink, but later results
reuse those pages, so the file levels off near the cap plus what one check interval adds (the 43
MB/min above, for 60 s). The WAL is not counted (deleting cannot shrink it; with secure_delete,
below, deleting even writes to it): it is bounded on its own by ``PRAGMA journal_size_limit``
(``WAL_LIMIT_BYTES``, 16 MiB) on BentoML's connection, the one that checkpoints (SQLite truncates the
WAL to it when the log restarts). So the disk holds at most about cap + one interval's growth +
16 MiB. ``VACUUM`` was measured and not used: on a 268 MB file holding 134 MB of results it took
1.6-2.2 s, on BentoML's connection (every task submit / status / get waits meanwhile), needs room for
a copy of the live data, and the space would be taken again by the next results anyway.
``incremental_vacuum`` does nothing on BentoML's file (created with ``auto_vacuum=NONE``; changing
that needs a full VACUUM), and no other connection may write it.

An index ``t2i_result_completed_at`` on ``result (completed_at)`` (created through BentoML's
connection at the first check; BentoML recreates the file at each deployment, so it is normally built
on an empty table, 0.15-0.26 s on a full 289 MB one) makes the age query, the oldest-first order and
``min(completed_at)`` index lookups: without it each of them walked every result's overflow pages to
reach ``completed_at`` (the column after the image): 289 ms on a 289 MB store, 0.4-1 ms with it.

Cost, measured on a store of 2,600 results of 100 KB (289 MB; a busy 2-core
machine): a check with nothing to do is two ``stat`` calls and no SQL, 0.01-0.03 ms (the age query
runs only once the oldest finished result can have expired: ``_next_expiry``); deleting the oldest
1,306 results (135 MB) for the cap took 1.8-2.5 s in all, and 647 expired results 0.9-1.2 s, in
chunks (``CHUNK_ROWS`` / ``CHUNK_BYTES``) during which a BentoML ``get_status`` waited 60-100 ms at
worst. Most of that is Debian's SQLite build (``SQLITE_SECURE_DELETE``): deleted results are
overwritten with zeros, written through the WAL. ``PRAGMA secure_delete=FAST`` would cut it to
0.35 s (15-20 ms worst wait) but leave deleted images and requests (their headers, Authorization
included) readable in free pages until reused; that is left as the SQLite build chose.

Relies on BentoML 1.4.39 (``written_for``): ``Sqlite3Store.__aenter__`` opens the aiosqlite connection
``self._conn`` and ``__aexit__`` closes it; the ``result`` table (``task_id``, ``input``, ``status``,
``result``, ``completed_at``), ``completed_at`` written as a UTC ``datetime`` by Python's default
adapter (``"YYYY-MM-DD HH:MM:SS[.ffffff]+00:00"``, which sorts as text, as BentoML's own deletion
compares it).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from t2i_core.patches.version_guard import written_for

log = logging.getLogger("t2i.tasks")

WRITTEN_FOR = "1.4.39"
#: A result that may be deleted: its task's work has ended (BentoML set ``completed_at``).
FINISHED = "completed_at IS NOT NULL AND status != 'in_progress'"
#: A result's size, read from its record header (``length`` of a blob does not read the blob).
ROW_BYTES = "length(input) + ifnull(length(result), 0)"
#: Most rows and bytes per DELETE (one commit each): BentoML's calls wait at most one chunk.
CHUNK_ROWS = 100
CHUNK_BYTES = 4 * 1024 * 1024
#: Our index on ``result (completed_at)`` (see the module docstring).
INDEX = "t2i_result_completed_at"
#: Over the cap, delete down to this fraction of it.
LOW_WATER = 0.9
#: ``PRAGMA journal_size_limit`` on BentoML's connection (see the module docstring).
WAL_LIMIT_BYTES = 16 * 1024 * 1024
#: Passes of the size check in one run (page counts after a delete can differ from the blob lengths
#: that chose the rows).
SIZE_PASSES = 3
#: Seconds ``__aexit__`` waits for a running check to end before cancelling it.
STOP_WAIT_S = 10.0


@dataclass
class Sweep:
    """What one check did."""

    expired: int = 0  #: results deleted for their age
    evicted: int = 0  #: results deleted for the size cap
    used_before: int | None = None  #: bytes of data before the size check (None: not measured)
    used_after: int | None = None
    seconds: float = 0.0


def _utc_text(epoch_s: float) -> str:
    """A time as BentoML's ``completed_at`` is stored (Python's sqlite3 datetime adapter)."""
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc).isoformat(" ")


def _epoch(text: str) -> float:
    when = datetime.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


async def _rows(conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """All rows of a query, its cursor closed at once (an open cursor holds a read snapshot)."""
    async with conn.execute(sql, tuple(params)) as cursor:
        return list(await cursor.fetchall())


async def _delete(conn: Any, rows: Sequence[tuple[str, int]], stop: asyncio.Event | None = None) -> int:
    """Deletes these results (task_id, bytes) if they are still finished, in committed chunks of at
    most ``CHUNK_ROWS`` rows and ``CHUNK_BYTES`` bytes, until ``stop`` is set; returns how many."""
    deleted = 0
    chunk: list[str] = []
    size = 0
    for i, (task_id, row_bytes) in enumerate(rows):
        chunk.append(task_id)
        size += row_bytes or 0
        if len(chunk) < CHUNK_ROWS and size < CHUNK_BYTES and i + 1 < len(rows):
            continue
        marks = ",".join("?" * len(chunk))
        async with conn.execute(f"DELETE FROM result WHERE task_id IN ({marks}) AND {FINISHED}", chunk) as cursor:
            deleted += max(cursor.rowcount, 0)
        await conn.commit()
        chunk, size = [], 0
        if stop is not None and stop.is_set():
            break
    return deleted


class TaskStoreRetention:
    """The checks for one store (see the module docstring). ``ttl_s`` / ``max_bytes`` 0: that limit off."""

    def __init__(self, ttl_s: float, max_bytes: int, interval_s: float, clock: Callable[[], float] = time.time):
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.interval_s = interval_s
        self.clock = clock  # wall clock, as BentoML's completed_at
        # Before this time no finished result can be older than ttl_s: the age check is skipped.
        self._next_expiry = float("-inf")
        self._path: str | None = None
        self._stop: asyncio.Event | None = None  # set by run(): deleting stops after the current chunk
        self._warned_full = False  # warned that only in-progress tasks are left over the cap

    async def _prepare(self, conn: Any) -> str:
        if self._path is None:
            rows = await _rows(conn, "PRAGMA database_list")
            self._path = next((r[2] for r in rows if r[1] == "main"), "") or ""
            await _rows(conn, f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            async with conn.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON result (completed_at)"):
                pass
            await conn.commit()
        return self._path

    def _file_bytes(self) -> int:
        total = 0
        for path in (self._path, f"{self._path}-wal"):
            try:
                total += os.path.getsize(path) if path else 0
            except OSError:
                pass
        return total

    async def used_bytes(self, store: Any) -> int:
        """Bytes of the store's pages that hold data (rows, blobs, indexes; not the free pages)."""
        conn = store._conn
        await self._prepare(conn)
        (page_size,), = await _rows(conn, "PRAGMA page_size")
        (pages,), = await _rows(conn, "PRAGMA page_count")
        (free,), = await _rows(conn, "PRAGMA freelist_count")
        return (pages - free) * page_size

    async def expire(self, store: Any, now: float) -> int:
        """Deletes finished results older than ttl_s; returns how many."""
        conn = store._conn
        rows = await _rows(conn, f"SELECT task_id, {ROW_BYTES} FROM result WHERE {FINISHED} AND completed_at < ?",
                           (_utc_text(now - self.ttl_s),))
        deleted = await _delete(conn, rows, self._stop)
        (oldest,), = await _rows(conn, f"SELECT min(completed_at) FROM result WHERE {FINISHED}")
        try:
            # a result finishing from now on has completed_at >= now: it expires at now + ttl_s or later
            self._next_expiry = _epoch(oldest) + self.ttl_s if oldest else now + self.ttl_s
        except (TypeError, ValueError):
            self._next_expiry = float("-inf")  # unreadable time: check again next time
        return deleted

    async def evict(self, store: Any, sweep: Sweep) -> None:
        """Deletes the oldest finished results while the store uses more than max_bytes."""
        conn = store._conn
        target = int(self.max_bytes * LOW_WATER)
        for attempt in range(SIZE_PASSES):
            used = await self.used_bytes(store)
            if sweep.used_before is None:
                sweep.used_before = used
            sweep.used_after = used
            if used <= (self.max_bytes if attempt == 0 else target):
                self._warned_full = used > self.max_bytes and self._warned_full
                return
            rows = await _rows(
                conn,
                f"SELECT task_id, {ROW_BYTES} FROM result WHERE {FINISHED} "
                "ORDER BY completed_at, rowid",
            )
            if not rows:
                if not self._warned_full:  # once, until the store is under the cap again
                    self._warned_full = True
                    log.warning("task store: %.1f MB of data, over T2I_TASK_STORE_MAX_BYTES (%.1f MB), and no "
                                "finished result left to delete", used / 1e6, self.max_bytes / 1e6)
                return
            chosen: list[tuple[str, int]] = []
            freed = 0
            for task_id, size in rows:
                if freed >= used - target:
                    break
                chosen.append((task_id, size))
                freed += size or 0
            sweep.evicted += await _delete(conn, chosen, self._stop)
            if self._stop is not None and self._stop.is_set():
                break
        sweep.used_after = await self.used_bytes(store)

    async def check(self, store: Any, now: float | None = None) -> Sweep:
        """One check: the age limit, then the size cap. Cheap when there is nothing to do."""
        started = time.perf_counter()
        now = self.clock() if now is None else now
        await self._prepare(store._conn)
        sweep = Sweep()
        if self.ttl_s > 0 and now >= self._next_expiry:
            sweep.expired = await self.expire(store, now)
        # data pages are in the file or, not yet checkpointed, in the WAL: under the cap, nothing to measure
        if self.max_bytes > 0 and (not self._path or self._file_bytes() > self.max_bytes):
            await self.evict(store, sweep)
        else:
            self._warned_full = False
        sweep.seconds = time.perf_counter() - started
        if sweep.expired or sweep.evicted:
            done = []
            if sweep.expired:
                done.append(f"{sweep.expired} finished more than {self.ttl_s}s ago")
            if sweep.evicted:
                done.append(f"the {sweep.evicted} oldest over the size cap (data {(sweep.used_before or 0) / 1e6:.1f}"
                            f" -> {(sweep.used_after or 0) / 1e6:.1f} MB, cap {self.max_bytes / 1e6:.1f} MB)")
            log.info("task store: deleted the results of %s, in %.0f ms", " and ".join(done), sweep.seconds * 1e3)
        return sweep

    async def run(self, store: Any, stop: asyncio.Event) -> None:
        """Checks now, then every interval_s, until ``stop`` is set (a check then ends after its current
        chunk of deletes)."""
        self._stop = stop
        while not stop.is_set():
            try:
                await self.check(store)
            except Exception:  # the next check tries again; the store keeps working without us
                log.exception("task store retention check failed")
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass


_limits: dict[str, float] = {}


def cap_task_store(ttl_s: float, max_bytes: int, interval_s: float) -> bool:
    """Patches BentoML 1.4.39's ``Sqlite3Store`` so that every store it opens (the API process's task
    store) runs ``TaskStoreRetention(ttl_s, max_bytes, interval_s)`` on its own connection while it is
    open. Returns whether it is on: off when ``interval_s`` <= 0, when both limits are 0, or on another
    BentoML version (``written_for`` warns once). Calling it again changes the limits of stores opened
    afterwards.

    Relies on: ``Sqlite3Store.__aenter__`` opening ``self._conn`` (aiosqlite) and returning the store,
    ``__aexit__`` closing it, and the table described in the module docstring.
    """
    if interval_s <= 0 or (ttl_s <= 0 and max_bytes <= 0):
        return False
    if not written_for("bentoml", WRITTEN_FOR, "cap_task_store"):
        return False
    from _bentoml_impl.tasks.result import Sqlite3Store

    _limits.update(ttl_s=ttl_s, max_bytes=max_bytes, interval_s=interval_s)
    if getattr(Sqlite3Store.__aenter__, "_t2i_patched", False):
        return True
    original_enter = Sqlite3Store.__aenter__
    original_exit = Sqlite3Store.__aexit__

    async def __aenter__(self: Any) -> Any:
        store = await original_enter(self)
        retention = TaskStoreRetention(_limits["ttl_s"], int(_limits["max_bytes"]), _limits["interval_s"])
        stop = asyncio.Event()
        self._t2i_retention = (retention, stop, asyncio.create_task(retention.run(self, stop)))
        kept = f"{retention.ttl_s}s" if retention.ttl_s > 0 else "24 h (BentoML's limit)"
        cap = f"their data capped at {retention.max_bytes / 1e6:.1f} MB" if retention.max_bytes > 0 else "no size cap"
        log.info("task store: finished results kept %s, %s, checked every %ss", kept, cap, retention.interval_s)
        return store

    async def __aexit__(self: Any, *exc: Any) -> None:
        running = getattr(self, "_t2i_retention", None)
        self._t2i_retention = None
        try:
            if running is not None:
                _, stop, task = running
                stop.set()
                try:
                    await asyncio.wait_for(task, STOP_WAIT_S)  # a check ends after its current chunk and commit
                except asyncio.TimeoutError:
                    log.warning("task store retention did not stop within %ss; cancelled", STOP_WAIT_S)
                except Exception:
                    log.exception("task store retention ended with an error")
        finally:
            await original_exit(self, *exc)

    __aenter__._t2i_patched = True  # type: ignore[attr-defined]
    __aexit__._t2i_patched = True  # type: ignore[attr-defined]
    Sqlite3Store.__aenter__ = __aenter__  # type: ignore[method-assign]
    Sqlite3Store.__aexit__ = __aexit__  # type: ignore[method-assign]
    return True
