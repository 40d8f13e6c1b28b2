"""The task runner (t2i_core/api/surfaces/tasks/runner.py) keeps an outcome it could not record while
the shared state was away, and records it once the state is back: a real Redis, paused (SIGSTOP) so
that it keeps its data but answers nothing, then resumed."""

from __future__ import annotations

import asyncio
import os
import signal

from conftest import free_port
from t2i_core.api.callers import Caller
from t2i_core.api.surfaces.tasks.runner import TaskRunner
from t2i_core.api.surfaces.tasks.store import StoredResult, TaskStore
from t2i_core.common.errors import T2IError
from t2i_core.state.redis import RedisState


def test_an_outcome_made_while_redis_is_away_is_recorded_when_it_is_back(redis_server):
    from redis_server import start_redis

    own = start_redis(free_port())
    state = RedisState(own.url)
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    runner = TaskRunner(store, get_flow=lambda: None)
    done = store.create({"prompt": "a"}, Caller(owner=None))
    failed = store.create({"prompt": "b"}, Caller(owner=None))
    image = StoredResult(status_code=200, media_type="image/png", headers={}, body=b"png")

    async def scenario() -> None:
        os.kill(own.proc.pid, signal.SIGSTOP)  # away: every call times out
        try:
            assert await runner._record(done.task_id, store.complete, done.task_id, image) is None
            await runner._fail(failed.task_id, T2IError("it broke"))
            assert await runner.record_pending() == 2  # still away: both kept
        finally:
            os.kill(own.proc.pid, signal.SIGCONT)
        assert await runner.record_pending() == 0
        for task in runner._upkeep:
            task.cancel()

    try:
        asyncio.run(scenario())
        assert store.get(done.task_id).status == "completed"
        assert store.result(done.task_id, Caller(owner=None))[1] == image
        after = store.get(failed.task_id)
        assert after.status == "failed" and after.error["message"] == "it broke"
    finally:
        state.close()
        own.stop()
