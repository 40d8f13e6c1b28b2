"""BentoML services: the engine (owns the GPU and the pipelines) and the API (the HTTP flow).

Thin by design: routes, HTTP types and error mapping only. The logic lives in ``t2i_core``.
torch and diffusers are imported inside the engine's ``__init__``, so importing this module and
``bentoml build`` stay fast.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import bentoml
from bentoml._internal.context import server_context
from PIL.Image import Image
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from t2i_core.common.startup import startup_settings
from t2i_core.patches import install_patches

# a bad T2I_* value, registry file or default model stops the server at once, in one line naming it
SETTINGS = startup_settings()
install_patches(SETTINGS)  # every library patch, before anything loads torch (t2i_core/patches/)

from t2i_core.api.surfaces import build_surfaces  # noqa: E402
from t2i_core.api.error_shapes import INTERNAL, error_response  # noqa: E402
from t2i_core.common.errors import T2IError  # noqa: E402
from t2i_core.api import request_log  # noqa: E402
from t2i_core.patches.bentoml import NO_SESSION_RENEWAL  # noqa: E402
from t2i_core.patches.gc_freeze import freeze_startup_objects  # noqa: E402
from t2i_core.api.engine_client import ServiceEngineClient
from t2i_core.api.request_flow import RequestFlow, client_left
from t2i_core.api.responses import ErrorBodyMiddleware
from t2i_core.api.guards import IN_FLIGHT, GuardMiddleware, cors_options
from t2i_core.api.image_stores import open_image_store
from t2i_core.api.retry import retry_dropped
from t2i_core.common.shutdown import drain_on_sigterm
from t2i_core.api.surfaces.native import EditUpload, answer, upload_bytes, uploads_bytes
from t2i_core.common.schemas import EditRequest, EngineRequest, EngineResult, GenerateRequest, Preview
from t2i_core.api.surfaces.tasks.routes import TaskRoutes, task_routes
from t2i_core.api.surfaces.tasks.runner import TaskRunner
from t2i_core.api.surfaces.tasks.store import TaskStore
from t2i_core.api.surfaces.tasks.notify import TaskNotifier
from t2i_core.api.surfaces.openai_images import image_link_now
from t2i_core.api.surfaces.tasks.outbox import TaskOutbox
from t2i_core.api.idempotency.middleware import IdempotencyMiddleware
from t2i_core.api.jobs import build_jobs
from t2i_core.common.hangup import ignore_sighup, on_sighup
from t2i_core.state.open import open_state, resolve_spec
from t2i_core.common.paths import TASK_ROUTE
from t2i_core.common.topology import (
    engine_worker_count, image_store_spec, pin_engine_worker, run_folder, server_name, visible_gpus,
)

# Each service its own traffic settings (BentoML adds its task settings, external_queue and
# concurrency 1, to the dict of a service with a task: a shared dict would carry them to the engine).
# BentoML's own timeout stays above ours, so that ours (504, work stopped) answers first.
# concurrency (what BentoCloud scales on): the engine takes a batch at a time, the API its in-flight cap.
ENGINE_TRAFFIC = {"timeout": SETTINGS.request_timeout_s + 30, "concurrency": SETTINGS.max_batch_size}
API_TRAFFIC = {"timeout": SETTINGS.request_timeout_s + 30, "concurrency": SETTINGS.max_in_flight}
log = logging.getLogger("t2i")
# Workers (see t2i_core/common/topology.py): one engine worker per GPU by default, each pinned to its own;
# the run folder is shared by the workers of this server (made by `bentoml serve`'s main process).
RUN_DIR = run_folder(in_worker=server_context.worker_index is not None)
GPUS = visible_gpus()
ENGINE_WORKERS = engine_worker_count(SETTINGS, GPUS)
# What the workers of this server (and, with Redis, its replicas) share: tasks, ... (t2i_core/state/).
STATE_SPEC = resolve_spec(SETTINGS.state, api_workers=SETTINGS.api_workers, engine_workers=ENGINE_WORKERS,
                          run_dir=RUN_DIR)
STATE = open_state(STATE_SPEC)
# Keys (names, roles, classes, weights, limits), usage, webhook deliveries and idempotent answers, on
# that state (t2i_core/api/jobs.py).
JOBS = build_jobs(SETTINGS, STATE)


# Adaptive batching across requests; T2I_MAX_BATCH_SIZE=1 turns it off (BentoML refuses a batchable
# API of size 1): each engine call then serves one request's images, one call at a time.
BATCHING: dict[str, Any] = (
    {"batchable": True, "max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms}
    if SETTINGS.max_batch_size > 1 else {}
)


# runner_connection: see t2i_core/patches/bentoml.py (BentoML's session renewal dropped in-flight calls)
@bentoml.service(
    name="t2i_engine", resources={"gpu": ENGINE_WORKERS if GPUS else 1}, workers=ENGINE_WORKERS, traffic=ENGINE_TRAFFIC,
    runner_connection=NO_SESSION_RENEWAL,
)
class EngineService:
    """Owns the device: loads pipelines once and runs adaptive batches of images."""

    def __init__(self) -> None:
        from t2i_core.engine.core import Engine as CoreEngine

        index = server_context.worker_index or 1
        settings = pin_engine_worker(SETTINGS, index, ENGINE_WORKERS, GPUS)  # before torch starts
        self.core = CoreEngine(settings, state=STATE, server=server_name(RUN_DIR), worker=index)
        registry = self.core.registry
        if registry.using_fallback:
            reason = registry.get("stabilityai/sd-turbo").unavailable_reason()
            log.warning(
                "\n%s\nT2I_MODEL=auto: serving the built-in tiny random-weight model %r, which draws noise.\n"
                "%s.\nThen restart, or set T2I_MODEL to a model id.\n%s",
                "=" * 100, registry.default_id, reason, "=" * 100,
            )
        if SETTINGS.preload:
            self.core.preload()
        # On SIGTERM, keep serving until idle: the API may still send requests it accepted.
        drain_on_sigterm(self.core.idle_since, max_s=SETTINGS.request_timeout_s)
        ignore_sighup()  # SIGHUP reloads the API's keys file (t2i_core/common/hangup.py)

    @bentoml.on_shutdown
    def close(self) -> None:
        self.core.close()

    @bentoml.api(**BATCHING)
    def generate(self, requests: list[EngineRequest]) -> list[EngineResult]:
        return self.core.run(requests)

    @bentoml.api(**BATCHING)
    def edit(self, requests: list[EngineRequest]) -> list[EngineResult]:
        return self.core.run(requests)

    @bentoml.api
    async def stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.core.stats)

    # Async, answered beside the batch: BentoML runs sync methods on one thread (``threads``: 1), which
    # the batch holds. With several engine workers they read and write the shared ledger file, on
    # threads of their own (asyncio.to_thread), not on the event loop.
    @bentoml.api
    async def model_states(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.core.model_states)

    @bentoml.api
    async def addon_states(self) -> dict[str, list[dict[str, Any]]]:
        """The registered LoRA adapters and ControlNets, with where they are loaded."""
        return await asyncio.to_thread(self.core.addon_states)

    @bentoml.api
    async def cancel(self, request_ids: list[str]) -> int:
        """Stop work for these requests (timed out, or their client left), on whichever worker runs them."""
        return await asyncio.to_thread(self.core.cancel, request_ids)

    @bentoml.api
    async def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Where these requests are: queued, running (step k of n), done or cancelled."""
        return await asyncio.to_thread(self.core.progress, request_ids)

    @bentoml.api
    async def previews(self, request_id: str, since: int = 0, want_next: bool = False, caller: str = "") -> list[Preview]:
        """The partial images of ``request_id`` made so far, from index ``since`` on; ``want_next``: also
        decode its latents after its next step (a live preview, bounded per ``caller``)."""
        if want_next:
            await asyncio.to_thread(self.core.want_preview, request_id, caller)
        return await asyncio.to_thread(self.core.take_previews, request_id, since)

    @bentoml.api
    async def model_action(self, action: str, model_id: str) -> dict[str, Any]:
        """load / unload / set_default; applied on the engine's torch thread, between batches. Async:
        with several engine workers the call then waits for the others, and BentoML's one thread for
        sync methods must stay free for batches meanwhile."""
        return await asyncio.to_thread(self.core.model_action, action, model_id)


