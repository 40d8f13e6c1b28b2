"""AUTOMATIC1111 web UI API routes (``/sdapi/v1/...``) over the same request flow as every other surface:
its requests share engine batches with the rest.

LoRA adapters come from the prompt (``<lora:name:weight>``), inpainting from img2img's ``mask``, a
ControlNet from the ControlNet extension's unit in ``alwayson_scripts``; ``loras`` lists the registry's
adapters and ``/controlnet/model_list`` its ControlNets (the extension's own route).

``progress``, ``interrupt`` and ``skip`` act on the caller's own work (its API key, else its address):
a shared server must not let one client stop another's image. ``POST options`` sets only
``sd_model_checkpoint``: with an API key, the model of that caller's later requests (one client must
not switch everyone's model); with the admin key, the server's default model.
"""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.api.request_flow import RequestFlow, client_left, parse
from t2i_core.api.surfaces.a1111.callers import CallerJobs, caller_id
from t2i_core.api.surfaces.a1111.protocol import (
    Img2Img, Txt2Img, a1111_mask, answer, controlnet_fields, sampler_rows, schedule_rows, scheduler_for, split_loras,
)
from t2i_core.api.surfaces.admin import has_admin_key
from t2i_core.api.surfaces.reading import read_json_object
from t2i_core.common.errors import ClientClosed, InvalidRequest, RequestTimeout, T2IError, Unauthorized, UnknownAdapter
from t2i_core.api.images.codecs import decode_base64
from t2i_core.common.schemas import EditRequest, GenerateRequest

PREFIX = "/sdapi/v1"


def model_id_of(title: Any) -> str:
    """A model id from an A1111 checkpoint title, which may end in " [hash]"."""
    return str(title).split(" [", 1)[0]


