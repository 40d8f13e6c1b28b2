"""Generation as a BentoML task: submit, status, progress, result, cancel.

BentoML (``@bentoml.task``) gives ``POST /tasks/generate/submit``, ``GET .../status``, ``GET .../get``
and ``PUT .../cancel``, and keeps every task in a SQLite file shared by the API workers. What it does
not do, this module adds:

- progress: ``GET /tasks/generate/progress?task_id=`` answers the step the engine is at (the engine
  tracks it per request id; a task's work runs under ``task-<task_id>``);
- cancellation: BentoML 1.4.39's cancel route marks the task canceled in its store but answers 400
  ("not supported in local development server") and never stops the work. ``TaskCancelMiddleware``
  lets BentoML mark it (only BentoML's own connection writes the store: a second writer left
  BentoML's connection with a stale read snapshot, and every later write failed with "database is
  locked") and answers with the task's real status instead. The running task watches its own
  status (``until_cancelled``) and then tells the engine to stop, which happens at the next
  denoising step. Any API worker can take the cancel: the store and the engine are shared.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import Conflict, InvalidRequest, NotFound, T2IError, TaskCanceled
from .http import error_response
from .routes import TASK_ROUTE

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


async def _existing_task(request: Request) -> tuple[str, str]:
    """The ``task_id`` query parameter and the task's status; InvalidRequest / NotFound otherwise."""
    task_id = request.query_params.get("task_id", "")
    if not task_id:
        raise InvalidRequest("task_id is required (query parameter)", param="task_id")
    status = await asyncio.to_thread(task_status, task_id)
    if status is None:
        raise NotFound(f"task_id {task_id!r} not found", param="task_id")
    return task_id, status


def task_routes(get_frontend: Callable[[], Any]) -> list[Route]:
    async def progress(request: Request) -> Response:
        """``{"task_id", "status", "state", "step", "steps", "fraction"}``: status from BentoML's
        store, step k of steps from the engine (``steps`` is null until the pipeline starts)."""
        try:
            task_id, status = await _existing_task(request)
        except T2IError as err:
            return error_response(err)
        engine = await get_frontend().progress(engine_request_id(task_id))
        if status == "completed":
            engine = {**engine, "state": "done"}
        steps = engine.get("steps")
        step = engine.get("step", 0)
        fraction = 1.0 if status == "completed" else round(step / steps, 4) if steps else 0.0
        return JSONResponse({"task_id": task_id, "status": status, **engine, "fraction": fraction})

    return [Route(f"{TASK_ROUTE}/progress", progress, methods=["GET"])]


class TaskCancelMiddleware:
    """Answers ``PUT /tasks/generate/cancel?task_id=`` (see the module docstring): 200 with the task's
    status (``canceled``), 404 for an unknown task, 409 when it had already finished."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != CANCEL_PATH or scope.get("method") != "PUT":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            task_id, status = await _existing_task(request)
            if status == "in_progress":
                await self.app(scope, receive, _discard)  # BentoML marks it canceled (and answers 400)
                status = await asyncio.to_thread(task_status, task_id)
            if status != "canceled":
                raise Conflict(f"task {task_id} has already finished ({status}); nothing to cancel",
                               param="task_id", code="task_finished")
            response: Response = JSONResponse({"task_id": task_id, "status": status})
        except T2IError as err:
            response = error_response(err)
        await response(scope, receive, send)


async def _discard(message: dict[str, Any]) -> None:
    """An ASGI send that drops the response (BentoML's 400 for a cancel)."""
