"""Runs tasks' work in the API worker that took their submit, and keeps that worker's lease.

A task is the /generate work of its fields, started at once (the engine batches it with everything
else); it counts as a request in flight (``T2I_MAX_IN_FLIGHT``, the SIGTERM drain) until it ends.
Its work stops at the next denoising step once the task is cancelled: a cancel taken by this worker
wakes it at once, one taken by another worker (or replica) is seen by polling the task's cancel flag
every ``POLL_S``.

Its work is served for the key that submitted it, queued in the task's class (``batch`` unless its
submit asked ``interactive`` and its key allows it) and already counted against the key's images
per minute (at submit); its slot in the key's ``max_concurrent`` is held until it ends. Its webhook
events go out through ``notify.py``. Where it waits (``place``) is known to this worker's coalescer;
for the other workers it is written to the shared state every ``PLACE_EVERY_S`` while it waits.

An outcome that cannot be recorded (the shared state is away) is kept in this worker and recorded
again every ``LEASE_RENEW_S`` until the state is back (for up to the task's ttl): the image a task
made is not lost to a Redis restart. The lease is renewed in a loop of its own, so that a long sweep
never lets it lapse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

from t2i_core.api import request_log
from t2i_core.api.coalesce import Place
from t2i_core.api.guards import IN_FLIGHT
from t2i_core.api.keys.context import serving
from t2i_core.api.keys.limits import KeyLimits
from t2i_core.api.keys.records import ANONYMOUS_KEY, ApiKey
from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.responses import image_response
from t2i_core.api.surfaces.tasks.notify import Sent, TaskNotifier
from t2i_core.api.surfaces.tasks.store import LEASE_RENEW_S, StoredResult, TaskRecord, TaskStore
from t2i_core.common.errors import T2IError, TaskCanceled, http_status
from t2i_core.common.paths import TASK_ROUTE
from t2i_core.common.schemas import GenerateRequest
from t2i_core.state.aio import call

log = logging.getLogger("t2i.tasks")

#: seconds between two looks at a running task's record for a cancel taken elsewhere
POLL_S = 0.25
#: seconds between two writes of the places of this worker's waiting tasks (for the other workers)
PLACE_EVERY_S = 1.0
#: the headers of /generate's answer that a task's result keeps
KEPT_HEADERS = ("x-seed", "x-model", "x-image-size", "x-batch-size", "x-inference-time", "x-total-time", "x-speed",
                "x-steps-skipped", "x-cache-skipped")


def engine_request_id(task_id: str) -> str:
    """The id of a task's work in the engine (progress, previews, cancellation)."""
    return f"task-{task_id}"


def place_key(task_id: str) -> str:
    return f"task:{task_id}:place"


