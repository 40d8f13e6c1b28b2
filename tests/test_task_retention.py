"""Task-store retention (t2i_core/api/surfaces/tasks/retention.py) on BentoML's own ``Sqlite3Store``.

Every store here is made the way BentoML makes it (``Sqlite3Store.init_db`` at deployment, then
``Sqlite3Store(path)`` opened with ``__aenter__``) on a file under tmp_path, and every write, ours
included, goes through that store's connection.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Awaitable

import pytest
from _bentoml_impl.tasks.result import ResultStatus, Sqlite3Store
from starlette.requests import Request
from starlette.responses import Response

from t2i_core.api.surfaces.tasks import retention
from t2i_core.api.surfaces.tasks.retention import TaskStoreRetention, _utc_text, cap_task_store


@pytest.fixture(autouse=True)
def no_background_retention(monkeypatch):
    """When service.py has been imported in this process (other tests do), every Sqlite3Store runs the
    server's retention in the background: these tests run their checks themselves, so that one is off."""
    monkeypatch.setattr(retention, "_limits", {"ttl_s": 0, "max_bytes": 0, "interval_s": 1e9})

pytestmark = pytest.mark.timeout(120)
KB = 1024


def run(coro: Awaitable[Any], limit_s: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, limit_s))


def _request(body: bytes = b'{"prompt": "a cat"}') -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/tasks/generate/submit", "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}
    return Request(scope, receive)


async def _submit(store: Sqlite3Store, body: bytes = b'{"prompt": "a cat"}') -> str:
    return await store.new_entry("generate_task", _request(body))


async def _finish(store: Sqlite3Store, task_id: str, size: int, status: ResultStatus = ResultStatus.COMPLETED,
                  finished_at: float | None = None) -> None:
    """BentoML's set_result with a ``size``-byte answer, then (test only) its completion time moved."""
    await store.set_result(task_id, Response(os.urandom(size), media_type="image/png"), status)
    if finished_at is not None:
        await store._conn.execute("UPDATE result SET completed_at = ? WHERE task_id = ?",
                                  (_utc_text(finished_at), task_id))
        await store._conn.commit()


async def _ids(store: Sqlite3Store) -> set[str]:
    async with store._conn.execute("SELECT task_id FROM result") as cursor:
        return {row[0] for row in await cursor.fetchall()}


def _open(tmp_path: Path) -> Sqlite3Store:
    path = str(tmp_path / "task_result.db")
    Sqlite3Store.init_db(path)  # what BentoML's server_on_deployment does
    return Sqlite3Store(path)


async def _still_writable(store: Sqlite3Store, path: str) -> None:
    """BentoML's writes and a reader like t2i_core/api/surfaces/tasks/store.py still work."""
    task_id = await _submit(store)
    await store.set_status(task_id, ResultStatus.CANCELED)
    await _finish(store, task_id, 1000, ResultStatus.CANCELED)
    row = await store.get(task_id)
    assert row.status is ResultStatus.CANCELED and row.result.status_code == 200
    with closing(sqlite3.connect(path, timeout=30.0)) as reader:
        assert reader.execute("SELECT status FROM result WHERE task_id = ?", (task_id,)).fetchone() == ("canceled",)
    second = await _submit(store)
    await _finish(store, second, 1000)
    assert (await store.get_status(second)).status is ResultStatus.COMPLETED


def test_age_deletes_old_finished_results_only(tmp_path: Path) -> None:
    async def main() -> None:
        now = time.time()
        async with _open(tmp_path) as store:
            old = {}
            for status in (ResultStatus.COMPLETED, ResultStatus.FAILED, ResultStatus.CANCELED):
                old[status] = await _submit(store)
                await _finish(store, old[status], 2000, status, finished_at=now - 7200)
            recent = await _submit(store)
            await _finish(store, recent, 2000, finished_at=now - 60)
            running = await _submit(store)  # in progress for hours: never deleted
            await store._conn.execute("UPDATE result SET created_at = '2000-01-01 00:00:00' WHERE task_id = ?",
                                      (running,))
            await store._conn.commit()
            canceled_running = await _submit(store)  # canceled, its work not ended yet (no completed_at)
            await store.set_status(canceled_running, ResultStatus.CANCELED)

            sweep = await TaskStoreRetention(ttl_s=3600, max_bytes=0, interval_s=60).check(store)
            assert sweep.expired == 3
            assert await _ids(store) == {recent, running, canceled_running}
            assert (await store.get_status(running)).status is ResultStatus.IN_PROGRESS
            with pytest.raises(KeyError):
                await store.get(old[ResultStatus.COMPLETED])  # BentoML's status/get then answer 404
            await _still_writable(store, str(tmp_path / "task_result.db"))

    run(main())


