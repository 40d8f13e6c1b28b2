"""Tasks (``/tasks/generate``) in the shared state: records, results, cancellation, expiry.

A task's record (``task:<id>``) says where it is: ``in_progress``, then exactly one of
``completed``, ``failed`` or ``canceled``. Every change of status is one atomic ``update`` of the
record that only moves an ``in_progress`` task on, so a cancel and the work's completion cannot both
win: a cancel that answered ``canceled`` means no image is ever delivered for it, and a completed
task's result stays. The result (``task:<id>:result``) is written before the record says
``completed`` (a reader never sees a completed task without its result) and removed when the task
turned out cancelled meanwhile.

The work runs in the API worker that took the submit (``runner.py``). Each worker keeps a lease
(``runner:<id>``, renewed every ``LEASE_RENEW_S``); an ``in_progress`` task whose runner's lease
has lapsed (the worker was killed or restarted) is marked ``failed`` with ``task_lost`` when read
or swept, rather than staying ``in_progress`` forever. Whoever writes a task's final status queues its
final webhook event in the same call (``outbox.py``). A cancel also writes a small flag
(``task:<id>:canceled``): the runner polls that, not the whole record.

Retention: a finished task's record and result are kept ``T2I_TASK_RESULT_TTL_S`` (then ``status``
and ``get`` answer 404), and results take at most ``T2I_TASK_STORE_MAX_BYTES`` in all: past it, the
oldest finished results are removed first (their ``get`` then answers 410). The bytes counted are
those of the results whose size key (``task:<id>:size``) exists: it is created once per result
(``only_if_absent``) when the result is counted and deleted once when it is uncounted, whoever
else tries, so the counter does not drift when a removal races another or a record expired first.
Every key that could outlive the sweep (it runs only while a server runs) expires by itself. No request headers are
stored (no credentials at rest): a task keeps its validated fields (for ``retry``) and its owner as
a hash (``t2i_core/api/callers.py``).
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from t2i_core.api.callers import Caller
from t2i_core.api.surfaces.tasks.options import TaskWebhook
from t2i_core.common.errors import (
    Conflict, Forbidden, Gone, InvalidRequest, NotFound, T2IError, TaskCanceled, TaskLost, http_status,
)
from t2i_core.state.store import StateStore

Status = Literal["in_progress", "completed", "failed", "canceled"]
#: seconds a runner's lease lasts without renewal, and how often a runner renews it
LEASE_S = 20.0
LEASE_RENEW_S = 5.0
#: every task, by creation time (listings)
ALL = "tasks"
#: every task, by the time it may be removed (finished + ttl; a running one is looked at again then)
EXPIRES = "tasks:expires"
#: finished tasks that still have a result, by completion time (the size cap removes the oldest)
WITH_RESULT = "tasks:with-result"
RESULT_BYTES = "tasks:result-bytes"
#: record keys outlive the sweep that removes them by this much (a backstop if no sweep runs)
BACKSTOP_S = 600.0
#: listings: task ids read from an index at a time, and at most per page (a filter that matches few
#: tasks answers a shorter page with a cursor to go on from)
LIST_CHUNK = 100
LIST_SCAN = 2000
#: a running task's record expires this long after its ttl if nothing finishes it (its runner's
#: sweep finishes it as lost long before; this only bounds what a server that never runs again leaves)
RUNNING_BACKSTOP_S = 24 * 3600.0
#: tasks looked at per sweep (the next sweep goes on): one sweep never holds the state for long
SWEEP_MAX = 1024


class TaskRecord(BaseModel):
    task_id: str
    status: Status = "in_progress"
    created_at: float
    executed_at: float | None = None
    completed_at: float | None = None
    #: the submitter (``Caller.owner``): None on a server without API keys
    owner: str | None = None
    #: the API worker running it (its lease key)
    runner: str = ""
    #: the submit's validated fields (what ``retry`` runs again)
    input: dict[str, Any] = {}
    #: the id of the request that submitted it (log lines)
    request_id: str = ""
    #: failed: the error (``T2IError.to_dict``) and the HTTP status ``get`` answers
    error: dict[str, Any] | None = None
    error_status: int | None = None
    #: completed: the result's size, and whether it is still kept (the size cap removes old ones)
    result_bytes: int = 0
    result_kept: bool = False
    #: the name of the key that submitted it (None without keys), and the class its work is queued in
    submitter: str | None = None
    priority: str = "batch"
    #: where its events go (None: no webhook)
    webhook: TaskWebhook | None = None
    #: the submit's task options as given (what ``retry`` submits again)
    options: dict[str, Any] = {}

    def status_body(self) -> dict[str, Any]:
        """What ``status`` answers: BentoML's task status shape (its Python client reads ``status``)."""
        return {"task_id": self.task_id, "status": self.status, "created_at": _iso(self.created_at),
                "executed_at": _iso(self.executed_at), "completed_at": _iso(self.completed_at),
                "key": self.submitter, "priority": self.priority}


