"""BentoML's task store, read only: a task's status, and waiting for its cancellation.

BentoML (``@bentoml.task``) keeps every task in a SQLite file shared by the API workers; only
BentoML's own connection writes it (a second writer left BentoML's connection with a stale read
snapshot, and every later write failed with "database is locked"). A task's work runs in the engine
under ``task-<task_id>``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing

from starlette.requests import Request

from t2i_core.common.errors import InvalidRequest, NotFound, T2IError, TaskCanceled
from t2i_core.common.paths import TASK_ROUTE

CANCEL_PATH = f"{TASK_ROUTE}/cancel"
POLL_S = 0.25


def engine_request_id(task_id: str) -> str:
    return f"task-{task_id}"


def _store_file() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.result_store_file.get()


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(_store_file(), timeout=30.0)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def task_status(task_id: str) -> str | None:
    """The task's status in BentoML's store (in_progress, completed, failed, canceled); None if unknown.
    Read only, on a connection closed at once (BentoML's connection is the store's only writer)."""
    with closing(_connect()) as conn:
        row = conn.execute("SELECT status FROM result WHERE task_id = ?", (task_id,)).fetchone()
    return row[0] if row else None


async def until_cancelled(task_id: str, poll_s: float = POLL_S) -> T2IError:
    """Returns (the error to answer with) once the task has been marked canceled."""
    while await asyncio.to_thread(task_status, task_id) != "canceled":
        await asyncio.sleep(poll_s)
    return TaskCanceled("the task was canceled; its work was stopped")


async def existing_task(request: Request) -> tuple[str, str]:
    """The ``task_id`` query parameter and the task's status; InvalidRequest / NotFound otherwise."""
    task_id = request.query_params.get("task_id", "")
    if not task_id:
        raise InvalidRequest("task_id is required (query parameter)", param="task_id")
    status = await asyncio.to_thread(task_status, task_id)
    if status is None:
        raise NotFound(f"task_id {task_id!r} not found", param="task_id")
    return task_id, status


