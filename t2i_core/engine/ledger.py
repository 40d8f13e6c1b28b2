"""Where a request's cancellation, progress and partial images are kept: the engine's ledger.

One engine worker keeps them in memory (``LocalLedger``). Several engine workers of one server (one
per GPU, ``T2I_ENGINE_WORKERS``) share them (``SharedLedger``, a SQLite file in the server's run
folder): BentoML sends a cancel, a progress or a preview call to any engine worker, not to the one
running the request, so each call must see what every worker wrote. Measured on a 2-core CPU
(``python -m t2i_core bench-ledger``, batch of 8, another process writing beside it): a step's ledger
work (progress written, cancels and preview wishes read) takes 0.16 ms at the median and 6.8 ms at the
99th percentile (waits for the other writer's lock), against 0.006 ms in memory; a denoising step
takes tens of milliseconds (tiny model, GPU) to seconds (real models on a CPU).

Cancellations are read from the shared file at most every ``POLL_S`` by a worker (its denoising
hooks ask far more often), and at the start of every batch.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Iterable

from t2i_core.common.schemas import Preview
from t2i_core.engine.preview_wishes import WISHES_KEPT, WISHES_PER_CALLER, PreviewWishes
from t2i_core.engine.previews import KEPT, PER_CALLER, PER_REQUEST, PreviewStore
from t2i_core.engine.shared_db import SharedDB

#: progress entries kept (the most recent)
PROGRESS_KEPT = 10_000
#: seconds a cancellation is remembered (a request is never queued longer than its timeout)
CANCEL_KEPT_S = 600.0
#: seconds between two reads of the shared cancellations by one worker
POLL_S = 0.05
QUEUED = {"state": "queued", "step": 0, "steps": None}
#: a request cancelled before any worker started it
CANCELLED_UNSTARTED = {"state": "cancelled", "step": 0, "steps": None}
#: the states of a request that will not run again: its live-preview wishes go, and none is kept
FINISHED = ("done", "cancelled")
#: seconds a live-preview wish (and a request's previews) is kept by default: a request's timeout
KEEP_S = 120.0


class LocalLedger:
    """The ledger of a single engine worker, in memory. ``keep_s``: the request timeout (seconds), how
    long a live-preview wish and a request's previews are kept at most."""

    shared = False

    def __init__(self, keep_s: float = KEEP_S) -> None:
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._cancelled: dict[str, float] = {}
        #: request id -> {"state": running|done|cancelled, "step": k, "steps": n}
        self._progress: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._wanted = PreviewWishes(keep_s)
        self._previews = PreviewStore(keep_s)

    # cancellation
    def cancel(self, request_ids: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for rid in request_ids:
                if rid:
                    self._cancelled[rid] = now
                    self._wanted.drop([rid])
            for rid in [r for r, t in self._cancelled.items() if now - t > CANCEL_KEPT_S]:
                del self._cancelled[rid]

    def is_cancelled(self, request_id: str) -> bool:
        return request_id in self._cancelled

    def refresh(self) -> None:
        """Read what other workers wrote now (a batch is about to start)."""

    # progress
    def set_progress(self, request_ids: Iterable[str], **fields: Any) -> None:
        with self._lock:
            for rid in request_ids:
                if not rid:
                    continue
                entry = self._progress.pop(rid, None) or {"state": "running", "step": 0, "steps": None}
                entry.update(fields)
                self._progress[rid] = entry
                if entry["state"] in FINISHED:
                    self._wanted.drop([rid])
            while len(self._progress) > PROGRESS_KEPT:
                self._progress.popitem(last=False)

    def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {rid: dict(self._progress.get(rid) or (CANCELLED_UNSTARTED if rid in self._cancelled else QUEUED))
                    for rid in request_ids}

    # partial images
    def want_preview(self, request_id: str, caller: str = "") -> None:
        """Decode ``request_id``'s latents after its next step, for ``caller``; nothing when the
        request has finished or was cancelled (see t2i_core/engine/preview_wishes.py)."""
        with self._lock:
            if request_id in self._cancelled or self._progress.get(request_id, {}).get("state") in FINISHED:
                return
            self._wanted.add(request_id, caller, time.time())

    def take_wanted(self, request_ids: list[str]) -> dict[str, str]:
        """Which of ``request_ids`` asked for a live preview, with the caller that asked (each wish is
        taken once)."""
        with self._lock:
            return self._wanted.take(request_ids, time.time())

    def add_preview(self, request_id: str, preview: Preview, caller: str = "") -> None:
        self._previews.add(request_id, preview, caller)

    def kept(self) -> dict[str, int]:
        """How many live-preview wishes and requests with previews are kept now."""
        with self._lock:
            wishes = self._wanted.count(time.time())
        return {"preview_wishes": wishes, "previews_kept": self._previews.count()}

    def previews(self, request_id: str, since: int = 0) -> list[Preview]:
        return self._previews.take(request_id, since)


SCHEMA = """
CREATE TABLE IF NOT EXISTS cancels (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS cancels_request ON cancels (request_id);
CREATE TABLE IF NOT EXISTS progress (request_id TEXT PRIMARY KEY, state TEXT NOT NULL, step INTEGER NOT NULL,
    steps INTEGER, worker INTEGER, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS progress_at ON progress (at);
CREATE TABLE IF NOT EXISTS wanted (request_id TEXT PRIMARY KEY, caller TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS wanted_caller ON wanted (caller);
CREATE INDEX IF NOT EXISTS wanted_expires ON wanted (expires);
CREATE TABLE IF NOT EXISTS previews (request_id TEXT NOT NULL, idx INTEGER NOT NULL, step INTEGER NOT NULL,
    steps INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, pixels BLOB NOT NULL, at REAL NOT NULL,
    caller TEXT NOT NULL, PRIMARY KEY (request_id, idx));
CREATE INDEX IF NOT EXISTS previews_at ON previews (at);
CREATE INDEX IF NOT EXISTS previews_caller ON previews (caller);
"""


class SharedLedger(LocalLedger):
    """The ledger of several engine workers: every write goes to the shared file; cancellations are
    also kept in memory, refreshed from the file (see the module docstring)."""

    shared = True

    def __init__(self, db: SharedDB, worker: int, keep_s: float = KEEP_S):
        super().__init__(keep_s)
        self.db = db
        self.worker = worker
        db.executescript(SCHEMA)
        self._cancel_seq = 0
        self._polled = 0.0
        self._writes = 0

    def cancel(self, request_ids: Iterable[str]) -> None:
        ids = [rid for rid in request_ids if rid]
        super().cancel(ids)
        now = time.time()
        with self.db.write() as conn:
            conn.executemany("INSERT INTO cancels (request_id, at) VALUES (?, ?)", [(rid, now) for rid in ids])
            conn.execute("DELETE FROM cancels WHERE at < ?", (now - CANCEL_KEPT_S,))
            conn.executemany("DELETE FROM wanted WHERE request_id = ?", [(rid,) for rid in ids])

    def is_cancelled(self, request_id: str) -> bool:
        if request_id in self._cancelled:
            return True
        if time.monotonic() - self._polled >= POLL_S:
            self.refresh()
        return request_id in self._cancelled

    def refresh(self) -> None:
        self._polled = time.monotonic()
        rows = self.db.read("SELECT seq, request_id FROM cancels WHERE seq > ?", (self._cancel_seq,))
        if rows:
            self._cancel_seq = rows[-1][0]
            super().cancel(rid for _, rid in rows)

    def set_progress(self, request_ids: Iterable[str], **fields: Any) -> None:
        ids = [rid for rid in request_ids if rid]
        if not ids:
            return
        now = time.time()
        self._writes += 1
        with self.db.write() as conn:
            if set(fields) >= {"state", "step", "steps"}:
                conn.executemany(
                    "INSERT OR REPLACE INTO progress VALUES (?, ?, ?, ?, ?, ?)",
                    [(rid, fields["state"], fields["step"], fields["steps"], self.worker, now) for rid in ids])
            else:  # update what is given of an entry (made "running" at step 0 when new)
                conn.executemany(
                    "INSERT OR IGNORE INTO progress VALUES (?, 'running', 0, NULL, ?, ?)", [(rid, self.worker, now) for rid in ids])
                sets = ", ".join(f"{name} = ?" for name in fields)
                conn.executemany(f"UPDATE progress SET {sets}, at = ? WHERE request_id = ?",
                                 [(*fields.values(), now, rid) for rid in ids])
            if fields.get("state") in FINISHED:
                conn.executemany("DELETE FROM wanted WHERE request_id = ?", [(rid,) for rid in ids])
            if self._writes % 256 == 0:  # keep the most recent PROGRESS_KEPT
                conn.execute("DELETE FROM progress WHERE request_id IN (SELECT request_id FROM progress "
                             "ORDER BY at DESC LIMIT -1 OFFSET ?)", (PROGRESS_KEPT,))

    def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        marks = ",".join("?" * len(request_ids))
        rows = self.db.read(f"SELECT request_id, state, step, steps FROM progress WHERE request_id IN ({marks})",
                            tuple(request_ids)) if request_ids else []
        found = {rid: {"state": state, "step": step, "steps": steps} for rid, state, step, steps in rows}
        unstarted = [rid for rid in request_ids if rid not in found]
        if unstarted:
            marks = ",".join("?" * len(unstarted))
            cancelled = {r[0] for r in self.db.read(f"SELECT request_id FROM cancels WHERE request_id IN ({marks})",
                                                    tuple(unstarted))}
            found.update({rid: dict(CANCELLED_UNSTARTED) for rid in cancelled})
        return {rid: found.get(rid) or dict(QUEUED) for rid in request_ids}

    def want_preview(self, request_id: str, caller: str = "") -> None:
        now = time.time()
        with self.db.write() as conn:
            finished = conn.execute(
                "SELECT 1 FROM progress WHERE request_id = ? AND state IN (?, ?) UNION ALL "
                "SELECT 1 FROM cancels WHERE request_id = ? LIMIT 1", (request_id, *FINISHED, request_id)).fetchone()
            if finished:
                return
            conn.execute("DELETE FROM wanted WHERE expires <= ?", (now,))
            # a new row (the newest rowid): the rowid orders the wishes from oldest to newest
            conn.execute("INSERT OR REPLACE INTO wanted VALUES (?, ?, ?)", (request_id, caller, now + self.keep_s))
            conn.execute("DELETE FROM wanted WHERE caller = ? AND rowid <= (SELECT rowid FROM wanted WHERE caller = ? "
                         "ORDER BY rowid DESC LIMIT 1 OFFSET ?)", (caller, caller, WISHES_PER_CALLER))
            conn.execute("DELETE FROM wanted WHERE rowid <= (SELECT rowid FROM wanted ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                         (WISHES_KEPT,))

    def take_wanted(self, request_ids: list[str]) -> dict[str, str]:
        ids = [rid for rid in request_ids if rid]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.db.write() as conn:
            found = dict(conn.execute(f"SELECT request_id, caller FROM wanted WHERE request_id IN ({marks}) AND expires > ?",
                                      (*ids, time.time())).fetchall())
            if found:
                conn.executemany("DELETE FROM wanted WHERE request_id = ?", [(rid,) for rid in found])
        return found

    def add_preview(self, request_id: str, preview: Preview, caller: str = "") -> None:
        now = time.time()
        with self.db.write() as conn:
            made = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM previews WHERE request_id = ?",
                                (request_id,)).fetchone()[0]
            conn.execute("INSERT INTO previews VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (request_id, made, preview.step, preview.steps, preview.width, preview.height, preview.pixels,
                          now, caller))
            conn.execute("DELETE FROM previews WHERE request_id = ? AND idx <= ?", (request_id, made - PER_REQUEST))
            conn.execute("DELETE FROM previews WHERE at <= ?", (now - self.keep_s,))
            if caller:
                conn.execute("DELETE FROM previews WHERE caller = ? AND request_id NOT IN (SELECT request_id FROM previews "
                             "WHERE caller = ? GROUP BY request_id ORDER BY MAX(at) DESC LIMIT ?)",
                             (caller, caller, PER_CALLER))
            conn.execute("DELETE FROM previews WHERE request_id NOT IN (SELECT request_id FROM previews "
                         "GROUP BY request_id ORDER BY MAX(at) DESC LIMIT ?)", (KEPT,))

    def previews(self, request_id: str, since: int = 0) -> list[Preview]:
        rows = self.db.read("SELECT idx, step, steps, width, height, pixels FROM previews WHERE request_id = ? "
                            "AND idx >= ? AND at > ? ORDER BY idx", (request_id, since, time.time() - self.keep_s))
        return [Preview(index=i, step=s, steps=n, width=w, height=h, pixels=bytes(p)) for i, s, n, w, h, p in rows]

    def kept(self) -> dict[str, int]:
        now = time.time()
        wishes = self.db.read("SELECT COUNT(*) FROM wanted WHERE expires > ?", (now,))[0][0]
        previews = self.db.read("SELECT COUNT(DISTINCT request_id) FROM previews WHERE at > ?", (now - self.keep_s,))[0][0]
        return {"preview_wishes": wishes, "previews_kept": previews}