class StoredResult(BaseModel):
    """A completed task's answer: what /generate answered (status, headers, body)."""

    status_code: int
    media_type: str
    headers: dict[str, str]
    body: bytes

    def pack(self) -> bytes:
        head = json.dumps({"status_code": self.status_code, "media_type": self.media_type,
                           "headers": self.headers}).encode()
        return len(head).to_bytes(4, "big") + head + self.body

    @classmethod
    def unpack(cls, data: bytes) -> "StoredResult":
        size = int.from_bytes(data[:4], "big")
        head = json.loads(data[4:4 + size])
        return cls(**head, body=data[4 + size:])


class FinishedTasks(Protocol):
    """What the store tells of a task whose final status it wrote (``outbox.TaskOutbox``: its webhook)."""

    def finished(self, record: "TaskRecord", result: "StoredResult | None") -> bool: ...


class TaskStore:
    """Synchronous, on any backend (``StateStore``); the routes call it through ``state.aio.call``."""

    def __init__(self, state: StateStore, ttl_s: float, max_bytes: int, runner: str | None = None,
                 outbox: FinishedTasks | None = None):
        self.state = state
        #: queues a finished task's final webhook event where its status is written (None: no webhooks)
        self.outbox = outbox
        self.ttl_s = ttl_s if ttl_s > 0 else 24 * 3600.0
        self.max_bytes = max_bytes
        #: this API worker's runner id (its lease: ``runner:<id>``)
        self.runner = runner or uuid.uuid4().hex

    # ---- keys ------------------------------------------------------------------------------------
    @staticmethod
    def record_key(task_id: str) -> str:
        return f"task:{task_id}"

    @staticmethod
    def result_key(task_id: str) -> str:
        return f"task:{task_id}:result"

    @staticmethod
    def size_key(task_id: str) -> str:
        return f"task:{task_id}:size"

    @staticmethod
    def canceled_key(task_id: str) -> str:
        return f"task:{task_id}:canceled"

    @staticmethod
    def owner_index(owner: str | None) -> str:
        return f"tasks:owner:{owner or '-'}"

    # ---- leases ----------------------------------------------------------------------------------
    def renew_lease(self) -> None:
        self.state.put(f"runner:{self.runner}", b"1", ttl_s=LEASE_S)

    def _runner_alive(self, runner: str) -> bool:
        return runner == self.runner or self.state.get(f"runner:{runner}") is not None

    # ---- create and read -------------------------------------------------------------------------
    def create(self, fields: dict[str, Any], caller: Caller, request_id: str = "", *, priority: str = "batch",
               webhook: TaskWebhook | None = None, options: dict[str, Any] | None = None,
               task_id: str | None = None) -> TaskRecord:
        now = time.time()
        record = TaskRecord(task_id=task_id or uuid.uuid4().hex, created_at=now, executed_at=now, owner=caller.owner,
                            runner=self.runner, input=fields, request_id=request_id, submitter=caller.name,
                            priority=priority, webhook=webhook, options=options or {})
        self.renew_lease()
        self.state.put(self.record_key(record.task_id), record.model_dump_json().encode(),
                       ttl_s=self.ttl_s + RUNNING_BACKSTOP_S)
        self.state.index_add(ALL, record.task_id, now)
        self.state.index_add(EXPIRES, record.task_id, now + self.ttl_s)
        # the owner's index goes by itself once its last task could be gone (a caller who stops submitting)
        self.state.index_add(self.owner_index(record.owner), record.task_id, now,
                             ttl_s=self.ttl_s + RUNNING_BACKSTOP_S + BACKSTOP_S)
        return record

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self.state.get(self.record_key(task_id))
        return None if raw is None else TaskRecord.model_validate_json(raw)

    def read(self, task_id: str, caller: Caller) -> TaskRecord:
        """The task as ``caller`` may see it: NotFound when unknown, expired, or another caller's
        (another caller learns nothing, not even that it exists)."""
        if not task_id:
            raise InvalidRequest("task_id is required (query parameter)", param="task_id")
        record = self.get(task_id)
        if record is None or not caller.owns(record.owner):
            raise NotFound(f"task_id {task_id!r} not found", param="task_id")
        if record.status == "in_progress" and not self._runner_alive(record.runner):
            record = self._lost(task_id)
        return record

    def _lost(self, task_id: str) -> TaskRecord:
        return self._finish(task_id, "failed", error=TaskLost(
            "the API worker running this task stopped (killed or restarted) before it finished; "
            "submit it again (POST .../retry)"))

    def is_canceled(self, task_id: str) -> bool:
        """Whether a cancel was taken for the task (one small key: the runner asks this often)."""
        return self.state.get(self.canceled_key(task_id)) is not None

    # ---- status changes --------------------------------------------------------------------------
    def _finish(self, task_id: str, status: Status, *, error: T2IError | None = None, error_status: int | None = None,
                result_bytes: int = 0, result: StoredResult | None = None) -> TaskRecord:
        """Move an ``in_progress`` task to ``status`` (atomically; a finished task stays as it is);
        returns the record after the call. The final webhook event of the status it has now is queued
        in the same call (``outbox.py``: once per task, whichever call queues it; a call that fails
        part way is retried whole)."""
        now = time.time()

        def change(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            record = TaskRecord.model_validate_json(raw)
            if record.status != "in_progress":
                return None
            record.status = status
            record.completed_at = now
            if error is not None:
                record.error = error.to_dict()
                record.error_status = error_status or http_status(error)
            if status == "completed":
                record.result_bytes = result_bytes
                record.result_kept = True
            return record.model_dump_json().encode()

        raw = self.state.update(self.record_key(task_id), change, ttl_s=self.ttl_s + BACKSTOP_S)
        if raw is None:
            raise NotFound(f"task_id {task_id!r} not found", param="task_id")
        record = TaskRecord.model_validate_json(raw)
        if record.completed_at == now:  # this call finished it
            self.state.index_add(EXPIRES, task_id, now + self.ttl_s)
        if self.outbox is not None and record.status != "in_progress":
            self.outbox.finished(record, result if record.status == "completed" else None)
        return record

    def cancel(self, task_id: str, caller: Caller) -> TaskRecord:
        """Cancel the task: 200 ``canceled`` (also when it was cancelled already), Conflict when it
        had finished otherwise."""
        record = self.read(task_id, caller)
        if record.status == "in_progress":
            # the flag first: if the work then completes first, the flag stops nothing (it has ended)
            self.state.put(self.canceled_key(task_id), b"1", ttl_s=self.ttl_s + BACKSTOP_S)
            record = self._finish(task_id, "canceled")
        if record.status != "canceled":
            raise Conflict(f"task {task_id} has already finished ({record.status}); nothing to cancel",
                           param="task_id", code="task_finished")
        return record

    def complete(self, task_id: str, result: StoredResult) -> TaskRecord:
        """The work succeeded: keep its result unless the task was cancelled meanwhile. Safe to call
        again after a failure part way (the runner retries it while the state is away)."""
        data = result.pack()
        self.state.put(self.result_key(task_id), data, ttl_s=self.ttl_s + BACKSTOP_S)
        record = self._finish(task_id, "completed", result_bytes=len(data), result=result)
        if record.status != "completed":  # cancelled (or lost) first: its answer is not delivered
            self.state.delete(self.result_key(task_id))
            return record
        assert record.completed_at is not None
        self.state.index_add(WITH_RESULT, task_id, record.completed_at)
        if self.state.put(self.size_key(task_id), str(len(data)).encode(), only_if_absent=True):
            total = self.state.incr(RESULT_BYTES, len(data))
            if self.max_bytes > 0 and total > self.max_bytes:
                self.evict()
        return record

    def fail(self, task_id: str, error: T2IError, error_status: int | None = None) -> TaskRecord:
        return self._finish(task_id, "failed", error=error, error_status=error_status)

    def result(self, task_id: str, caller: Caller) -> tuple[TaskRecord, StoredResult | None]:
        """A finished task's record and, when completed, its result. InvalidRequest while it runs,
        Conflict when cancelled, Gone when its result was removed for the size cap."""
        record = self.read(task_id, caller)
        if record.status == "in_progress":
            raise InvalidRequest(f"task {task_id} is not completed yet", param="task_id", code="task_in_progress")
        if record.status == "canceled":
            raise TaskCanceled("the task was canceled; its work was stopped")
        if record.status == "failed":
            return record, None
        raw = self.state.get(self.result_key(task_id)) if record.result_kept else None
        if raw is None:
            raise Gone(f"the result of task {task_id} was removed to keep the task store under "
                       f"T2I_TASK_STORE_MAX_BYTES={self.max_bytes}", param="task_id", code="task_result_removed")
        return record, StoredResult.unpack(raw)

    # ---- listing ---------------------------------------------------------------------------------
    def list(self, caller: Caller, *, status: str | None = None, limit: int = 20, cursor: str | None = None,
             key: str | None = None) -> tuple[list[TaskRecord], str | None]:
        """``caller``'s tasks (an admin's: everyone's, or ``key``'s), newest first, ``status`` only when
        given; at most ``limit``, from ``cursor`` on. Returns them and the cursor of the next page
        (None at the end)."""
        if key is not None and not caller.admin:
            raise Forbidden("only an admin key may list another key's tasks (key=...)")
        index = (self.owner_index(f"key:{key}") if key is not None else
                 ALL if caller.admin or caller.owner is None else self.owner_index(caller.owner))
        after_score, after_id = decode_cursor(cursor)
        found: list[TaskRecord] = []
        scanned = 0
        max_score = after_score
        skipping = after_id is not None
        while len(found) < limit and scanned < LIST_SCAN:
            chunk = self.state.index_range(index, max_score=max_score, limit=LIST_CHUNK)
            full = len(chunk) == LIST_CHUNK
            if skipping:  # the page before ended at (after_score, after_id): drop what it showed
                # every backend orders by (score, member), both descending: this holds even when
                # after_id itself has left the index since
                assert after_id is not None
                chunk = [(m, sc) for m, sc in chunk if sc < after_score or (sc == after_score and m < after_id)]
                skipping = False
            if not chunk:
                return found, None
            records = self.state.get_many([self.record_key(m) for m, _ in chunk])
            gone = [member for (member, _), raw in zip(chunk, records) if raw is None]
            if gone:  # expired without a sweep (no server ran then): their ids leave the index now
                self.state.index_remove(index, *gone)
            for (member, score), raw in zip(chunk, records):
                scanned += 1
                if raw is None:
                    continue
                record = TaskRecord.model_validate_json(raw)
                if record.status == "in_progress" and not self._runner_alive(record.runner):
                    record = self.read(member, caller)  # marked lost, as a read would
                if status is None or record.status == status:
                    found.append(record)
                    if len(found) == limit:
                        return found, encode_cursor(score, member)
            last_member, last_score = chunk[-1]
            if not full:
                return found, None
            # the next chunk starts at the last score seen (ties there are skipped by id)
            max_score, after_score, after_id, skipping = last_score, last_score, last_member, True
        return found, encode_cursor(after_score, after_id) if after_id is not None else None

    # ---- retention -------------------------------------------------------------------------------
    def _drop_result(self, task_id: str) -> int:
        """Remove a task's result, if it has one (uncounted once, whoever else tries: the one whose
        delete of its size key removed it); returns the bytes freed by this call."""

        def change(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            record = TaskRecord.model_validate_json(raw)
            if not record.result_kept:
                return None
            record.result_kept = False
            return record.model_dump_json().encode()

        self.state.update(self.record_key(task_id), change)
        self.state.delete(self.result_key(task_id))
        self.state.index_remove(WITH_RESULT, task_id)
        size = self.state.get(self.size_key(task_id))
        freed = int(size) if size and self.state.delete(self.size_key(task_id)) == 1 else 0
        if freed:
            self.state.incr(RESULT_BYTES, -freed)
        return freed

    def evict(self) -> int:
        """Remove the oldest results until results take at most 90% of the cap; returns how many."""
        removed = 0
        target = int(self.max_bytes * 0.9)
        used = int(self.state.get(RESULT_BYTES) or 0)
        while used > target:
            oldest = self.state.index_range(WITH_RESULT, limit=16, newest_first=False)
            if not oldest:
                break
            for task_id, _ in oldest:
                used -= self._drop_result(task_id)
                removed += 1
                if used <= target:
                    break
            used = int(self.state.get(RESULT_BYTES) or 0)
        if used and self.state.index_count(WITH_RESULT) == 0:  # left by a worker that died between two writes
            self.state.incr(RESULT_BYTES, -used)
        return removed

    def sweep(self, now: float | None = None, most: int = SWEEP_MAX) -> int:
        """Remove the tasks that finished more than ``ttl_s`` ago, and finish as lost the running ones
        whose runner is gone; looks at ``most`` tasks at most (the next sweep goes on). Returns how
        many were removed."""
        now = time.time() if now is None else now
        removed = looked = 0
        while looked < most:
            due = self.state.index_range(EXPIRES, max_score=now, limit=min(256, most - looked), newest_first=False)
            if not due:
                break
            for task_id, _ in due:
                looked += 1
                record = self.get(task_id)
                if record is not None and record.status == "in_progress":
                    if self._runner_alive(record.runner):
                        self.state.index_add(EXPIRES, task_id, now + self.ttl_s)  # still running: later
                        continue
                    try:
                        self._lost(task_id)
                    except NotFound:  # removed meanwhile
                        pass
                    self.state.index_add(EXPIRES, task_id, now + self.ttl_s)  # removed ttl_s from now
                    continue
                if record is not None and (record.completed_at or 0) > now - self.ttl_s:
                    self.state.index_add(EXPIRES, task_id, (record.completed_at or now) + self.ttl_s)
                    continue
                self._drop_result(task_id)
                if record is not None:
                    self.state.index_remove(self.owner_index(record.owner), task_id)
                self.state.delete(self.record_key(task_id), self.canceled_key(task_id))
                self.state.index_remove(ALL, task_id)
                self.state.index_remove(EXPIRES, task_id)
                removed += 1
        return removed


def encode_cursor(score: float, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[float, str | None]:
    """(score, task id) of a cursor; (inf, None) for the first page; InvalidRequest when malformed."""
    if not cursor:
        return float("inf"), None
    try:
        score, _, task_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        return float(score), task_id or None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"cursor {cursor[:80]!r} is not one this server gave (next_cursor of a listing)",
                             param="cursor") from None


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat()