def test_age_check_runs_only_once_the_oldest_can_have_expired(tmp_path: Path) -> None:
    async def main() -> None:
        now = time.time()
        async with _open(tmp_path) as store:
            first = await _submit(store)
            await _finish(store, first, 1000, finished_at=now - 100)
            keeper = TaskStoreRetention(ttl_s=3600, max_bytes=0, interval_s=60)
            assert (await keeper.check(store, now)).expired == 0
            assert keeper._next_expiry == pytest.approx(now - 100 + 3600, abs=0.01)

            executed: list[str] = []
            original = store._conn.execute

            def counting(sql: str, *args: Any) -> Any:
                executed.append(sql)
                return original(sql, *args)

            store._conn.execute = counting  # type: ignore[method-assign]
            assert (await keeper.check(store, now + 3000)).expired == 0
            assert executed == []  # nothing can be old yet: no SQL at all
            assert (await keeper.check(store, now + 3501)).expired == 1
            store._conn.execute = original  # type: ignore[method-assign]
            assert await _ids(store) == set()
            assert keeper._next_expiry == pytest.approx(now + 3501 + 3600, abs=0.01)  # none left

    run(main())


def test_size_cap_removes_oldest_finished_first(tmp_path: Path) -> None:
    async def main() -> None:
        now = time.time()
        async with _open(tmp_path) as store:
            # ten finished results of 100-280 KB, finished in an order unlike their submission order
            order = [3, 0, 7, 1, 9, 4, 2, 8, 6, 5]
            ids = [await _submit(store) for _ in order]
            for task_id, i in zip(ids, order):
                await _finish(store, task_id, (100 + 20 * i) * KB, finished_at=now - 1000 + 10 * i)
            oldest_first = [task_id for _, task_id in sorted(zip(order, ids))]
            big_running = await _submit(store, b'{"prompt": "' + b"x" * 300 * KB + b'"}')  # in progress

            keeper = TaskStoreRetention(ttl_s=0, max_bytes=0, interval_s=60)
            used = await keeper.used_bytes(store)
            keeper.max_bytes = int(used * 0.6)
            sweep = await keeper.check(store, now)
            left = await _ids(store)
            kept = [task_id for task_id in oldest_first if task_id in left]
            assert sweep.evicted == len(oldest_first) - len(kept) > 0
            assert kept == oldest_first[-len(kept):]  # the newest ones, whatever their size
            assert big_running in left
            assert sweep.used_after is not None and sweep.used_after <= keeper.max_bytes
            assert sweep.used_after == await keeper.used_bytes(store)

            # under the cap: nothing more goes
            assert (await keeper.check(store, now)).evicted == 0
            # the file does not shrink, but new results reuse the freed pages
            path = str(tmp_path / "task_result.db")
            file_before = os.path.getsize(path)
            for _ in range(sweep.evicted):
                await _finish(store, await _submit(store), 100 * KB)
            assert os.path.getsize(path) <= file_before + 64 * KB
            await _still_writable(store, path)

    run(main())


def test_size_cap_never_deletes_in_progress(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        async with _open(tmp_path) as store:
            done = await _submit(store)
            await _finish(store, done, 50 * KB)
            running = [await _submit(store, b"x" * 200 * KB) for _ in range(3)]
            keeper = TaskStoreRetention(ttl_s=3600, max_bytes=64 * KB, interval_s=60)
            sweep = await keeper.check(store)
            assert sweep.evicted == 1
            assert await _ids(store) == set(running)  # over the cap still: the rest are in progress
            assert (await keeper.check(store)).evicted == 0

    with caplog.at_level("WARNING", logger="t2i.tasks"):
        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.name == "t2i.tasks"]
    assert len(warnings) == 1 and "no finished result left" in warnings[0]  # once, not every check


def test_deleting_beside_bentoml_writes_no_lock_errors(tmp_path: Path, monkeypatch) -> None:
    """Deletes interleaved with BentoML's own submits, completions, status reads and a second process's
    reads (as t2i_core/api/surfaces/tasks/store.py reads): no "database is locked", nothing lost."""
    path = str(tmp_path / "task_result.db")
    monkeypatch.setattr(retention, "CHUNK_ROWS", 3)  # many small chunks, so BentoML's calls run between

    async def main() -> None:
        now = time.time()
        async with _open(tmp_path) as store:
            for _ in range(60):
                await _finish(store, await _submit(store), 20 * KB, finished_at=now - 7200)
            keeper = TaskStoreRetention(ttl_s=3600, max_bytes=0, interval_s=60)
            stop = asyncio.Event()

            async def bentoml_traffic() -> list[str]:
                made = []
                for i in range(40):
                    task_id = await _submit(store)
                    assert (await store.get_status(task_id)).status is ResultStatus.IN_PROGRESS
                    await _finish(store, task_id, 20 * KB)
                    made.append(task_id)
                return made

            def reader() -> int:
                reads = 0
                while not stop.is_set():
                    with closing(sqlite3.connect(path, timeout=30.0)) as conn:
                        conn.execute("PRAGMA busy_timeout=5000")
                        conn.execute("SELECT status FROM result LIMIT 5").fetchall()
                    reads += 1
                return reads

            reading = asyncio.create_task(asyncio.to_thread(reader))
            made, sweep = await asyncio.gather(bentoml_traffic(), keeper.check(store, now))
            stop.set()
            assert await reading > 0
            assert sweep.expired == 60
            assert await _ids(store) == set(made)
            for task_id in made:
                assert (await store.get(task_id)).status is ResultStatus.COMPLETED
            await _still_writable(store, path)

    run(main())