class TaskRunner:
    def __init__(self, store: TaskStore, get_flow: Callable[[], Any], check_s: float = 60.0,
                 notifier: TaskNotifier | None = None, limits: KeyLimits | None = None):
        self.store = store
        self.get_flow = get_flow
        self.check_s = check_s
        self.notifier = notifier
        self.limits = limits
        self._running: dict[str, asyncio.Task[None]] = {}
        self._canceled: dict[str, asyncio.Event] = {}
        #: the lease loop, the retention sweep and (shared state) the places writer
        self._upkeep: list[asyncio.Task[None]] = []
        #: outcomes not recorded yet (the state was away): task id -> (when, the call that records it)
        self._unrecorded: dict[str, tuple[float, Callable[[], Any]]] = {}

    def start(self, record: TaskRecord, req: GenerateRequest, key: ApiKey = ANONYMOUS_KEY, slot: str | None = None) -> None:
        """Run the task's work in the background (on the current event loop), for ``key``; ``slot``:
        its place in the key's ``max_concurrent``, given back when it ends."""
        self._ensure_upkeep()
        IN_FLIGHT.enter()
        self._canceled[record.task_id] = asyncio.Event()
        work = asyncio.create_task(self._run(record, req, key, slot))
        self._running[record.task_id] = work
        work.add_done_callback(lambda _: self._ended(record.task_id))

    def place(self, task_id: str) -> Place | None:
        """Where the task waits, when this worker runs it (None otherwise)."""
        if task_id not in self._running:
            return None
        where = getattr(self.get_flow().engine, "where", None)
        return where(engine_request_id(task_id)) if where is not None else None

    def places_elsewhere(self, task_ids: list[str]) -> dict[str, Place]:
        """The places other workers wrote for these tasks (blocking: call off the loop)."""
        found = {}
        for task_id, raw in zip(task_ids, self.store.state.get_many([place_key(t) for t in task_ids])):
            if raw is not None:
                found[task_id] = Place(**json.loads(raw))
        return found

    def _ended(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self._canceled.pop(task_id, None)
        IN_FLIGHT.leave()

    def canceled_here(self, task_id: str) -> None:
        """A cancel taken by this worker: wake the task's work at once if it runs here."""
        event = self._canceled.get(task_id)
        if event is not None:
            event.set()

    async def _until_canceled(self, task_id: str) -> T2IError:
        event = self._canceled.get(task_id) or asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(event.wait(), POLL_S)
                break
            except asyncio.TimeoutError:
                pass
            try:
                if await call(self.store.state, self.store.is_canceled, task_id):
                    break
            except T2IError:  # the state is unreachable for now: look again later
                pass
        return TaskCanceled("the task was canceled; its work was stopped")

    async def _run(self, record: TaskRecord, req: GenerateRequest, key: ApiKey, slot: str | None) -> None:
        task_id = record.task_id
        named = {} if record.submitter is None else {"key": record.submitter}
        image: RenderedImage | None = None
        sent = Sent()
        watch = None
        with serving(key, record.priority, counted=True), \
                request_log.recording(TASK_ROUTE, event="task", task_id=task_id, **named) as logged:
            try:
                flow = self.get_flow()
                work_id = engine_request_id(task_id)
                if self.notifier is not None and record.webhook is not None:
                    watch = asyncio.create_task(self.notifier.watch(record, lambda: flow.progress(work_id), sent))
                (image,) = await flow.generate(
                    req, request_id=work_id, disconnected=lambda: self._until_canceled(task_id))
                response = image_response(image)
                headers = {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS}
                result = StoredResult(status_code=response.status_code, media_type=image.media_type,
                                      headers=headers, body=bytes(response.body))
                if self.notifier is not None and record.webhook is not None:
                    await self.notifier.started_if_missed(record, sent)
                done = await self._record(task_id, self.store.complete, task_id, result)
                logged.status = 200 if done is None or done.status == "completed" else 409
            except T2IError as err:
                logged.status = http_status(err)
                request_log.note(error=err.code, error_message=err.message[:300])
                await self._fail(task_id, err)
            except Exception:  # noqa: BLE001 - logged here; the task says failed, without the traceback
                log.exception("task %s failed", task_id)
                logged.status = 500
                await self._fail(task_id, T2IError("internal error; the server log has the details"))
            finally:
                if watch is not None:
                    watch.cancel()
                await self._ended_here(record, key, slot)

    async def _ended_here(self, record: TaskRecord, key: ApiKey, slot: str | None) -> None:
        """The task's work is over: its slot given back, the sender woken for its final webhook event
        (queued with its final status: ``outbox.py``)."""
        try:
            if slot is not None and self.limits is not None:
                await self.limits.leave(key, slot)
            if self.notifier is not None and record.webhook is not None:
                self.notifier.sender.start()
        except Exception:  # noqa: BLE001 - the task's outcome is recorded; what follows it is best effort
            log.warning("task %s: its slot could not be given back", record.task_id, exc_info=True)

    async def _fail(self, task_id: str, err: T2IError) -> None:
        try:
            await self._record(task_id, self.store.fail, task_id, err)
        except T2IError as other:  # e.g. its record is gone
            log.warning("task %s: its failure could not be recorded: %s", task_id, other.message)

    async def _record(self, task_id: str, fn: Callable[..., TaskRecord], *args: Any) -> TaskRecord | None:
        """Record an outcome now, or keep it to record when the state is back (None then)."""
        try:
            return await call(self.store.state, fn, *args)
        except T2IError as err:
            if err.code != "state_unavailable":
                raise
            log.warning("task %s: its outcome could not be recorded (%s); trying again every %ss",
                        task_id, err.message, LEASE_RENEW_S)
            self._unrecorded[task_id] = (time.monotonic(), lambda: fn(*args))
            self._ensure_upkeep()
            return None

    async def record_pending(self) -> int:
        """Record the outcomes kept while the state was away; returns how many are still kept."""
        for task_id, (since, record) in list(self._unrecorded.items()):
            if time.monotonic() - since > self.store.ttl_s:
                log.error("task %s: its outcome was never recorded (the state was away for %ss); dropped",
                          task_id, self.store.ttl_s)
                self._unrecorded.pop(task_id, None)
                continue
            try:
                await call(self.store.state, record)
            except T2IError as err:
                if err.code == "state_unavailable":
                    break  # still away: the next round
                log.warning("task %s: its outcome could not be recorded: %s", task_id, err.message)
            self._unrecorded.pop(task_id, None)
        return len(self._unrecorded)

    # ---- upkeep: the lease, kept outcomes, and the retention sweep -------------------------------
    def _ensure_upkeep(self) -> None:
        if not self._upkeep or any(t.done() for t in self._upkeep):
            for t in self._upkeep:
                t.cancel()
            self._upkeep = [asyncio.create_task(self._keep_lease()), asyncio.create_task(self._keep_store())]
            if self.store.state.shared:
                self._upkeep.append(asyncio.create_task(self._write_places()))

    async def _write_places(self) -> None:
        """Every ``PLACE_EVERY_S``: where this worker's waiting tasks are, for the other workers."""
        while True:
            await asyncio.sleep(PLACE_EVERY_S)
            try:
                places = {place_key(t): json.dumps(p.__dict__).encode()
                          for t in list(self._running) if (p := self.place(t)) is not None}
                if places:
                    await call(self.store.state, self.store.state.put_many, places, 3 * PLACE_EVERY_S)
            except Exception:  # noqa: BLE001 - the next round tries again
                pass

    async def _keep_lease(self) -> None:
        while True:
            try:
                await call(self.store.state, self.store.renew_lease)
                if self._unrecorded:
                    await self.record_pending()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("task lease renewal failed; trying again in %ss", LEASE_RENEW_S, exc_info=True)
            await asyncio.sleep(LEASE_RENEW_S)

    async def _keep_store(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                removed = await call(self.store.state, self.store.sweep)
                if removed:
                    log.info("task store: removed %d tasks that finished more than %ss ago", removed,
                             self.store.ttl_s)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("task store sweep failed; trying again in %ss", self.check_s, exc_info=True)