@bentoml.service(name="t2i", workers=SETTINGS.api_workers, traffic=API_TRAFFIC)
class API:
    """HTTP flow: validation, image decoding/encoding, and every public route."""

    engine = bentoml.depends(EngineService)

    def __init__(self) -> None:
        self.flow = RequestFlow(ServiceEngineClient(self.engine, SETTINGS), SETTINGS)
        self.flow.limits, self.flow.usage = JOBS.limits, JOBS.usage  # per key (t2i_core/api/keys/)
        on_sighup(JOBS.keyring.reload_in_background)  # the keys file read again
        # On SIGTERM, finish the requests in flight while answering new ones 503 (see t2i_core/common/shutdown.py).
        drain_on_sigterm(IN_FLIGHT.idle_since, max_s=SETTINGS.request_timeout_s, who="the API")
        freeze_startup_objects()  # see t2i_core/patches/gc_freeze.py

    @bentoml.on_startup
    async def start_jobs(self) -> None:
        """On this worker's event loop: the webhook sender, so that deliveries pending from before a
        restart go out without waiting for a new event (t2i_core/api/jobs.py)."""
        JOBS.start()

    @bentoml.api(route="/generate", input_spec=GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **fields: Any) -> Image:
        """Text to image. Answers the image bytes; headers X-Seed, X-Model, X-Inference-Time."""
        return await self._generate(fields, ctx)

    @bentoml.api(route="/edit", input_spec=EditUpload)
    async def edit(self, ctx: bentoml.Context, **fields: Any) -> Image:
        """Image to image: a file upload (multipart) or base64 in JSON; several images (repeated parts, a
        JSON list) for a model that reads several reference images. Answers the image bytes."""
        images = uploads_bytes(fields.pop("image", None))
        mask, control = (upload_bytes(fields.pop(name, None)) for name in ("mask", "control_image"))
        return await answer(ctx, self.flow.edit(
            EditRequest.model_construct(**fields), images or [b""], mask=mask, control_image=control,
            disconnected=client_left(ctx.request),
        ))

    # The fields of /generate (the same input model, so the two cannot drift apart). Declared as a task
    # so that /schema.json tells BentoML's Python client it is one; its task routes (submit, status,
    # get, cancel, retry) are ours (t2i_core/api/surfaces/tasks/routes.py). A plain POST to this route
    # behaves like /generate.
    @bentoml.task(route=TASK_ROUTE, input_spec=GenerateRequest)
    async def generate_task(self, ctx: bentoml.Context, **fields: Any) -> Image:
        """Text to image as a task, for long jobs: submit, then status / progress / get / cancel.
        The result is what /generate answers."""
        return await self._generate(fields, ctx)

    async def _generate(self, fields: dict[str, Any], ctx: bentoml.Context) -> Response:
        # the fields were validated against GenerateRequest by BentoML: not validated twice
        return await answer(ctx, self.flow.generate(
            GenerateRequest.model_construct(**fields), disconnected=client_left(ctx.request),
        ))

    @bentoml.api(route="/stats")
    async def stats(self) -> dict[str, Any]:
        """What the engine has done: images, batches and the sizes of its batches."""
        return await retry_dropped(self.engine.to_async.stats)


