"""The API side of a request: validate, decode input images, call the engine, encode output images.

Everything here runs in the API process, so decoding and encoding (CPU work) stay out of the GPU
process. ``EngineClient`` is how the request flow reaches the engine: BentoML's inter-service client in
the server, ``LocalEngineClient`` (the engine in process) in tests.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from t2i_core.api import request_log
from t2i_core.common import metrics
from t2i_core.api.engine_client import EngineClient
from t2i_core.api.keys.context import served
from t2i_core.api.keys.limits import KeyLimits
from t2i_core.api.keys.usage import UsageMeter
from t2i_core.common.config import Settings
from t2i_core.api.images.encode_pool import EncoderPool, default_processes
from t2i_core.api.images.parameters import parameters_text
from t2i_core.common.errors import ClientClosed, DefaultModelChanged, InvalidRequest, RequestTimeout, T2IError, describe_validation_errors
from t2i_core.api.images.codecs import decode_base64, decode_image, output_size, timed_encode
from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.images.masks import decode_mask
from t2i_core.common.pixels import to_rgb_pixels
from t2i_core.common.registry import ModelEntry, Registry
from t2i_core.common.schemas import (
    EditRequest, EngineRequest, EngineResult, GenerateRequest, InputImage, Preview, nth_image, to_engine,
)

#: Without encoder processes (``T2I_ENCODE_PROCESSES=0``, or one CPU), a request's images are encoded
#: on the event loop when they have this many pixels or fewer in all
#: (two 64x64 images: a 64x64 PNG of noise takes 0.2-0.35 ms, a WebP up to 0.8 ms, so the loop is held
#: for under 2 ms); more go to worker threads, in parallel (a 512x512 PNG takes 5-50 ms). Measured at
#: 16 clients on the tiny model: worker threads for small images cost the API 14% more CPU per request
#: and the answers came out later, the threads waiting for the GIL held by the busy event loop
#: (docs/performance.md).
INLINE_ENCODE_MAX_PIXELS = 2 * 64 * 64
#: seeds drawn for requests that give none stay below this: small enough for every JSON client
DRAWN_SEEDS = 2**32


#: Returns once the client has disconnected (``until_disconnected`` over the request's ASGI receive),
#: or once a task was canceled (returning the ``ClientClosed`` error to answer with).
Disconnected = Callable[[], Awaitable[Any]]


async def until_disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Wait until the ASGI server reports the client gone (after the body has been read, the next
    message is ``http.disconnect``). Costs nothing while waiting, unlike polling."""
    while (await receive())["type"] != "http.disconnect":
        pass


def client_left(request: Any) -> Disconnected:
    """The one way a route says "stop the work when my client leaves": ``request`` is a Starlette
    request (or anything with its ASGI ``receive``)."""
    return lambda: until_disconnected(request.receive)


@dataclass(frozen=True)
class Prepared:
    """A request validated, resolved and its input images decoded (``RequestFlow.prepare_generate`` /
    ``prepare_edit``): everything that can be refused before the engine is asked has been. A streamed
    answer starts only after this, so such a refusal is a 4xx rather than an error event in a 200
    stream. The k-th of its n images is ``nth_image(first, k)``."""

    req: GenerateRequest
    #: the engine request of its first image, seed decided, pixels attached
    first: EngineRequest
    #: the same request resolved on another model: only when it named none and the engine's default
    #: changed meanwhile (``DefaultModelChanged``)
    on_model: Callable[[ModelEntry], EngineRequest]


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate ``data`` into ``model``; InvalidRequest (naming field and value) when it does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_errors(exc.errors(include_url=False))
        raise InvalidRequest(message, param=param) from None


def request_cache_counts(results: list[EngineResult]) -> tuple[int, int]:
    """A request's step-cache work: calls and skips summed over the distinct engine batches that made its
    images (each result carries its batch's counts; ``n`` images may be split over several batches)."""
    batches = {r.batch_id: (r.cache_calls, r.cache_skipped) for r in results if r.error is None}
    return sum(c for c, _ in batches.values()), sum(s for _, s in batches.values())


