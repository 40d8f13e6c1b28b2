"""``GET /tasks/generate/progress?task_id=``: the step the engine is at for a task.

BentoML gives ``POST /tasks/generate/submit``, ``GET .../status``, ``GET .../get`` and ``PUT .../cancel``;
progress is ours: status from BentoML's store, step k of steps from the engine.
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.api.responses import error_response_for
from t2i_core.api.surfaces.tasks.store import engine_request_id, existing_task
from t2i_core.common.errors import T2IError
from t2i_core.common.paths import TASK_ROUTE


def task_routes(get_frontend: Callable[[], Any]) -> list[Route]:
    async def progress(request: Request) -> Response:
        """``{"task_id", "status", "state", "step", "steps", "fraction"}``: status from BentoML's
        store, step k of steps from the engine (``steps`` is null until the pipeline starts)."""
        try:
            task_id, status = await existing_task(request)
        except T2IError as err:
            return error_response_for(request.url.path, err)
        engine = await get_frontend().progress(engine_request_id(task_id))
        if status == "completed":
            engine = {**engine, "state": "done"}
        steps = engine.get("steps")
        step = engine.get("step", 0)
        fraction = 1.0 if status == "completed" else round(step / steps, 4) if steps else 0.0
        return JSONResponse({"task_id": task_id, "status": status, **engine, "fraction": fraction})

    return [Route(f"{TASK_ROUTE}/progress", progress, methods=["GET"])]


