"""The OpenAI Images API: /v1/images/generations, /v1/images/edits, /v1/models, image links.

Works with the official OpenAI SDK unchanged (base_url pointed here). Extensions are accepted as
extra fields: ``negative_prompt``, ``seed``, ``num_inference_steps``, ``guidance_scale``, the creative
controls (``adapters``, ``controlnet`` with ``control_image``, ``controlnet_conditioning_scale``,
``control_guidance_start`` / ``end``) and, for edits, ``strength``. Edits take several images (``image[]``
parts, as OpenAI's gpt-image models do; a JSON list) for models that read several references. Edits take OpenAI's ``mask``
(inpainting): a mask with an alpha channel repaints its fully transparent pixels, as OpenAI's does; a
mask without one repaints its white pixels. ``stream`` with ``partial_images`` answers server-sent
events (openai_stream.py); ``quality`` picks the model's speed tier when the request names none
(``tier_for_openai_quality``: low fast, medium balanced, high quality; a model without that tier runs
the full computation);
``output_compression`` is the JPEG / WebP quality; ``background: transparent`` is a 400 (the models
draw opaque images); ``style`` and ``moderation`` are accepted and ignored.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any, Callable

from pydantic import ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.common.errors import Gone, InvalidRequest, NotFound, UnknownModel
from t2i_core.common.fields import N, OptionalImageFormat, PartialImages, ResponseFormat, Size, Strength
from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.request_flow import Prepared, RequestFlow, client_left, parse
from t2i_core.api.image_store import ImageStore, off_loop
from t2i_core.api.images.codecs import MEDIA_TYPES
from t2i_core.common.schemas import ControlNetSettings, EditRequest, GenerateRequest, PromptSettings
from t2i_core.common.speed_tiers import tier_for_openai_quality
from t2i_core.api.surfaces.openai_stream import check_stream, stream_images
from t2i_core.api.surfaces.native import MAX_EDIT_IMAGES
from t2i_core.api.surfaces.reading import (
    images_from_json, optional_form_image, optional_image_from_json, read_form, read_json_object,
)

log = logging.getLogger("t2i.openai")
FILES_PATH = "/v1/images/files"
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class OpenAIImageRequest(PromptSettings, ControlNetSettings):
    """OpenAI's fields; this server's own settings (``PromptSettings``) are accepted as extensions."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    n: N = 1
    size: Size = None
    response_format: ResponseFormat = None
    output_format: OptionalImageFormat = None
    user: str | None = Field(default=None, max_length=256)
    stream: bool = False
    output_compression: int | None = Field(default=None, ge=0, le=100)
    partial_images: PartialImages = 0
    #: "low" / "medium" / "high" (and "standard" / "hd", "auto"): the speed tier when none is given
    quality: str | None = Field(default=None, max_length=20)
    background: str | None = Field(default=None, max_length=20)

    def checked(self, flow: RequestFlow) -> "OpenAIImageRequest":
        """OpenAI's options that need the server: n's limit, stream, background, quality."""
        limit = flow.settings.max_images_per_request
        if self.n > limit:
            raise InvalidRequest(f"n must be between 1 and {limit} on this server; got {self.n}", param="n")
        if self.stream:
            check_stream(self.n)
        if self.background == "transparent":
            raise InvalidRequest("background transparent is not supported: these models draw opaque images; "
                                 "send background opaque or auto", param="background", code="unsupported_parameter")
        if self.quality is not None:
            tier = tier_for_openai_quality(self.quality)  # checked even when speed is given
            offered = ("quality", *flow.registry.get(self.model).speed)
            if self.speed is None and tier is not None and tier in offered:
                return self.model_copy(update={"speed": tier})
        return self

    def native(self) -> GenerateRequest:
        width, height = (int(s) for s in self.size.split("x")) if self.size else (None, None)
        settings = self.model_dump(include=set(PromptSettings.model_fields))
        # OpenAI's output_compression (0-100) is the JPEG / WebP quality here (0 is taken as 1)
        quality = None if self.output_compression is None else max(1, self.output_compression)
        controls = self.model_dump(include=set(ControlNetSettings.model_fields))
        # parse: the native model's checks across fields (a ControlNet needs its image) answer 400s
        return parse(GenerateRequest, {**settings, **controls, "width": width, "height": height,
                                       "format": self.output_format or "png", "output_quality": quality})


class OpenAIEditRequest(OpenAIImageRequest):
    strength: Strength = None

    def native(self) -> EditRequest:
        return EditRequest(**super().native().model_dump(), strength=self.strength)


async def image_link(store: ImageStore, image: RenderedImage, base: str) -> str:
    """Keep ``image`` in the image store; its link under ``base`` (answers 410 once expired)."""
    token = await off_loop(store, store.put, image.data, image.media_type)
    return f"{base.rstrip('/')}{FILES_PATH}/{token}.{_EXTENSIONS[image.format]}"