# The surfaces beside the native routes (OpenAI /v1, admin, A1111, the replaced servers' routes, the
# playground), each with its own error shape: adapters over the same request flow.
IMAGES = open_image_store(image_store_spec(SETTINGS, RUN_DIR, STATE_SPEC), SETTINGS.image_url_ttl_s,
                          SETTINGS.image_store_max_bytes, STATE)
SURFACES = build_surfaces(lambda: bentoml.get_current_service().flow, IMAGES, STATE, JOBS)
# a task's final webhook event is queued where its final status is written (t2i_core/api/surfaces/tasks/outbox.py)
TASKS = TaskStore(STATE, SETTINGS.task_result_ttl_s, SETTINGS.task_store_max_bytes,
                  outbox=TaskOutbox(JOBS.deliveries, lambda data, media_type, base: image_link_now(IMAGES, data,
                                                                                                 media_type, base)))

# Outermost first: the request log (id, one line per request), CORS (when configured), then keys /
# body cap / in-flight cap / strict fields, Idempotency-Key, the task routes, then the rewrite of
# BentoML's own error bodies on its routes. Errors before a route is reached take the shape of the
# surface it belongs to.
API.add_asgi_middleware(request_log.RequestLogMiddleware,
                        unanswered=lambda scope: error_response(T2IError(INTERNAL), SURFACES.shape_for(scope)))
if (CORS := cors_options(SETTINGS)) is not None:
    API.add_asgi_middleware(CORSMiddleware, **CORS)
API.add_asgi_middleware(
    GuardMiddleware,
    settings=SETTINGS,
    strict_fields={m.route: frozenset(m.input_spec.model_fields) for m in API.apis.values()},
    shape_for=SURFACES.shape_for,
    keyring=JOBS.keyring,
    limits=JOBS.limits,
)
API.add_asgi_middleware(IdempotencyMiddleware, store=JOBS.idempotency, wait_s=SETTINGS.request_timeout_s,
                        shape_for=SURFACES.shape_for)
API.add_asgi_middleware(TaskRoutes, routes=task_routes(
    lambda: bentoml.get_current_service().flow, TASKS,
    TaskRunner(TASKS, lambda: bentoml.get_current_service().flow, check_s=SETTINGS.task_store_check_s,
               notifier=TaskNotifier(JOBS.sender, SETTINGS.webhook_progress_s),
               limits=JOBS.limits),
    JOBS,
))
API.add_asgi_middleware(ErrorBodyMiddleware, paths=frozenset(m.route for m in API.apis.values()))
API.mount_asgi_app(SURFACES, path="/")
