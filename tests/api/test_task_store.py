"""The task store (t2i_core/api/surfaces/tasks/store.py) on each backend: one outcome per task, owners
kept apart, lost runners reported, results expired and capped."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import TMP
from t2i_core.api.callers import Caller
from t2i_core.api.surfaces.tasks.store import RESULT_BYTES, StoredResult, TaskStore
from t2i_core.common.errors import Conflict, Gone, InvalidRequest, NotFound, TaskCanceled
from t2i_core.state.memory import MemoryState
from t2i_core.state.redis import RedisState
from t2i_core.state.sqlite import SqliteState

ALICE = Caller(owner="key:alice")
BOB = Caller(owner="key:bob")
ADMIN = Caller(owner="key:admin", admin=True)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def state(request):
    if request.param == "redis":
        made = RedisState(f"{request.getfixturevalue('redis_server').url}?prefix=tasks{time.monotonic_ns()}:")
    else:
        made = MemoryState() if request.param == "memory" else SqliteState(str(TMP / "tasks" / f"{time.monotonic_ns()}.sqlite"))
    yield made
    made.close()


def result(size: int = 100) -> StoredResult:
    return StoredResult(status_code=200, media_type="image/png", headers={"x-seed": "1"}, body=b"p" * size)


def test_completed_task_keeps_its_result(state):
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    record = store.create({"prompt": "a"}, ALICE)
    with pytest.raises(InvalidRequest, match="not completed yet"):
        store.result(record.task_id, ALICE)
    store.complete(record.task_id, result())
    done, stored = store.result(record.task_id, ALICE)
    assert done.status == "completed" and stored == result()
    assert StoredResult.unpack(result().pack()) == result()
    with pytest.raises(Conflict, match="already finished"):
        store.cancel(record.task_id, ALICE)


def test_a_cancel_and_the_completion_racing_have_one_winner(state):
    """Cancelled: no result, ever; completed: the cancel is a 409. Never "canceled" with an image."""
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    outcomes = set()
    for _ in range(60):
        record = store.create({"prompt": "a"}, ALICE)
        cancel_answer: list[object] = []
        start = threading.Barrier(2)

        def cancel() -> None:
            start.wait()
            try:
                cancel_answer.append(store.cancel(record.task_id, ALICE).status)
            except Conflict:
                cancel_answer.append("conflict")

        def complete() -> None:
            start.wait()
            store.complete(record.task_id, result())

        threads = [threading.Thread(target=cancel), threading.Thread(target=complete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = store.get(record.task_id)
        assert final is not None
        if cancel_answer == ["canceled"]:
            assert final.status == "canceled"
            with pytest.raises(TaskCanceled):
                store.result(record.task_id, ALICE)
            assert state.get(store.result_key(record.task_id)) is None
        else:
            assert cancel_answer == ["conflict"] and final.status == "completed"
            assert store.result(record.task_id, ALICE)[1] == result()
        outcomes.add(final.status)
    assert outcomes <= {"canceled", "completed"}


def test_tasks_belong_to_their_submitter(state):
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    record = store.create({"prompt": "a"}, ALICE)
    for act in (lambda c: store.read(record.task_id, c), lambda c: store.cancel(record.task_id, c),
                lambda c: store.result(record.task_id, c)):
        with pytest.raises(NotFound, match="not found"):  # the same answer as an unknown id
            act(BOB)
    assert store.read(record.task_id, ADMIN).task_id == record.task_id
    assert store.read(record.task_id, Caller(owner=None)).task_id == record.task_id  # a server without keys
    assert store.cancel(record.task_id, ALICE).status == "canceled"
    assert "key" not in store.get(record.task_id).model_dump_json().lower().replace('"key:alice"', "")


def test_a_task_whose_runner_stopped_is_failed_not_in_progress_forever(state):
    gone = TaskStore(state, ttl_s=3600, max_bytes=0, runner="gone")
    record = gone.create({"prompt": "a"}, ALICE)
    state.delete("runner:gone")  # the worker was killed: its lease lapses
    other = TaskStore(state, ttl_s=3600, max_bytes=0, runner="other")
    seen = other.read(record.task_id, ALICE)
    assert seen.status == "failed" and seen.error["code"] == "task_lost" and seen.error_status == 503
    gone.complete(record.task_id, result())  # too late: it stays failed, its result is not kept
    assert other.read(record.task_id, ALICE).status == "failed"
    assert state.get(other.result_key(record.task_id)) is None


def test_results_over_the_cap_go_oldest_first(state):
    store = TaskStore(state, ttl_s=3600, max_bytes=1000)
    ids = []
    for _ in range(12):
        record = store.create({"prompt": "a"}, ALICE)
        store.complete(record.task_id, result(180))
        ids.append(record.task_id)
    assert int(state.get(RESULT_BYTES)) <= 1000
    with pytest.raises(Gone, match="T2I_TASK_STORE_MAX_BYTES=1000"):
        store.result(ids[0], ALICE)
    assert store.result(ids[-1], ALICE)[1] == result(180)
    assert store.read(ids[0], ALICE).status == "completed"  # the record stays; only the image went


def test_finished_tasks_expire_running_ones_stay(state):
    store = TaskStore(state, ttl_s=60, max_bytes=10_000)
    finished = store.create({"prompt": "a"}, ALICE)
    store.complete(finished.task_id, result())
    running = store.create({"prompt": "b"}, ALICE)
    assert store.sweep(time.time() + 30) == 0
    assert store.sweep(time.time() + 61) == 1
    with pytest.raises(NotFound):
        store.read(finished.task_id, ALICE)
    assert state.get(store.result_key(finished.task_id)) is None and int(state.get(RESULT_BYTES)) == 0
    assert store.read(running.task_id, ALICE).status == "in_progress"
    assert store.sweep(time.time() + 200) == 0  # still running: looked at again later


def kept_bytes(store: TaskStore, ids: list[str]) -> int:
    """The bytes of the results that are still there (what the counter must say)."""
    return sum(len(raw) for raw in store.state.get_many([store.result_key(i) for i in ids]) if raw is not None)


def test_the_result_counter_does_not_drift(state):
    """Removals that race, a completion recorded twice (retried after a failure part way), a record
    that expired before the sweep: the counter still says what the kept results take."""
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    ids = []
    for _ in range(6):
        record = store.create({"prompt": "a"}, ALICE)
        store.complete(record.task_id, result(100))
        ids.append(record.task_id)
    store.complete(ids[0], result(100))  # the runner's retry: counted once
    assert int(state.get(RESULT_BYTES)) == kept_bytes(store, ids)
    # two workers drop the same results at once: each is uncounted once
    barrier = threading.Barrier(4)

    def drop(task_ids: list[str]) -> None:
        barrier.wait()
        for task_id in task_ids:
            store._drop_result(task_id)

    threads = [threading.Thread(target=drop, args=(ids[:3],)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(state.get(RESULT_BYTES)) == kept_bytes(store, ids) > 0
    state.delete(store.record_key(ids[4]))  # its record expired (no sweep ran for a while)
    assert store.sweep(time.time() + 7200) == 6  # the expired record too: its id is still in the index
    assert int(state.get(RESULT_BYTES)) == 0 == kept_bytes(store, ids)


def test_a_running_task_whose_runner_is_gone_is_swept_as_lost(state):
    gone = TaskStore(state, ttl_s=60, max_bytes=0, runner="gone")
    record = gone.create({"prompt": "a"}, ALICE)
    state.delete("runner:gone")
    sweeper = TaskStore(state, ttl_s=60, max_bytes=0, runner="sweeper")
    later = time.time() + 61
    assert sweeper.sweep(later) == 0  # finished as lost now, removed a ttl later
    found = sweeper.get(record.task_id)
    assert found.status == "failed" and found.error["code"] == "task_lost"
    assert sweeper.sweep(later + 61) == 1 and sweeper.get(record.task_id) is None


def test_a_sweep_looks_at_a_bounded_number_of_tasks(state):
    store = TaskStore(state, ttl_s=1, max_bytes=0)
    for _ in range(7):
        store.complete(store.create({"prompt": "a"}, ALICE).task_id, result(10))
    assert store.sweep(time.time() + 10, most=3) == 3
    assert store.sweep(time.time() + 10, most=3) == 3
    assert store.sweep(time.time() + 10, most=3) == 1


def test_a_cancel_is_seen_through_its_flag(state):
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    record = store.create({"prompt": "a"}, ALICE)
    assert not store.is_canceled(record.task_id)
    store.cancel(record.task_id, ALICE)
    assert store.is_canceled(record.task_id)
    done = store.create({"prompt": "b"}, ALICE)
    store.complete(done.task_id, result())
    with pytest.raises(Conflict):
        store.cancel(done.task_id, ALICE)