def image_link_now(store: ImageStore, data: bytes, media_type: str, base: str) -> str:
    """``image_link`` for the bytes of an image, blocking (off the event loop: the task store's calls)."""
    token = store.put(data, media_type)
    return f"{base.rstrip('/')}{FILES_PATH}/{token}.{_EXTENSIONS.get(media_type.rpartition('/')[2], 'png')}"


async def _images_body(
    images: list[RenderedImage], req: OpenAIImageRequest, request: Request, store: ImageStore, public_url: str = ""
) -> dict[str, Any]:
    """``public_url``: the base of image links (``T2I_PUBLIC_URL``); empty: the URL the request came to
    (its Host header)."""
    data = []
    for image in images:
        item: dict[str, Any] = {"seed": image.seed, "revised_prompt": req.prompt}
        if req.response_format == "url":
            item["url"] = await image_link(store, image, public_url or str(request.base_url))
        else:
            item["b64_json"] = base64.b64encode(image.data).decode("ascii")
        data.append(item)
    first = images[0]
    if req.user:
        log.info("openai images request user=%r model=%s n=%d", req.user, first.model, len(images))
    return {
        "created": int(time.time()),
        "data": data,
        "model": first.model,
        "size": f"{first.width}x{first.height}",
        "output_format": first.format,
    }


async def models_body(flow: RequestFlow, created: int) -> dict[str, Any]:
    """OpenAI's model list and seed 002's ``models``, each model with its state."""
    rows = await flow.model_states()
    return {
        "object": "list",
        "data": [{"id": r["id"], "object": "model", "created": created, "owned_by": r["publisher"], **r} for r in rows],
        "models": rows,
    }


def openai_routes(get_flow: Callable[[], RequestFlow], store: ImageStore) -> list[Route]:
    created = int(time.time())

    async def answer(request: Request, flow: RequestFlow, req: OpenAIImageRequest, prepared: Prepared,
                     event: str) -> Response:
        """The images of a prepared request: a stream of ``event`` events, or the images body."""
        watch = client_left(request)
        if req.stream:
            return stream_images(flow, event, prepared.req.format, req.quality or "auto", lambda rid: flow.run(
                prepared, disconnected=watch, request_id=rid, partial_images=req.partial_images))
        images = await flow.run(prepared, n=req.n, disconnected=watch)
        return JSONResponse(await _images_body(images, req, request, store, flow.settings.public_url),
                            headers=images[0].speed_headers())

    async def generations(request: Request) -> Response:
        flow = get_flow()
        req = parse(OpenAIImageRequest, await read_json_object(request)).checked(flow)
        native = req.native()
        prepared = await flow.prepare_generate(native)  # every refusal is a 4xx, before a stream starts
        return await answer(request, flow, req, prepared, "image_generation")

    async def edits(request: Request) -> Response:
        flow = get_flow()
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            data, files = await read_form(request)
            uploads = files.get("image", [])
            if not uploads or len(uploads) > MAX_EDIT_IMAGES:
                raise InvalidRequest(
                    f"image must be 1 to {MAX_EDIT_IMAGES} uploaded PNG, JPEG or WebP files (image[] repeated for "
                    f"several); got {len(uploads)} files", param="image")
            images = [await upload.read() for upload in uploads]
            mask = await optional_form_image(data, files, "mask")
            control = await optional_form_image(data, files, "control_image")
            if control is not None:  # the field's text for validation; the bytes go to the engine as they are
                data["control_image"] = base64.b64encode(control).decode("ascii")
        else:
            data = await read_json_object(request)
            images = images_from_json(data, limit=MAX_EDIT_IMAGES)
            mask = optional_image_from_json(data, "mask")
            control = None
        req = parse(OpenAIEditRequest, data)
        req = req.checked(flow)
        native = req.native()
        # every refusal (fields, model, controls, the image, mask and control image) is a 4xx, before a stream starts
        prepared = await flow.prepare_edit(native, images, mask=mask, control_image=control, transparent_repaints=True)
        return await answer(request, flow, req, prepared, "image_edit")

    async def list_models(request: Request) -> Response:
        return JSONResponse(await models_body(get_flow(), created))

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        for item in (await models_body(get_flow(), created))["data"]:
            if item["id"] == model_id:
                return JSONResponse(item)
        get_flow().registry.get(model_id)  # raises UnknownModel naming the known ids
        raise UnknownModel(f"model {model_id!r} is not in the registry", param="model")

    async def image_file(request: Request) -> Response:
        token = request.path_params["name"].rsplit(".", 1)[0]
        found = await off_loop(store, store.get, token)
        if found == "gone":
            raise Gone(f"this image link has expired: images are kept {store.ttl_s:g} seconds", code="image_expired")
        if found is None:
            raise NotFound("no image at this link", code="image_not_found")
        return Response(found.data, media_type=found.media_type, headers={"Cache-Control": "private, max-age=60"})

    assert set(_EXTENSIONS) == set(MEDIA_TYPES)
    return [
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route(FILES_PATH + "/{name}", image_file, methods=["GET"]),
    ]
