"""The task routes, ours, at BentoML's paths and in its shapes (its Python client's ``submit``,
``get_status``, ``get``, ``cancel`` and ``retry`` keep working), plus ``progress``:

    POST /tasks/generate/submit              the fields of /generate (JSON or a form) -> {"task_id", "status"}
    GET  /tasks/generate/status?task_id=     {"task_id", "status", "created_at", "executed_at", "completed_at"}
    GET  /tasks/generate/get?task_id=        what /generate answered (409 canceled, 400 while it runs)
    PUT  /tasks/generate/cancel?task_id=     {"task_id", "status": "canceled"} (409 when it had finished)
    POST /tasks/generate/retry?task_id=      a new task with the same fields
    GET  /tasks/generate/progress?task_id=   status, state, step k of steps (and a live preview)
    GET  /tasks/generate/list                the caller's tasks, newest first (status=, limit=, cursor=;
                                             an admin key: everyone's, or key=<name>'s)

A submit may also carry ``webhook``, ``webhook_events``, ``response_format`` and ``priority``
(``options.py``); ``status`` then adds the webhook's deliveries, and, while the task waits, its
queue position and an estimate of when it is done.

Why ours and not BentoML's: BentoML 1.4.39 keeps tasks in a SQLite file per server, one long-lived
connection per API worker, and its reads hold snapshots that made the other worker's writes fail with
"database is locked" under load (tasks lost, statuses wrong); its cancel never stopped the work; it
validated a task's input only when the task ran; it stored every submit's headers (API keys) and
separated no caller from another. These routes keep tasks in the shared state (``T2I_STATE``:
memory, a SQLite file of the server, or Redis for replicas; see ``store.py``), validate at submit
whatever the body's encoding, and give each task to the key that submitted it. The service still
declares its task (``@bentoml.task``) so that ``/schema.json`` tells BentoML's client it is one;
``TaskRoutes`` answers these paths before BentoML's routes are reached.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from t2i_core.api import request_log
from t2i_core.api.callers import Caller, caller_id, caller_of
from t2i_core.api.error_shapes import SurfaceErrors, native
from t2i_core.api.surfaces.reading import read_form, read_json_object
from t2i_core.api.jobs import Jobs
from t2i_core.api.keys.context import SCOPE_KEY, Served, lower_class
from t2i_core.api.keys.records import ANONYMOUS_KEY
from t2i_core.api.surfaces.tasks.options import FIELDS as OPTION_FIELDS, TaskOptions, TaskWebhook, split_options
from t2i_core.api.surfaces.tasks.runner import TaskRunner, engine_request_id
from t2i_core.api.surfaces.tasks.store import TaskRecord, TaskStore
from t2i_core.api.webhooks.addresses import check_webhook_url
from t2i_core.api.webhooks.events import DEFAULT_EVENTS
from t2i_core.common.errors import InvalidRequest, T2IError
from t2i_core.common.paths import TASK_ROUTE
from t2i_core.common.schemas import GenerateRequest
from t2i_core.state.aio import call

ACTIONS = ("submit", "status", "get", "cancel", "retry", "progress", "list")
PATHS = frozenset(f"{TASK_ROUTE}/{action}" for action in ACTIONS)
#: the fields a task takes: those of /generate, and its task options (webhook, priority)
FIELDS = frozenset(GenerateRequest.model_fields) | OPTION_FIELDS
#: a listing's page size: default and most
LIST_LIMIT, LIST_MAX = 20, 100
STATUSES = ("in_progress", "completed", "failed", "canceled")


async def read_task_fields(request: Request) -> dict[str, Any]:
    """The submit's fields from a JSON object or a form (multipart or urlencoded), unknown fields
    refused; a form's control image may be a file."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        data, files = await read_form(request)
        for name, uploads in files.items():
            if name != "control_image" or len(uploads) != 1:
                raise InvalidRequest(f"unexpected file field {name!r} ({len(uploads)} file(s)); a task takes at most "
                                     "one file, control_image", param=name, code="unknown_field")
            data[name] = base64.b64encode(await uploads[0].read()).decode("ascii")
    else:
        data = await read_json_object(request)
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))} for {TASK_ROUTE}/submit; the fields "
                             f"are: {', '.join(sorted(FIELDS))}", param=unknown[0], code="unknown_field")
    return data