class RequestFlow:
    def __init__(self, engine: EngineClient, settings: Settings | None = None, registry: Registry | None = None):
        self.settings = settings or Settings.from_env()
        self.registry = registry or Registry(default=self.settings.model)
        self.engine = engine
        #: per-key limits and usage (set by the server: ``t2i_core/api/keys/``); None: not counted
        self.limits: KeyLimits | None = None
        self.usage: UsageMeter | None = None
        processes = default_processes(self.settings.encode_processes)
        #: output images are encoded in these processes, off the event loop (see encode_pool.py)
        self.encoder = EncoderPool(processes) if processes > 0 else None

    async def generate(
        self, req: GenerateRequest, n: int = 1, disconnected: Disconnected | None = None, request_id: str | None = None,
        partial_images: int = 0, control_image: bytes | None = None,
    ) -> list[RenderedImage]:
        """``n`` images for ``req`` (seeds seed, seed+1, ... when a seed is given), batched together.
        ``request_id`` names the work in the engine (for ``progress``, ``previews`` and cancellation);
        default: a new one. ``partial_images``: intermediate decodes to keep for ``previews``.
        ``control_image``: the ControlNet's image (bytes; default: ``req.control_image``, base64)."""
        prepared = await self.prepare_generate(req, control_image=control_image)
        return await self.run(prepared, n, disconnected, request_id, partial_images)

    async def edit(
        self, req: EditRequest, image: bytes | list[bytes], n: int = 1, disconnected: Disconnected | None = None,
        request_id: str | None = None, partial_images: int = 0, mask: bytes | None = None,
        control_image: bytes | None = None, transparent_repaints: bool = False,
        mask_reader: Callable[[bytes], bytes] | None = None,
    ) -> list[RenderedImage]:
        """Edit the PNG/JPEG/WebP ``image`` (bytes; a list: the reference images of an instruction edit
        model that reads several) as ``req`` says; with ``mask``, only where the mask is white (or, with ``transparent_repaints``, where a mask with alpha is transparent).
        ``mask_reader``: turns the mask as sent into that form first (a surface's own mask rules)."""
        prepared = await self.prepare_edit(req, image, mask=mask, control_image=control_image,
                                           transparent_repaints=transparent_repaints, mask_reader=mask_reader)
        return await self.run(prepared, n, disconnected, request_id, partial_images)

    async def prepare_generate(self, req: GenerateRequest, control_image: bytes | None = None) -> Prepared:
        """``req`` resolved (model, adapters, ControlNet, scheduler, steps, its seed drawn when it has
        none) and its control image decoded, ready for ``run``: what ``generate`` would refuse is
        raised here, before anything is answered."""
        self._note_prompt(req)
        seed = self._seed(req)
        first = to_engine(req, self.registry.get(req.model), seed=seed, registry=self.registry)
        if control_image is None and req.control_image is not None:
            control_image = decode_base64(req.control_image, field="control_image")

        async def with_pixels(item: EngineRequest) -> EngineRequest:
            if control_image is None:
                return item
            pixels = await asyncio.to_thread(self._decode_rgb, control_image, (item.width, item.height), "control_image")
            return item.model_copy(update={"control_image": pixels})

        first = await with_pixels(first)

        def on_model(entry: ModelEntry) -> EngineRequest:
            item = to_engine(req, entry, seed=seed, registry=self.registry)
            same_size = (item.width, item.height) == (first.width, first.height)
            pixels = first.control_image if same_size or control_image is None else self._decode_rgb(
                control_image, (item.width, item.height), "control_image")
            return item.model_copy(update={"control_image": pixels})

        return Prepared(req, first, on_model)

    async def prepare_edit(
        self, req: EditRequest, image: bytes | list[bytes], mask: bytes | None = None,
        control_image: bytes | None = None, transparent_repaints: bool = False,
        mask_reader: Callable[[bytes], bytes] | None = None,
    ) -> Prepared:
        """``req`` resolved and its image(s), mask and control image decoded, ready for ``run`` (as
        ``prepare_generate``). A model that edits from reference images (``edits.kind`` reference) gets
        them all (the first at the output size, the others at their own); the others take one."""
        self._note_prompt(req)
        images = [image] if isinstance(image, bytes) else list(image)
        if not images:
            raise InvalidRequest("image is required: a PNG, JPEG or WebP image to edit", param="image")
        seed, mode = self._seed(req), "inpaint" if mask is not None else "edit"
        entry = self.registry.get(req.model)
        # resolved (and refused) before the image is decoded; its size comes with the image
        to_engine(req, entry, seed=seed, mode=mode, registry=self.registry, images=len(images))
        if control_image is None and isinstance(req.control_image, str):
            control_image = decode_base64(req.control_image, field="control_image")
        pixels, size, mask_pixels, control = await asyncio.to_thread(
            self._prepare_inputs, req, images[0], mask, control_image, transparent_repaints, mask_reader,
            entry.family_traits.size_multiple)
        others = await asyncio.to_thread(lambda: [self._reference(data) for data in images[1:]])

        def on_model(entry: ModelEntry) -> EngineRequest:
            item = to_engine(req, entry, seed=seed, mode=mode, registry=self.registry, image_size=size,
                             images=len(images))
            if entry.edit_traits.kind == "reference":
                first = InputImage(width=size[0], height=size[1], pixels=pixels)
                return item.model_copy(update={"references": [first, *others], "control_image": control})
            return item.model_copy(update={"image": pixels, "mask": mask_pixels, "control_image": control})

        return Prepared(req, on_model(entry), on_model)

    def _reference(self, data: bytes) -> InputImage:
        """A second (third...) reference image, at its own size (sides multiples of 16, within limits)."""
        img = decode_image(data, max_pixels=self.settings.max_input_pixels)
        width, height = output_size(*img.size, multiple=16)
        return InputImage(width=width, height=height, pixels=to_rgb_pixels(img, width, height))

    @staticmethod
    def _seed(req: GenerateRequest) -> int:
        """The request's seed: the client's, or drawn here, once (the engine never draws one)."""
        return req.seed if req.seed is not None else secrets.randbelow(DRAWN_SEEDS)

    async def run(
        self, prepared: Prepared, n: int = 1, disconnected: Disconnected | None = None, request_id: str | None = None,
        partial_images: int = 0,
    ) -> list[RenderedImage]:
        """``n`` images of a prepared request (seeds seed, seed + 1, ...), batched together: what can fail
        now fails in the engine (or times out). The engine owns the default model: this worker's copy is
        a cache, corrected (and a request that named no model resolved again, once) when the engine
        answers that the default has changed, e.g. through another API worker."""
        first, req = prepared.first, prepared.req
        if self.limits is not None:  # the key's images per minute (429 naming it)
            await self.limits.take_images(served(), n)
        if partial_images:
            first = first.model_copy(update={"partial_images": partial_images})
        for attempt in range(2):
            items = [nth_image(first, k) for k in range(n)]
            try:
                return await self._run(items, req.format, disconnected, request_id, req.output_quality or 0)
            except DefaultModelChanged as changed:
                if attempt or changed.model is None:
                    raise
                self.registry.set_default(changed.model)
                # may decode the control image again at the new model's size: off the event loop
                resolved = await asyncio.to_thread(prepared.on_model, self.registry.get(changed.model))
                first = resolved.model_copy(update={"partial_images": partial_images})
        raise AssertionError("unreachable")

    def _decode_rgb(self, data: bytes, size: tuple[int, int], field: str) -> bytes:
        return to_rgb_pixels(decode_image(data, max_pixels=self.settings.max_input_pixels, field=field), *size)

    def _prepare_inputs(
        self, req: EditRequest, image: bytes, mask: bytes | None, control_image: bytes | None, transparent_repaints: bool,
        mask_reader: Callable[[bytes], bytes] | None = None, multiple: int = 8,
    ) -> tuple[bytes, tuple[int, int], bytes | None, bytes | None]:
        pixels, size = self._prepare_input(req, image, multiple)
        if mask is not None and mask_reader is not None:
            mask = mask_reader(mask)
        mask_pixels = None if mask is None else decode_mask(
            mask, *size, max_pixels=self.settings.max_input_pixels, transparent_repaints=transparent_repaints)
        control = None if control_image is None else self._decode_rgb(control_image, size, "control_image")
        return pixels, size, mask_pixels, control

    async def check(self, data: dict[str, Any]) -> GenerateRequest:
        """What ``generate`` refuses before the engine is asked, for input that is not run now (a task
        at submit): its fields, then all ``prepare_generate`` checks. Returns the validated request."""
        req = parse(GenerateRequest, data)
        await self.prepare_generate(req)
        return req

    async def previews(
        self, request_id: str, since: int, fmt: str, want_next: bool = False, caller: str = ""
    ) -> list[tuple[Preview, bytes]]:
        """The partial images of ``request_id`` from index ``since`` on, each encoded in ``fmt``;
        ``want_next``: the engine also decodes its latents after the next step (a live preview), for
        ``caller`` (``caller_id`` of the request: the engine bounds each caller's wishes)."""
        found = await self.engine.previews(request_id, since, want_next, caller)
        encoded = await self._encode([EngineResult(model="", pixels=p.pixels, width=p.width, height=p.height)
                                      for p in found], fmt, [""] * len(found))
        return [(preview, data) for preview, (data, _) in zip(found, encoded)]

    async def progress(self, request_id: str) -> dict[str, Any]:
        """Where the engine is with ``request_id``'s work: state, step k of steps."""
        return (await self.engine.progress([request_id]))[request_id]

    def _note_prompt(self, req: GenerateRequest) -> None:
        if self.settings.log_prompts:
            request_log.note(prompt=req.prompt, negative_prompt=req.negative_prompt)

    def _prepare_input(self, req: EditRequest, image: bytes, multiple: int = 8) -> tuple[bytes, tuple[int, int]]:
        """The image at the output size (the request's, else the image's with sides multiples of ``multiple``)."""
        img = decode_image(image, max_pixels=self.settings.max_input_pixels)
        width, height = output_size(*img.size, multiple=multiple)
        size = (req.width or width, req.height or height)
        return to_rgb_pixels(img, *size), size

    async def model_states(self) -> list[dict[str, Any]]:
        """Each registry model with its metadata and state (loaded, loading, available, unavailable);
        ``default`` marks the engine's default model (the engine owns it). Read only: this worker's
        copy of the default is corrected by the engine's answers (``_resolved_run``), not by listings."""
        states = {row["id"]: row for row in await self.engine.model_states()}
        default = next((model_id for model_id, row in states.items() if row.get("default")), self.registry.default_id)
        rows = []
        for entry in self.registry.entries():
            row = {**entry.metadata(), "pipeline": entry.pipeline,  # the family adapters and ControlNets name
                   "speed": ["quality", *entry.speed],  # the speed tiers it offers
                   "edits": entry.edit_traits.model_dump(exclude={"pipeline"}),  # strength or reference, max images
                   "quantization": entry.quantization_spec.describe() or None,  # component -> fp8, int8, gguf, nf4
                   **states.get(entry.id, {"state": "available", "reason": None})}
            row["default"] = entry.id == default
            rows.append(row)
        return rows

    async def addon_states(self) -> dict[str, list[dict[str, Any]]]:
        """The registered LoRA adapters and ControlNets: what each fits, and whether it is loaded."""
        return await self.engine.addon_states()

    async def model_action(self, action: Literal["load", "unload", "set_default"], model_id: str) -> dict[str, Any]:
        """Load, unload or make default ``model_id`` (the admin API)."""
        self.registry.get(model_id)
        answer = await self.engine.model_action(action, model_id)
        if answer.get("error"):
            raise T2IError.from_dict(answer["error"])
        if action == "set_default":
            self.registry.set_default(model_id)
        return answer

    async def _call_engine(
        self, items: list[EngineRequest], disconnected: Disconnected | None, request_id: str | None = None
    ) -> list[EngineResult]:
        """The engine's results, or RequestTimeout (504) / ClientClosed (499) after telling the
        engine to stop working on this request."""
        request_id = request_id or uuid.uuid4().hex
        timeout = self.settings.request_timeout_s
        now = time.time()
        deadline = now + timeout
        items = [
            item.model_copy(update={"request_id": request_id, "deadline": deadline, "submitted_at": now}) for item in items
        ]
        task = asyncio.ensure_future(self.engine.run(items[0].endpoint, items))
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            done, _ = await asyncio.wait({task, *([watcher] if watcher else [])},
                                         timeout=max(0.0, deadline - time.time()), return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            if watcher in done:  # the watcher may name the error (a canceled task); else the client left
                outcome = watcher.result()
                raise outcome if isinstance(outcome, ClientClosed) else ClientClosed("the client closed the request; its work was stopped")
            raise RequestTimeout(
                f"the request took longer than the {timeout}s limit (T2I_REQUEST_TIMEOUT_S); its work was stopped"
            )
        except (RequestTimeout, ClientClosed, asyncio.CancelledError):
            task.cancel()
            await self.engine.cancel([request_id])
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _run(
        self, items: list[EngineRequest], fmt: str, disconnected: Disconnected | None = None,
        request_id: str | None = None, quality: int = 0,
    ) -> list[RenderedImage]:
        started = time.perf_counter()
        first = items[0]
        request_log.note(kind=first.endpoint, model=first.model, width=first.width, height=first.height, steps=first.steps,
                         guidance_scale=first.guidance_scale, n=len(items), format=fmt,
                         **({"strength": first.strength} if first.strength is not None else {}),
                         **({"adapters": [f"{a}:{w:g}" for a, w in first.adapters]} if first.adapters else {}),
                         **({"controlnet": first.controlnet} if first.controlnet else {}),
                         **({"mask": True} if first.mask is not None else {}),
                         **({"speed": first.speed, "steps_skipped": first.steps_skipped} if first.speed != "quality" else {}))
        results = await self._call_engine(items, disconnected, request_id)
        if len(results) != len(items):
            raise T2IError(f"engine returned {len(results)} results for {len(items)} requests")
        cache_calls, cache_skipped = request_cache_counts(results)
        request_log.note(seeds=[r.seed for r in results], batch_size=max(r.batch_size for r in results),
                         queue_s=max(r.queue_s for r in results), inference_s=round(max(r.inference_s for r in results), 4),
                         **{f"{stage}_s": seconds for stage, seconds in results[0].stages.items()},
                         **({"cache_skipped": cache_skipped, "cache_calls": cache_calls} if cache_calls else {}))
        for result in results:
            if result.error is not None:
                err = T2IError.from_dict(result.error)
                if isinstance(err, DefaultModelChanged):
                    err.model = result.model  # the engine's default now
                raise err
        texts = ([parameters_text(item) for item in items]
                 if self.settings.image_parameters else [""] * len(results))
        encoded = await self._encode(results, fmt, texts, quality)
        encode_s = [seconds for _, seconds in encoded]
        for seconds in encode_s:
            metrics.record_image_encoding(seconds)
        total = time.perf_counter() - started
        record = request_log.current()
        metrics.record_images(first.model, request_log.route_label(record.route if record else ""), len(results))
        if self.usage is not None:  # each image its share of its batch's engine time
            self.usage.record(served().key.name, len(results), sum(r.width * r.height for r in results),
                              sum(r.inference_s / max(1, r.batch_size) for r in results))
        request_log.note(image_encoding_s=round(max(encode_s), 6), total_s=round(total, 4))
        return [
            RenderedImage(
                data=data, format=fmt, seed=int(r.seed or 0), model=r.model, width=r.width,
                height=r.height, batch_size=r.batch_size, inference_s=r.inference_s, total_s=total, parameters=text,
                speed=item.speed, steps_skipped=item.steps_skipped, cache_calls=cache_calls, cache_skipped=cache_skipped,
            )
            for r, item, (data, _), text in zip(results, items, encoded, texts)
        ]

    async def _encode(
        self, results: list[EngineResult], fmt: str, texts: list[str], quality: int = 0
    ) -> list[tuple[bytes, float]]:
        """Each result's image in ``fmt`` (with its generation parameters, ``texts``; JPEG/WebP ``quality``,
        0: the default) and the seconds its encoding took."""
        jobs = [(r.pixels or b"", r.width, r.height, fmt, text, quality) for r, text in zip(results, texts)]
        if self.encoder is not None:
            encoder = self.encoder
            if len(jobs) == 1:
                return [await encoder.encode(*jobs[0])]
            return list(await asyncio.gather(*(encoder.encode(*job) for job in jobs)))
        if sum(r.width * r.height for r in results) <= INLINE_ENCODE_MAX_PIXELS:
            return [timed_encode(*job) for job in jobs]
        return list(await asyncio.gather(*(asyncio.to_thread(timed_encode, *job) for job in jobs)))