def test_stopping_ends_a_check_after_its_current_chunk(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(retention, "CHUNK_ROWS", 1)

    async def main() -> None:
        now = time.time()
        async with _open(tmp_path) as store:
            for _ in range(200):
                await _finish(store, await _submit(store), 1000, finished_at=now - 7200)
            keeper = TaskStoreRetention(ttl_s=3600, max_bytes=0, interval_s=60)
            stop = asyncio.Event()
            loop_task = asyncio.create_task(keeper.run(store, stop))
            while len(await _ids(store)) == 200:
                await asyncio.sleep(0)
            stop.set()
            await asyncio.wait_for(loop_task, 5)
            assert 0 < len(await _ids(store)) < 200  # stopped part way, each chunk committed
            await _still_writable(store, str(tmp_path / "task_result.db"))

    run(main())


def test_cap_task_store_runs_in_bentoml_store_and_stops_with_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Sqlite3Store, "__aenter__", Sqlite3Store.__aenter__)  # restored after the test
    monkeypatch.setattr(Sqlite3Store, "__aexit__", Sqlite3Store.__aexit__)
    monkeypatch.setattr(retention, "_limits", {})
    assert cap_task_store(0.3, 0, 0.05)

    async def main() -> None:
        store = _open(tmp_path)
        async with store:
            _, _, loop_task = store._t2i_retention
            old = await _submit(store)
            await _finish(store, old, 1000)
            running = await _submit(store)
            deadline = time.monotonic() + 20
            while old in await _ids(store):
                assert time.monotonic() < deadline, "the finished result was not deleted"
                await asyncio.sleep(0.05)
            assert running in await _ids(store)
            await _still_writable(store, str(tmp_path / "task_result.db"))
        assert loop_task.done() and not loop_task.cancelled()
        assert store._conn._connection is None  # BentoML's __aexit__ closed it

    run(main())


def test_cap_task_store_off(monkeypatch) -> None:
    monkeypatch.setattr(Sqlite3Store, "__aenter__", Sqlite3Store.__aenter__)
    monkeypatch.setattr(Sqlite3Store, "__aexit__", Sqlite3Store.__aexit__)
    original = Sqlite3Store.__aenter__
    assert not cap_task_store(3600, 2**28, 0)  # no checks
    assert not cap_task_store(0, 0, 60)  # no limits
    monkeypatch.setattr(retention, "written_for", lambda *_: False)  # another BentoML version
    assert not cap_task_store(3600, 2**28, 60)
    assert Sqlite3Store.__aenter__ is original


def test_reaches_the_store_bentoml_opens_in_the_api_process(tmp_path: Path, monkeypatch) -> None:
    """A real BentoML app with a task: its lifespan opens the store, our loop runs on it, and a finished
    task's result goes (its status then 404) while BentoML keeps taking tasks."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from starlette.testclient import TestClient

    monkeypatch.setattr(Sqlite3Store, "__aenter__", Sqlite3Store.__aenter__)
    monkeypatch.setattr(Sqlite3Store, "__aexit__", Sqlite3Store.__aexit__)
    monkeypatch.setattr(retention, "_limits", {})
    assert cap_task_store(1.0, 0, 0.1)

    @bentoml.service(name="retention_probe")
    class Probe:
        @bentoml.task
        def echo(self, n: int) -> int:
            return n

    path = str(tmp_path / "task_result.db")
    Sqlite3Store.init_db(path)
    with BentoMLContainer.result_store_file.patch(path), TestClient(Probe.to_asgi()) as client:
        task_id = client.post("/echo/submit", json={"n": 7}).json()["task_id"]
        deadline = time.monotonic() + 20
        seen = []
        while True:
            response = client.get("/echo/status", params={"task_id": task_id})
            seen.append(response.json().get("status") if response.status_code == 200 else response.status_code)
            if response.status_code == 404:
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        assert "completed" in seen  # it finished, could be read, then went
        again = client.post("/echo/submit", json={"n": 8}).json()["task_id"]
        deadline = time.monotonic() + 20
        while client.get("/echo/status", params={"task_id": again}).json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/echo/get", params={"task_id": again}).json() == 8
