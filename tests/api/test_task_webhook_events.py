"""A task's final webhook event is queued where its final status is written (the task store's
outbox), whoever writes it: a worker that finds the task lost (its runner died), a late record once
the shared state is back, a cancel; exactly one final event per task, whatever writes the record
again. Bodies are bounded: a delivered or failed delivery keeps no body, and a completed event's
image goes inline only up to a cap (a link beyond)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time

import pytest

from conftest import free_port
from t2i_core.api.callers import Caller
from t2i_core.api.surfaces.tasks.options import TaskWebhook
from t2i_core.api.surfaces.tasks.outbox import MAX_INLINE_BYTES, TaskOutbox
from t2i_core.api.surfaces.tasks.runner import TaskRunner
from t2i_core.api.surfaces.tasks.store import StoredResult, TaskStore
from t2i_core.api.webhooks.deliveries import DUE, Deliveries, delivery_key, event_message_id
from t2i_core.common.errors import Conflict, StateUnavailable, T2IError
from t2i_core.state.memory import MemoryState
from t2i_core.state.redis import RedisState
from t2i_core.state.store import StateStore

ANYONE = Caller(owner=None)
HOOK = TaskWebhook(url="https://hooks.example.com/t2i", response_format="b64_json", base_url="https://t2i.example")
IMAGE = StoredResult(status_code=200, media_type="image/png",
                     headers={"x-seed": "5", "x-model": "tiny", "x-image-size": "64x48"}, body=b"png bytes")


class Links:
    """The image store's part: keeps the images it links (in a dict) and says their URLs."""

    def __init__(self) -> None:
        self.kept: list[bytes] = []

    def __call__(self, data: bytes, media_type: str, base: str) -> str:
        self.kept.append(data)
        return f"{base}/v1/images/files/{len(self.kept)}.png"


def stores(state: StateStore, runner: str | None = None) -> tuple[TaskStore, Deliveries, Links]:
    deliveries, links = Deliveries(state, ttl_s=3600), Links()
    return TaskStore(state, ttl_s=3600, max_bytes=0, runner=runner, outbox=TaskOutbox(deliveries, links)), deliveries, links


def events(deliveries: Deliveries, task_id: str) -> list[tuple[str, str, dict]]:
    return [(d.id, d.event, json.loads(d.body)["data"]) for d in deliveries.of_task(task_id)]


def test_a_task_whose_worker_died_gets_one_failed_event_from_whoever_finds_it_lost():
    state = MemoryState()
    dead, _, _ = stores(state, runner="dead-worker")
    task = dead.create({"prompt": "a"}, ANYONE, webhook=HOOK)
    state.delete("runner:dead-worker")  # its lease lapsed: the worker was killed
    alive, deliveries, _ = stores(state, runner="alive-worker")
    assert alive.read(task.task_id, ANYONE).status == "failed"
    alive.read(task.task_id, ANYONE)
    other, _, _ = stores(state, runner="third-worker")
    other.read(task.task_id, ANYONE)
    (found,) = events(deliveries, task.task_id)
    assert found[:2] == (event_message_id(task.task_id, "failed"), "failed")
    assert found[2]["error"]["code"] == "task_lost" and found[2]["status"] == "failed"


def test_a_lost_task_found_by_the_sweep_gets_its_failed_event():
    state = MemoryState()
    dead, _, _ = stores(state, runner="dead-worker")
    task = dead.create({"prompt": "a"}, ANYONE, webhook=HOOK)
    state.delete("runner:dead-worker")
    alive, deliveries, _ = stores(state, runner="alive-worker")
    alive.sweep(now=task.created_at + 7200)
    assert [e[1] for e in events(deliveries, task.task_id)] == ["failed"]


