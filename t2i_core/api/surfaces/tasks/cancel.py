"""Task cancellation that stops the work.

BentoML 1.4.39's cancel route marks the task canceled in its store but answers 400 ("not supported in
local development server") and never stops the work. ``TaskCancelMiddleware`` lets BentoML mark it
(BentoML's connection is the store's only writer) and answers with the task's real status instead.
The running task watches its own status (``store.until_cancelled``) and then tells the engine to
stop, which happens at the next denoising step. Any API worker can take the cancel: the store and the
engine are shared.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from t2i_core.api.responses import error_response_for
from t2i_core.api.surfaces.tasks.store import CANCEL_PATH, existing_task, task_status
from t2i_core.common.errors import Conflict, T2IError


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
            task_id, status = await existing_task(request)
            if status == "in_progress":
                await self.app(scope, receive, _discard)  # BentoML marks it canceled (and answers 400)
                status = await asyncio.to_thread(task_status, task_id)
            if status != "canceled":
                raise Conflict(f"task {task_id} has already finished ({status}); nothing to cancel",
                               param="task_id", code="task_finished")
            response: Response = JSONResponse({"task_id": task_id, "status": status})
        except T2IError as err:
            response = error_response_for(CANCEL_PATH, err)
        await response(scope, receive, send)


async def _discard(message: dict[str, Any]) -> None:
    """An ASGI send that drops the response (BentoML's 400 for a cancel)."""
