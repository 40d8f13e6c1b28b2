"""What the engine keeps about each request it runs, in the shared state (``T2I_STATE``): whether it
was cancelled, where it is (progress), the live previews asked for and the partial images made.

BentoML sends a cancel, a progress or a preview call to any engine worker, not to the one running the
request (and with several replicas the API of one server may take the cancel of a task that another
runs), so each must see what every worker wrote: one engine worker keeps it in memory, several share a
SQLite file of the server's run folder, replicas share Redis. The same code on each backend.

Cancels are pushed: a cancel writes ``cancel:<id>`` (kept ``CANCEL_KEPT_S``) and publishes the id;
each engine worker listens (a thread) and keeps the cancelled ids in memory, so the check at every
denoising step is a set lookup. A worker that was away when a cancel was published (Redis restarting)
still finds it: the ids of a batch are looked up when the batch starts.

Live-preview wishes (the task progress route's ``preview=1``, A1111's progress) are kept only while
their request can still run: a wish expires ``keep_s`` (the request timeout) after it was made and
goes when its request finishes or is cancelled (none is kept for one that has); one per request, at
most ``WISHES_PER_CALLER`` per caller (the API key's hash or the client's address: one caller's flood
of stale wishes evicts only its own oldest) and ``WISHES_KEPT`` in all (the oldest go first). Partial
images: the latest ``PER_REQUEST`` of a request, the latest ``PER_CALLER`` requests of a caller whose
wishes made them, the latest ``KEPT`` requests in all, each for ``keep_s``.

| key                        | what                                   | lives |
| -------------------------- | -------------------------------------- | ----- |
| ``cancel:<id>``            | the request was cancelled              | ``CANCEL_KEPT_S`` |
| ``progress:<id>``          | state, step, steps                     | ``PROGRESS_KEPT_S`` |
| ``wish:<id>``              | the caller that wants a live preview   | ``keep_s`` |
| index ``wishes[:<caller>]``| wished request ids by time             | trimmed to the bounds; ``keep_s`` unused |
| ``previews:<id>``          | previews made, caller, latest time     | ``keep_s`` |
| ``preview:<id>:<n>``       | a partial image (raw RGB)              | ``keep_s`` |
| index ``previewed[:<caller>]`` | request ids with previews by time  | trimmed to the bounds; ``keep_s`` unused |
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Iterable

from t2i_core.common.errors import T2IError
from t2i_core.common.schemas import Preview
from t2i_core.state.store import StateStore

log = logging.getLogger("t2i.engine")

#: seconds a cancellation and a request's progress are remembered (a request never waits longer)
CANCEL_KEPT_S = 600.0
PROGRESS_KEPT_S = 600.0
#: the channel cancels are pushed on
CANCELS = "cancels"
QUEUED = {"state": "queued", "step": 0, "steps": None}
#: a request cancelled before any worker started it
CANCELLED_UNSTARTED = {"state": "cancelled", "step": 0, "steps": None}
#: the states of a request that will not run again: its live-preview wishes go, and none is kept
FINISHED = ("done", "cancelled")
#: wishes one caller may keep, and in all (the oldest go first)
WISHES_PER_CALLER = 64
WISHES_KEPT = 10_000
#: partial images kept per request, requests with previews per caller, and in all
PER_REQUEST = 4
PER_CALLER = 16
KEPT = 64


def _pack(preview: Preview) -> bytes:
    head = json.dumps({"index": preview.index, "step": preview.step, "steps": preview.steps,
                       "width": preview.width, "height": preview.height}).encode()
    return len(head).to_bytes(4, "big") + head + preview.pixels


def _unpack(data: bytes) -> Preview:
    size = int.from_bytes(data[:4], "big")
    return Preview(**json.loads(data[4:4 + size]), pixels=data[4 + size:])


class RequestBoard:
    """``keep_s``: the request timeout: how long a live-preview wish and a request's previews are kept."""

    def __init__(self, state: StateStore, keep_s: float = 120.0, listen: bool = True):
        self.state = state
        self.keep_s = keep_s
        self._lock = threading.Lock()
        #: cancelled request ids (pushed, or found at a batch's start) -> when they were seen
        self._cancelled: dict[str, float] = {}
        self._closed = threading.Event()
        self._warned = float("-inf")
        self._listener: threading.Thread | None = None
        if listen:
            self._listener = threading.Thread(target=self._listen, name="t2i-cancels", daemon=True)
            self._listener.start()

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(timeout=5)

    # ---- cancellation ----------------------------------------------------------------------------
    def cancel(self, request_ids: Iterable[str]) -> None:
        ids = [rid for rid in request_ids if rid]
        if not ids:
            return
        self._note_cancelled(ids)  # this worker stops them whatever happens next
        try:
            self.state.put_many({f"cancel:{rid}": b"1" for rid in ids}, ttl_s=CANCEL_KEPT_S)
            for rid in ids:
                self.state.publish(CANCELS, rid.encode())
            self._drop_wishes(ids)
        except T2IError:
            self._away("cancels for the other workers")

    def is_cancelled(self, request_id: str) -> bool:
        return request_id in self._cancelled

    def refresh(self, request_ids: list[str]) -> None:
        """Look up the cancels of a batch about to start (one a worker missed while it was away)."""
        ids = [rid for rid in request_ids if rid and rid not in self._cancelled]
        if not ids:
            return
        try:
            found = self.state.get_many([f"cancel:{rid}" for rid in ids])
        except T2IError:  # the shared state is away: the batch runs (its cancels are pushed again later)
            return
        self._note_cancelled([rid for rid, hit in zip(ids, found) if hit is not None])

    def _note_cancelled(self, ids: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for rid in ids:
                self._cancelled[rid] = now
            if len(self._cancelled) > 1024:
                for rid in [r for r, t in self._cancelled.items() if now - t > CANCEL_KEPT_S]:
                    del self._cancelled[rid]

    def _listen(self) -> None:
        """Keep the pushed cancels; after a lost connection, subscribe again."""
        while not self._closed.is_set():
            try:
                subscription = self.state.subscribe(CANCELS)
            except T2IError:
                self._closed.wait(1.0)
                continue
            try:
                while not self._closed.is_set():
                    message = subscription.get(0.5)
                    if message is not None:
                        self._note_cancelled([message[1].decode()])
            except T2IError:
                log.warning("engine: the cancel channel was lost; listening again")
                self._closed.wait(1.0)
            finally:
                subscription.close()

    # ---- progress --------------------------------------------------------------------------------
    def _away(self, what: str) -> None:
        """The shared state could not be reached while a batch ran: the batch goes on (its progress and
        previews are lost meanwhile); said once a minute."""
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning("engine: the shared state is unreachable; %s is not recorded meanwhile", what)

    def set_progress(self, request_ids: Iterable[str], **fields: Any) -> None:
        """Write ``fields`` (state, step, steps) of these requests; a field not given keeps its value
        (a new entry starts ``running`` at step 0). Never fails a batch: see ``_away``."""
        try:
            self._set_progress(request_ids, **fields)
        except T2IError:
            self._away("progress")

    def _set_progress(self, request_ids: Iterable[str], **fields: Any) -> None:
        ids = [rid for rid in request_ids if rid]
        if not ids:
            return
        if set(fields) >= {"state", "step", "steps"}:
            entries = {rid: dict(fields) for rid in ids}
        else:
            found = self.state.get_many([f"progress:{rid}" for rid in ids])
            entries = {}
            for rid, raw in zip(ids, found):
                entry = json.loads(raw) if raw else {"state": "running", "step": 0, "steps": None}
                entry.update(fields)
                entries[rid] = entry
        self.state.put_many({f"progress:{rid}": json.dumps(e).encode() for rid, e in entries.items()},
                            ttl_s=PROGRESS_KEPT_S)
        finished = [rid for rid, e in entries.items() if e["state"] in FINISHED]
        if finished:
            self._drop_wishes(finished)

    def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = self.state.get_many([f"progress:{rid}" for rid in request_ids])
        out = {rid: json.loads(raw) for rid, raw in zip(request_ids, found) if raw}
        unstarted = [rid for rid in request_ids if rid not in out]
        if unstarted:
            cancels = self.state.get_many([f"cancel:{rid}" for rid in unstarted])
            out.update({rid: dict(CANCELLED_UNSTARTED) for rid, hit in zip(unstarted, cancels) if hit})
        return {rid: out.get(rid) or dict(QUEUED) for rid in request_ids}

    # ---- live-preview wishes ---------------------------------------------------------------------
    def want_preview(self, request_id: str, caller: str = "") -> None:
        """Decode ``request_id``'s latents after its next step, for ``caller``; nothing when the
        request has finished or was cancelled."""
        if self.is_cancelled(request_id) or self.state.get(f"cancel:{request_id}") is not None:
            return
        raw = self.state.get(f"progress:{request_id}")
        if raw is not None and json.loads(raw).get("state") in FINISHED:
            return
        now = time.time()
        self._drop_wishes([request_id])  # one per request: a new wish replaces the old
        self.state.put(f"wish:{request_id}", caller.encode(), ttl_s=self.keep_s)
        for index, most in ((f"wishes:{caller}", WISHES_PER_CALLER), ("wishes", WISHES_KEPT)):
            self.state.index_add(index, request_id, now, ttl_s=self.keep_s)
            evicted = self._over_bound(index, now, most)
            if evicted:
                self._drop_wishes(evicted)

    def take_wanted(self, request_ids: list[str]) -> dict[str, str]:
        """Which of ``request_ids`` asked for a live preview, with the caller that asked (each wish is
        taken once). None while the shared state is away."""
        try:
            return self._take_wanted(request_ids)
        except T2IError:
            self._away("live previews")
            return {}

    def _take_wanted(self, request_ids: list[str]) -> dict[str, str]:
        ids = [rid for rid in request_ids if rid]
        if not ids:
            return {}
        found = self.state.get_many([f"wish:{rid}" for rid in ids])
        wanted = {rid: raw.decode() for rid, raw in zip(ids, found) if raw is not None}
        if wanted:
            self._drop_wishes(list(wanted), wanted)
        return wanted

    def _drop_wishes(self, ids: list[str], callers: dict[str, str] | None = None) -> None:
        """Remove these wishes, their keys and their places in the indexes."""
        if callers is None:
            found = self.state.get_many([f"wish:{rid}" for rid in ids])
            callers = {rid: raw.decode() for rid, raw in zip(ids, found) if raw is not None}
        self.state.index_remove("wishes", *ids)
        if not callers:
            return
        self.state.delete(*(f"wish:{rid}" for rid in callers))
        for rid, caller in callers.items():
            self.state.index_remove(f"wishes:{caller}", rid)

    def _over_bound(self, index: str, now: float, most: int) -> list[str]:
        """The members of ``index`` past its bound: those older than ``keep_s`` (their keys expired),
        then the oldest beyond ``most``. They are taken out of ``index``."""
        stale = [m for m, _ in self.state.index_range(index, max_score=now - self.keep_s, limit=1024,
                                                      newest_first=False)]
        extra = self.state.index_count(index) - len(stale) - most
        if extra > 0:
            stale += [m for m, _ in self.state.index_range(index, min_score=now - self.keep_s, limit=extra,
                                                           newest_first=False)]
        if stale:
            self.state.index_remove(index, *stale)
        return stale

    # ---- partial images --------------------------------------------------------------------------
    def add_preview(self, request_id: str, preview: Preview, caller: str = "") -> None:
        """Keep ``preview``; ``caller``: who asked for it with a live-preview wish ("": the request's own
        ``partial_images``, bounded by the requests in flight)."""
        try:
            self._add_preview(request_id, preview, caller)
        except T2IError:
            self._away("partial images")

    def _add_preview(self, request_id: str, preview: Preview, caller: str) -> None:
        now = time.time()
        raw = self.state.get(f"previews:{request_id}")
        made = json.loads(raw)["made"] if raw else 0
        self.state.put_many({
            f"preview:{request_id}:{made}": _pack(preview.model_copy(update={"index": made})),
            f"previews:{request_id}": json.dumps({"made": made + 1, "caller": caller}).encode(),
        }, ttl_s=self.keep_s)
        if made >= PER_REQUEST:
            self.state.delete(f"preview:{request_id}:{made - PER_REQUEST}")
        for index, most in (((f"previewed:{caller}", PER_CALLER),) if caller else ()) + (("previewed", KEPT),):
            self.state.index_add(index, request_id, now, ttl_s=self.keep_s)
            evicted = self._over_bound(index, now, most)
            if evicted:
                self._drop_previews(evicted)

    def _drop_previews(self, ids: list[str]) -> None:
        """Remove these requests' partial images and their places in the indexes."""
        self.state.index_remove("previewed", *ids)
        found = self.state.get_many([f"previews:{rid}" for rid in ids])
        for rid, raw in zip(ids, found):
            if raw is None:
                continue
            meta = json.loads(raw)
            made = meta["made"]
            if meta.get("caller"):
                self.state.index_remove(f"previewed:{meta['caller']}", rid)
            self.state.delete(f"previews:{rid}", *(f"preview:{rid}:{i}" for i in range(max(0, made - PER_REQUEST), made)))

    def previews(self, request_id: str, since: int = 0) -> list[Preview]:
        """The kept partial images of ``request_id`` with an index of ``since`` or more."""
        raw = self.state.get(f"previews:{request_id}")
        if raw is None:
            return []
        made = json.loads(raw)["made"]
        first = max(since, made - PER_REQUEST, 0)
        found = self.state.get_many([f"preview:{request_id}:{i}" for i in range(first, made)])
        return [_unpack(data) for data in found if data is not None]

    def kept(self) -> dict[str, int]:
        """How many live-preview wishes and requests with previews are kept now."""
        now = time.time()
        wishes = self.state.index_count("wishes") - len(
            self.state.index_range("wishes", max_score=now - self.keep_s, limit=WISHES_KEPT))
        previews = self.state.index_count("previewed") - len(
            self.state.index_range("previewed", max_score=now - self.keep_s, limit=KEPT))
        return {"preview_wishes": max(0, wishes), "previews_kept": max(0, previews)}