def a1111_routes(get_flow: Callable[[], RequestFlow], jobs: CallerJobs) -> list[Route]:
    """``jobs``: where each caller's latest request and chosen checkpoint are kept (see callers.py)."""

    @asynccontextmanager
    async def loras_named_in_the_prompt() -> AsyncIterator[None]:
        """An adapter the model does not take is named as the prompt names it (``<lora:id>``)."""
        try:
            yield
        except UnknownAdapter as err:
            raise UnknownAdapter(f"<lora:...> in the prompt: {err.message}", param="prompt") from None

    @asynccontextmanager
    async def remembered(request: Request) -> AsyncIterator[str]:
        """A new request id, the caller's latest job while it runs; if it fails before running (an
        unavailable model, a full queue), the caller's previous job is the latest again."""
        request_id, caller = f"a1111-{uuid.uuid4().hex}", caller_id(request)
        previous = await jobs.latest(caller)
        await jobs.remember(caller, request_id)
        try:
            yield request_id
        except (ClientClosed, RequestTimeout):  # it ran, then was interrupted or stopped: still the latest
            raise
        except T2IError:
            await jobs.restore(caller, request_id, previous)
            raise

    async def chosen_checkpoint(request: Request) -> str | None:
        """The model this caller chose with ``POST options`` (callers with a key only)."""
        return await jobs.checkpoint(caller_id(request)) if request.headers.get("authorization") else None

    def model_for(flow: RequestFlow, req: Txt2Img, chosen: str | None) -> str | None:
        """The request's ``override_settings`` checkpoint, else the caller's, else None (the default)."""
        title = req.override_settings.get("sd_model_checkpoint", chosen)
        if title is None:
            return None
        model_id = model_id_of(title)
        flow.registry.get(model_id)  # 404 naming the known models
        return model_id

    def native_fields(flow: RequestFlow, req: Txt2Img, chosen: str | None) -> dict[str, Any]:
        model = model_for(flow, req, chosen)
        entry = flow.registry.get(model)
        prompt, adapters = split_loras(req.prompt)
        if not prompt:
            raise InvalidRequest(f"prompt holds nothing to draw besides its tags; got {req.prompt!r}"[:300], param="prompt")
        return {"prompt": prompt, "negative_prompt": req.negative_prompt, "num_inference_steps": req.steps,
                "guidance_scale": req.cfg_scale, "width": req.width, "height": req.height,
                "seed": req.seed if 0 <= req.seed else None, "model": model,
                "scheduler": scheduler_for(req, entry.pipeline), "adapters": adapters or None,
                **controlnet_fields(req)}

    def images_count(flow: RequestFlow, req: Txt2Img) -> int:
        n, limit = req.batch_size * req.n_iter, flow.settings.max_images_per_request
        if n > limit:
            raise InvalidRequest(f"batch_size * n_iter must be at most {limit} on this server; got {n}", param="batch_size")
        return n

    async def txt2img(request: Request) -> Response:
        flow = get_flow()
        req = parse(Txt2Img, await read_json_object(request))
        fields = native_fields(flow, req, await chosen_checkpoint(request))
        if fields.get("controlnet") is not None and fields.get("control_image") is None:
            raise InvalidRequest("the ControlNet unit needs an image (txt2img has no init image to fall back on)",
                                 param="alwayson_scripts")
        native = parse(GenerateRequest, fields)
        n = images_count(flow, req)
        async with remembered(request) as request_id, loras_named_in_the_prompt():
            images = await flow.generate(native, n=n, request_id=request_id,
                                          disconnected=client_left(request))
        return JSONResponse(answer(images, req, req.sampler_name or "default"))

    async def img2img(request: Request) -> Response:
        flow = get_flow()
        req = parse(Img2Img, await read_json_object(request))
        if not req.init_images:
            raise InvalidRequest("init_images must hold one base64 image", param="init_images")
        fields = native_fields(flow, req, await chosen_checkpoint(request))
        if fields.get("controlnet") is not None and fields.get("control_image") is None:
            fields["control_image"] = req.init_images[0]  # as the ControlNet extension does in img2img
        # an instruction edit model reads init_images as references: denoising_strength is refused only
        # when the client sent it (A1111 clients often send its default), else it applies as in A1111
        reference = flow.registry.get(fields["model"]).edit_traits.kind == "reference"
        given = "denoising_strength" in req.model_fields_set
        native = parse(EditRequest, {**fields, "strength": req.denoising_strength if given or not reference else None})
        # the others edit the first image, as before (A1111 itself takes one init image per batch image)
        sources = [decode_base64(image, field="init_images") for image in req.init_images[:None if reference else 1]]
        mask = decode_base64(req.mask, field="mask") if req.mask else None
        n = images_count(flow, req)
        async with remembered(request) as request_id, loras_named_in_the_prompt():
            images = await flow.edit(native, sources, n=n, request_id=request_id, mask=mask,
                                      mask_reader=lambda raw: a1111_mask(raw, req, flow.settings.max_input_pixels),
                                      disconnected=client_left(request))
        return JSONResponse(answer(images, req, req.sampler_name or "default"))

    async def progress(request: Request) -> Response:
        flow = get_flow()
        found = await jobs.latest(caller_id(request))
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "", "job_no": 0,
                 "sampling_step": 0, "sampling_steps": 0}
        body: dict[str, Any] = {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                                "textinfo": None}
        if found is None:
            return JSONResponse(body)
        request_id, started = found
        engine = await flow.progress(request_id)
        step, steps = engine.get("step", 0), engine.get("steps") or 0
        running = engine.get("state") in ("queued", "running")
        fraction = 1.0 if engine.get("state") == "done" else (step / steps if steps else 0.0)
        state.update(job=request_id if running else "", job_count=1 if running else 0, sampling_step=step,
                     sampling_steps=steps)
        elapsed = max(0.0, time.time() - started)
        body.update(progress=round(fraction, 4),
                    eta_relative=round(elapsed / fraction - elapsed, 3) if running and 0 < fraction < 1 else 0.0)
        if running and request.query_params.get("skip_current_image", "false").lower() != "true":
            previews = await flow.previews(request_id, 0, "png", want_next=True, caller=caller_id(request))
            if previews:
                import base64

                body["current_image"] = base64.b64encode(previews[-1][1]).decode("ascii")
        return JSONResponse(body)

    async def interrupt(request: Request) -> Response:
        found = await jobs.latest(caller_id(request))
        if found is not None:
            await get_flow().engine.cancel([found[0]])
        return JSONResponse({})

    async def sd_models(request: Request) -> Response:
        rows = await get_flow().model_states()
        return JSONResponse([{"title": r["id"], "model_name": r["id"], "hash": None, "sha256": None,
                              "filename": r["id"], "config": None, "state": r["state"]} for r in rows])

    async def options(request: Request) -> Response:
        flow = get_flow()
        if request.method == "POST":
            data = await read_json_object(request)
            admin = has_admin_key(request, flow.settings.admin_key)
            if not admin and not request.headers.get("authorization"):
                raise Unauthorized("setting options needs a key: 'Authorization: Bearer <API key>' sets the model of "
                                   "your own requests, the admin key (T2I_ADMIN_KEY) the server's default model")
            unknown = sorted(set(data) - {"sd_model_checkpoint"})
            if unknown:
                raise InvalidRequest(f"only sd_model_checkpoint can be set here; got {', '.join(unknown)}",
                                     param=unknown[0])
            if "sd_model_checkpoint" in data:
                model_id = model_id_of(data["sd_model_checkpoint"])
                if admin:  # the default for everyone
                    await flow.model_action("set_default", model_id)
                else:  # this caller's own requests: one client must not switch everyone's model
                    flow.registry.get(model_id)  # 404 naming the known models
                    await jobs.choose_checkpoint(caller_id(request), model_id)
            return JSONResponse({})
        chosen = await chosen_checkpoint(request)
        default = next((row["id"] for row in await flow.model_states() if row["default"]), None)
        return JSONResponse({"sd_model_checkpoint": chosen or default, "samples_format": "png",
                             "sd_checkpoint_hash": None})

    async def loras(request: Request) -> Response:
        """A1111's LoRA list (``name``, ``alias``, ``path``, ``metadata``): the registry's adapters."""
        return JSONResponse([
            {"name": a.id, "alias": a.id, "path": a.source,
             "metadata": {"family": a.family, "weight": a.weight, "trigger_words": list(a.trigger_words),
                          "description": a.description}}
            for a in get_flow().registry.adapters()])

    async def controlnet_models(request: Request) -> Response:
        """The ControlNet extension's model list: the registry's ControlNets."""
        return JSONResponse({"model_list": [c.id for c in get_flow().registry.controlnets()]})

    def constant(body: Any) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            return JSONResponse(body)

        return handler

    return [
        Route(f"{PREFIX}/txt2img", txt2img, methods=["POST"]),
        Route(f"{PREFIX}/img2img", img2img, methods=["POST"]),
        Route(f"{PREFIX}/progress", progress, methods=["GET"]),
        Route(f"{PREFIX}/interrupt", interrupt, methods=["POST"]),
        Route(f"{PREFIX}/skip", interrupt, methods=["POST"]),
        Route(f"{PREFIX}/sd-models", sd_models, methods=["GET"]),
        Route(f"{PREFIX}/options", options, methods=["GET", "POST"]),
        Route(f"{PREFIX}/samplers", constant(sampler_rows()), methods=["GET"]),
        Route(f"{PREFIX}/schedulers", constant(schedule_rows()), methods=["GET"]),
        Route(f"{PREFIX}/loras", loras, methods=["GET"]),
        Route(f"{PREFIX}/refresh-loras", constant({}), methods=["POST"]),
        Route("/controlnet/model_list", controlnet_models, methods=["GET"]),
        Route("/controlnet/module_list", constant({"module_list": ["none"]}), methods=["GET"]),
        Route("/controlnet/version", constant({"version": 2}), methods=["GET"]),
        Route(f"{PREFIX}/refresh-checkpoints", constant({}), methods=["POST"]),
        # the ControlNet extension's always-on script (its units in alwayson_scripts); no selectable scripts
        Route(f"{PREFIX}/scripts", constant({"txt2img": ["controlnet"], "img2img": ["controlnet"]}), methods=["GET"]),
    ]