def task_routes(get_flow: Callable[[], Any], store: TaskStore, runner: TaskRunner, jobs: Jobs | None = None) -> list[Route]:
    """``jobs``: keys, limits and webhooks (None: a task has no webhook, and no key limit counts it)."""

    def caller(request: Request) -> Caller:
        return caller_of(request)

    async def read(request: Request) -> TaskRecord:
        return await call(store.state, store.read, request.query_params.get("task_id", ""), caller(request))

    async def webhook_of(request: Request, options: TaskOptions) -> TaskWebhook | None:
        """The task's webhook (its own, else its key's default), checked now: 400 when its address is not
        public, or no secret can sign it."""
        key = request.scope.get(SCOPE_KEY, ANONYMOUS_KEY)
        url = options.webhook or key.webhook_url
        if url is None:
            return None
        if jobs is None:
            raise InvalidRequest("webhooks are not available on this server", param="webhook")
        param = "webhook" if options.webhook else f"webhook (the default of key {key.name!r})"
        await check_webhook_url(url, jobs.webhook_allow, param=param)
        if jobs.sender.secret_of(key.name) is None:
            raise InvalidRequest(f"webhooks need a signing secret: key {key.name!r} has no webhook_secret in the keys "
                                 "file and T2I_WEBHOOK_SECRET is unset", param="webhook", code="webhook_secret_missing")
        base = get_flow().settings.public_url or str(request.base_url)
        return TaskWebhook(url=url, events=options.webhook_events or key.webhook_events or DEFAULT_EVENTS,
                           response_format=options.response_format, base_url=base)

    async def start(request: Request, data: dict[str, Any]) -> Response:
        fields, options = split_options(data)
        req = await get_flow().check(fields)  # refused now, not as a task that fails later
        webhook = await webhook_of(request, options)
        key = request.scope.get(SCOPE_KEY, ANONYMOUS_KEY)
        who = caller(request)
        task_id, slot = uuid.uuid4().hex, None
        if jobs is not None and key.max_concurrent is not None:  # the key's limits: its slot while it runs
            slot = f"task-{task_id}"
            await jobs.limits.enter(key, slot, get_flow().settings.retry_after_s)
        try:
            if jobs is not None:  # and its image, counted once it has its slot (a refused task counts none)
                await jobs.limits.take_images(Served(key), 1)
            record = await call(store.state, store.create, fields, who, (request_log.current() or _NoRecord).request_id,
                                priority=lower_class(key, options.priority), webhook=webhook,
                                options=options.model_dump(exclude_defaults=True), task_id=task_id)
        except BaseException:
            if slot is not None and jobs is not None:
                await jobs.limits.leave(key, slot)
            raise
        runner.start(record, req, key, slot)
        request_log.note(task_id=record.task_id)
        return JSONResponse({"task_id": record.task_id, "status": record.status})

    async def submit(request: Request) -> Response:
        return await start(request, await read_task_fields(request))

    async def retry(request: Request) -> Response:
        record = await read(request)
        if record.status == "in_progress":
            raise InvalidRequest(f"task {record.task_id} is not completed yet", param="task_id", code="task_in_progress")
        return await start(request, {**record.input, **record.options})

    async def described(records: list[TaskRecord]) -> list[dict[str, Any]]:
        """Each task's status, with where it waits (position, estimate) and its webhook deliveries."""
        waiting = [r.task_id for r in records if r.status == "in_progress"]
        places = {t: p for t in waiting if (p := runner.place(t)) is not None}
        elsewhere = [t for t in waiting if t not in places]
        if elsewhere:
            places.update(await call(store.state, runner.places_elsewhere, elsewhere))
        bodies = []
        for record in records:
            body = record.status_body()
            if record.status == "in_progress":
                place = places.get(record.task_id)
                body["queue_position"] = place.requests_ahead if place is not None else None
                body["queue_images_ahead"] = place.images_ahead if place is not None else None
                body["queue_state"] = place.state if place is not None else None
                body["eta_s"] = place.eta_s if place is not None else None
            if record.webhook is not None:
                deliveries = ([] if jobs is None else
                              await call(store.state, jobs.deliveries.of_task, record.task_id))
                body["webhook"] = {"url": record.webhook.url, "events": list(record.webhook.events),
                                   "deliveries": [d.public() for d in deliveries]}
            bodies.append(body)
        return bodies

    async def status(request: Request) -> Response:
        return JSONResponse((await described([await read(request)]))[0])

    async def listing(request: Request) -> Response:
        params = request.query_params
        wanted = params.get("status") or None
        if wanted is not None and wanted not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}; got {wanted!r}", param="status")
        try:
            limit = int(params.get("limit") or LIST_LIMIT)
        except ValueError:
            limit = -1
        if not 1 <= limit <= LIST_MAX:
            raise InvalidRequest(f"limit must be an integer from 1 to {LIST_MAX}; got {params.get('limit')!r}",
                                 param="limit")
        records, cursor = await call(store.state, store.list, caller(request), status=wanted, limit=limit,
                                     cursor=params.get("cursor") or None, key=params.get("key") or None)
        return JSONResponse({"tasks": await described(records), "next_cursor": cursor})

    async def get(request: Request) -> Response:
        record, result = await call(store.state, store.result, request.query_params.get("task_id", ""), caller(request))
        if result is None:  # failed: the error it answered
            err = T2IError.from_dict(record.error or {})
            return JSONResponse(native(err), status_code=record.error_status or 500)
        return Response(result.body, status_code=result.status_code, media_type=result.media_type,
                        headers=result.headers)

    async def cancel(request: Request) -> Response:
        record = await call(store.state, store.cancel, request.query_params.get("task_id", ""), caller(request))
        runner.canceled_here(record.task_id)
        return JSONResponse({"task_id": record.task_id, "status": record.status})

    async def progress(request: Request) -> Response:
        """``{"task_id", "status", "state", "step", "steps", "fraction"}``: status from the task store,
        step k of steps from the engine (``steps`` is null until the pipeline starts). With
        ``preview=1``: ``current_image`` (base64 PNG of the latents decoded at ``current_image_step``)."""
        record = await read(request)
        flow = get_flow()
        work_id = engine_request_id(record.task_id)
        engine = await flow.progress(work_id)
        if record.status == "completed":
            engine = {**engine, "state": "done"}
        elif record.status in ("canceled", "failed") and engine.get("state") == "queued":  # ended before it ran
            engine = {**engine, "state": "cancelled" if record.status == "canceled" else "failed"}
        steps = engine.get("steps")
        step = engine.get("step", 0)
        fraction = 1.0 if record.status == "completed" else round(step / steps, 4) if steps else 0.0
        body = {"task_id": record.task_id, "status": record.status, **engine, "fraction": fraction}
        if request.query_params.get("preview", "").lower() in ("1", "true", "yes"):
            # the latest decode of the latents (null until one is made: the engine decodes after the next step)
            running = record.status == "in_progress" and engine.get("state") in ("queued", "running")
            previews = await flow.previews(work_id, 0, "png", want_next=running, caller=caller_id(request))
            latest = previews[-1] if previews else None
            body["current_image"] = base64.b64encode(latest[1]).decode("ascii") if latest else None
            body["current_image_step"] = latest[0].step if latest else None
        return JSONResponse(body)

    handlers = {"submit": (submit, "POST"), "status": (status, "GET"), "get": (get, "GET"),
                "cancel": (cancel, "PUT"), "retry": (retry, "POST"), "progress": (progress, "GET"),
                "list": (listing, "GET")}
    return [Route(f"{TASK_ROUTE}/{action}", handler, methods=[method]) for action, (handler, method) in handlers.items()]


class _NoRecord:
    request_id = ""


class TaskRoutes:
    """ASGI middleware: the task paths (``PATHS``) go to our routes, everything else on to BentoML."""

    def __init__(self, app: Any, routes: list[Route]):
        self.app = app
        # an app (not a bare Router: a wrong method is a 405), answering errors in the native shape
        self.router = Starlette(routes=routes, middleware=[Middleware(SurfaceErrors, shape=native)])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") in PATHS:
            await self.router(scope, receive, send)
            return
        await self.app(scope, receive, send)