def test_one_final_event_per_task_whatever_writes_its_record_again():
    state = MemoryState()
    store, deliveries, _ = stores(state)
    done = store.create({"prompt": "a"}, ANYONE, webhook=HOOK)
    store.complete(done.task_id, IMAGE)
    store.complete(done.task_id, IMAGE)  # a retried record
    store.fail(done.task_id, T2IError("late"))
    ((_, event, data),) = events(deliveries, done.task_id)
    assert event == "completed" and base64.b64decode(data["b64_json"]) == IMAGE.body
    assert (data["seed"], data["model"], data["width"], data["height"]) == (5, "tiny", 64, 48)
    canceled = store.create({"prompt": "b"}, ANYONE, webhook=HOOK)
    store.cancel(canceled.task_id, ANYONE)
    store.complete(canceled.task_id, IMAGE)  # the work ended after the cancel
    try:
        store.cancel(canceled.task_id, ANYONE)
    except Conflict:
        pass
    assert [e[1] for e in events(deliveries, canceled.task_id)] == ["cancelled"]


def test_an_outcome_recorded_late_queues_its_final_event(redis_server):
    from redis_server import start_redis

    own = start_redis(free_port())
    state = RedisState(own.url)
    store, deliveries, _ = stores(state)
    runner = TaskRunner(store, get_flow=lambda: None)
    done = store.create({"prompt": "a"}, ANYONE, webhook=HOOK)
    failed = store.create({"prompt": "b"}, ANYONE, webhook=HOOK)

    async def scenario() -> None:
        os.kill(own.proc.pid, signal.SIGSTOP)  # away: every call times out
        try:
            assert await runner._record(done.task_id, store.complete, done.task_id, IMAGE) is None
            await runner._fail(failed.task_id, T2IError("it broke"))
        finally:
            os.kill(own.proc.pid, signal.SIGCONT)
        assert await runner.record_pending() == 0
        for task in runner._upkeep:
            task.cancel()

    try:
        asyncio.run(scenario())
        assert [e[1] for e in events(deliveries, done.task_id)] == ["completed"]
        ((_, event, data),) = events(deliveries, failed.task_id)
        assert event == "failed" and data["error"]["message"] == "it broke"
    finally:
        state.close()
        own.stop()


def test_a_sent_delivery_keeps_no_body_and_a_large_image_goes_as_a_link():
    state = MemoryState()
    store, deliveries, links = stores(state)
    big = StoredResult(status_code=200, media_type="image/png", headers={}, body=b"x" * (MAX_INLINE_BYTES + 1))
    task = store.create({"prompt": "a"}, ANYONE, webhook=HOOK)
    store.complete(task.task_id, big)
    ((message_id, _, data),) = events(deliveries, task.task_id)
    assert "b64_json" not in data and data["url"] == "https://t2i.example/v1/images/files/1.png"
    assert links.kept == [big.body]
    assert len(state.get(delivery_key(message_id))) < 2048  # the pending body holds a link, not the image
    small = store.create({"prompt": "b"}, ANYONE, webhook=HOOK)
    store.complete(small.task_id, IMAGE)
    ((small_id, _, _),) = events(deliveries, small.task_id)
    for message_id, status in ((small_id, 204), (message_id, 500)):
        claimed = deliveries.claim(message_id, lease_s=10)
        after = deliveries.finish_attempt(claimed, status, None if status == 204 else "answered 500", max_attempts=1,
                                          backoff_s=1.0)
        assert after.state in ("delivered", "failed") and after.body == ""
        assert deliveries.get(message_id).body == ""


class _DueIndexFailsOnce(MemoryState):
    """A state that goes away once, just after a delivery was written and before it was indexed as due."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def index_add(self, name, member, score, ttl_s=None):
        if name == DUE and not self.failed:
            self.failed = True
            raise StateUnavailable("the state went away")
        return super().index_add(name, member, score, ttl_s)


def test_a_final_event_queued_part_way_is_indexed_when_its_record_is_written_again():
    state = _DueIndexFailsOnce()
    store, deliveries, _ = stores(state)
    task = store.create({"prompt": "a"}, ANYONE, webhook=HOOK)
    with pytest.raises(StateUnavailable):
        store.complete(task.task_id, IMAGE)
    store.complete(task.task_id, IMAGE)  # the runner records it again (record_pending)
    assert deliveries.due(time.time() + 1, 10) == [event_message_id(task.task_id, "completed")]
