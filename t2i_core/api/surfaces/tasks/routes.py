"""``GET /tasks/generate/progress?task_id=``: the step the engine is at for a task.

BentoML gives ``POST /tasks/generate/submit``, ``GET .../status``, ``GET .../get`` and ``PUT .../cancel``;
progress is ours: status from BentoML's store, step k of steps from the engine.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.api.caller import caller_of
from t2i_core.api.responses import guarded
from t2i_core.api.surfaces.tasks.store import engine_request_id, existing_task
from t2i_core.common.paths import TASK_ROUTE


def task_routes(get_frontend: Callable[[], Any]) -> list[Route]:
    @guarded
    async def progress(request: Request) -> Response:
        """``{"task_id", "status", "state", "step", "steps", "fraction"}``: status from BentoML's
        store, step k of steps from the engine (``steps`` is null until the pipeline starts). With
        ``preview=1``: ``current_image`` (base64 PNG of the latents decoded at ``current_image_step``)."""
        task_id, status = await existing_task(request)
        front = get_frontend()
        work_id = engine_request_id(task_id)
        engine = await front.progress(work_id)
        if status == "completed":
            engine = {**engine, "state": "done"}
        elif status == "canceled" and engine.get("state") == "queued":  # cancelled before the engine took it
            engine = {**engine, "state": "cancelled"}
        steps = engine.get("steps")
        step = engine.get("step", 0)
        fraction = 1.0 if status == "completed" else round(step / steps, 4) if steps else 0.0
        body = {"task_id": task_id, "status": status, **engine, "fraction": fraction}
        if request.query_params.get("preview", "").lower() in ("1", "true", "yes"):
            # the latest decode of the latents (null until one is made: the engine decodes after the next step)
            # a live preview only while the task can still run (a failed task's work may never have started)
            running = status in ("pending", "in_progress") and engine.get("state") in ("queued", "running")
            previews = await front.previews(work_id, 0, "png", want_next=running, caller=caller_of(request))
            latest = previews[-1] if previews else None
            body["current_image"] = base64.b64encode(latest[1]).decode("ascii") if latest else None
            body["current_image_step"] = latest[0].step if latest else None
        return JSONResponse(body)

    return [Route(f"{TASK_ROUTE}/progress", progress, methods=["GET"])]


