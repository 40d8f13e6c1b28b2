"""Request models shared by every route, and the engine's request/result types.

Routes validate into ``GenerateRequest``/``EditRequest``; ``to_engine`` fills unset fields from the
model's registry defaults and produces the ``EngineRequest`` that crosses to the engine process.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from t2i_core.common.addon_fields import Adapters, ConditioningScale, ControlImageText, ControlNetId, GuidanceFraction
from t2i_core.common.errors import InvalidRequest
from t2i_core.common.families import REFERENCE_PIPELINES, ReferenceBatching
from t2i_core.common.fields import (
    MAX_SEED,
    MAX_STEPS,
    Guidance,
    ImageFormat,
    ModelId,
    OutputQuality,
    NegativePrompt,
    Prompt,
    SchedulerName,
    Seed,
    Side,
    SpeedName,
    Steps,
    Strength,
)
from t2i_core.common.inpainting import denoiser_channels, mode_refusal
from t2i_core.common.registry import ModelEntry, Registry
from t2i_core.common.schedulers import check_scheduler
from t2i_core.common import speed_tiers

DEFAULT_STRENGTH = 0.6
#: what an image request makes: text to image, image to image, or image to image where a mask says
Mode = Literal["generate", "edit", "inpaint"]
#: the engine's entry points (BentoML methods): text to image, and image to image (edits and inpainting)
Endpoint = Literal["generate", "edit"]


class PromptSettings(BaseModel):
    """The generation settings every surface takes under these names (native, OpenAI extension
    fields, replaced servers' routes). Declared once here; each surface's model adds its own fields."""

    model_config = ConfigDict(populate_by_name=True)

    prompt: Prompt
    negative_prompt: NegativePrompt = None
    num_inference_steps: Steps = None
    #: a field of its own (not only an alias) so that clients reading the schema, such as BentoML's
    #: Python client, may send it by name
    steps: Steps = Field(default=None, description="Another name for num_inference_steps (which wins when both are given).")
    guidance_scale: Guidance = None
    seed: Seed = None
    model: ModelId = None
    scheduler: SchedulerName = None
    adapters: Adapters = None
    speed: SpeedName = None

    @model_validator(mode="after")
    def _steps_is_another_name(self) -> "PromptSettings":
        if self.num_inference_steps is None and self.steps is not None:
            self.num_inference_steps = self.steps
        return self


class ControlNetSettings(BaseModel):
    """The ControlNet fields, taken under these names on every surface that has them (native, OpenAI
    extension fields)."""

    controlnet: ControlNetId = None
    #: base64 text here; a file upload on /edit (``EditUpload``)
    control_image: ControlImageText = Field(default=None, validate_default=True)
    controlnet_conditioning_scale: ConditioningScale = None
    control_guidance_start: GuidanceFraction = None
    control_guidance_end: GuidanceFraction = None

    # Checked per field (with validate_default), so that the error names the field on every route.
    @field_validator("control_image", mode="wrap")
    @classmethod
    def _control_image_with_controlnet(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        controlnet = info.data.get("controlnet")
        if value is None and controlnet is not None:
            raise InvalidRequest(f"control_image is required with controlnet {controlnet!r}: the image that steers it",
                                 param="control_image")
        if value is not None and "controlnet" in info.data and controlnet is None:  # (absent: itself invalid)
            raise InvalidRequest("control_image needs controlnet: name the ControlNet it steers", param="control_image")
        return None if value is None else handler(value)

    @field_validator("control_guidance_end")
    @classmethod
    def _end_after_start(cls, value: float | None, info: ValidationInfo) -> float | None:
        start = info.data.get("control_guidance_start")
        if value is not None and start is not None and start >= value:
            raise InvalidRequest(f"control_guidance_end must be above control_guidance_start; got {value:g} and {start:g}",
                                 param="control_guidance_end")
        return value


class GenerateRequest(PromptSettings, ControlNetSettings):
    """The native ``/generate`` request (also the task route's and the replaced servers' routes')."""

    width: Side = None
    height: Side = None
    format: ImageFormat = "png"
    output_quality: OutputQuality = None


class EditRequest(GenerateRequest):
    """The native ``/edit`` request without its image (each route reads the upload its own way)."""

    strength: Strength = None


class InputImage(BaseModel):
    """An input image as raw RGB bytes (width * height * 3, row-major)."""

    width: int
    height: int
    pixels: bytes


class EngineRequest(BaseModel):
    """One image to make, with every setting resolved (``to_engine``) and its seed decided: what the
    API sends the engine. Nothing downstream looks a setting up again."""

    mode: Mode = "generate"
    model: str
    prompt: str
    negative_prompt: str = ""
    steps: int
    guidance_scale: float
    width: int
    height: int
    #: decided by the API (drawn when the client gave none); the engine never draws one
    seed: int = Field(ge=0, le=MAX_SEED)
    strength: float | None = None
    scheduler: str | None = None
    #: intermediate decodes wanted while it denoises (0-3; ``engine/previews.py``); not part of the
    #: batch key: a previewing request shares its batch with the others
    partial_images: int = 0
    #: edit only: raw RGB bytes, width * height * 3, row-major
    image: bytes | None = None
    #: edit only, inpainting: raw 8-bit mask bytes, width * height (255 = repaint)
    mask: bytes | None = None
    #: reference edits (instruction edit models: FLUX.1 Kontext, Qwen-Image-Edit, FLUX.2 klein): the
    #: input images, the first at the output size, the others at their own; ``image`` is then None
    references: list[InputImage] = []
    #: how the model's edit pipeline takes its references (``t2i_core/common/families.py``): what may
    #: share a batch with this request; None when it has none
    reference_batching: ReferenceBatching | None = None
    #: the model's transformer embeds the guidance scale per row (FLUX.1 [dev], Kontext): requests with
    #: different scales share a batch (``engine/row_guidance.py``)
    row_guidance: bool = False
    #: LoRA adapters (registry id, weight), as the request listed them
    adapters: list[tuple[str, float]] = []
    #: ControlNet id and its control image (raw RGB, width * height * 3), scale, start and end
    controlnet: str | None = None
    control_image: bytes | None = None
    control_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    #: the speed tier (common/speed_tiers.py): the engine turns on the model's step cache of that tier
    #: for the batch; tiers batch apart
    speed: str = "quality"
    #: denoising steps the tier cut from what the request asked (``steps`` is what runs)
    steps_skipped: int = 0
    #: the API chose ``model`` as the default (the request named none): the engine, which owns the
    #: default, answers ``default_model_changed`` if its default is another one now
    model_defaulted: bool = False
    #: who asked (for cancellation) and until when the answer is wanted (unix time)
    request_id: str = ""
    deadline: float | None = None
    #: when the API handed it to the engine (unix time): the engine's queue wait starts here
    submitted_at: float | None = None

    @property
    def endpoint(self) -> Endpoint:
        """The engine method that runs it."""
        return "generate" if self.mode == "generate" else "edit"

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can run in one pipeline call."""
        key: tuple[Any, ...] = (
            self.mode, self.model, self.width, self.height, self.steps,
            None if self.row_guidance else self.guidance_scale, self.strength, self.scheduler, tuple(self.adapters),
            self.controlnet, self.control_scale, self.control_start, self.control_end, self.reference_batching, self.speed)
        if self.reference_batching == "shared":  # one list of references for the whole call
            key += (self.references_digest(),)
        elif self.reference_batching == "one_prompt":  # one prompt and its references per call
            key += (self.references_digest(), self.prompt, self.negative_prompt)
        return key

    def references_digest(self) -> str:
        """A digest of the reference images (sizes and pixels)."""
        import hashlib

        digest = hashlib.blake2b(digest_size=16)
        for ref in self.references:
            digest.update(f"{ref.width}x{ref.height}:".encode())
            digest.update(ref.pixels)
        return digest.hexdigest()

    def control_label(self) -> str:
        """none, adapters, controlnet or adapters+controlnet (a metrics label of few values)."""
        parts = [name for name, used in (("adapters", bool(self.adapters)), ("controlnet", self.controlnet is not None)) if used]
        return "+".join(parts) or "none"

    def label(self) -> str:
        """What kind of work this is, for the engine's per-kind batch statistics:
        ``generate``, ``inpaint+adapters:a,b``, ``edit+controlnet:c``, ``generate+speed:fast``..."""
        parts = [self.mode]
        if self.controlnet:
            parts.append(f"controlnet:{self.controlnet}")
        if self.adapters:
            parts.append("adapters:" + ",".join(name for name, _ in self.adapters))
        if self.speed != "quality":
            parts.append(f"speed:{self.speed}")
        return "+".join(parts)


class EngineResult(BaseModel):
    """One image made (raw RGB pixels), or the error that stopped it."""

    model: str
    seed: int | None = None
    width: int = 0
    height: int = 0
    pixels: bytes | None = None
    batch_size: int = 0
    inference_s: float = 0.0
    #: seconds from the API's hand-over to the start of its engine batch
    queue_s: float = 0.0
    #: seconds per engine stage of its batch: text_encoding, denoising, vae_decoding
    stages: dict[str, float] = {}
    #: its batch's step cache (a speed tier's): calls of the hooked denoiser modules (transformer blocks
    #: or attention layers, as the cache hooks them) and how many of those the cache answered without
    #: computing; 0 and 0 without a cache
    cache_calls: int = 0
    cache_skipped: int = 0
    #: which pipeline call made it (a request's images may come from several): its cache counts are that call's
    batch_id: str = ""
    error: dict[str, Any] | None = None


class Preview(BaseModel):
    """A partial image of a request: its latents decoded after ``step`` of ``steps`` (raw RGB pixels)."""

    index: int = 0
    step: int
    steps: int
    width: int
    height: int
    pixels: bytes


def to_engine(
    req: GenerateRequest,
    entry: ModelEntry,
    *,
    seed: int,
    mode: Mode = "generate",
    registry: Registry | None = None,
    image_size: tuple[int, int] | None = None,
    images: int = 1,
) -> EngineRequest:
    """Resolve ``req`` on model ``entry`` into the ``EngineRequest`` of its first image (the k-th of n
    has ``seed + k``: ``nth_image``): the model's defaults for what it leaves unset, its adapters and
    ControlNet looked up in ``registry`` (400 when unknown or of another family), the scheduler and the
    mode checked against the model. ``image_size``: an edit's input size (the output's, unless ``req``
    gives one). The input pixels (image, mask, control image) are attached by the caller once decoded:
    everything here is refused before any image is decoded. ``images``: how many input images an edit
    has (a reference-edit model takes up to its ``edits.max_images``, the others one).
    """
    d = entry.defaults
    steps = req.num_inference_steps if req.num_inference_steps is not None else d.steps
    width = req.width or (image_size[0] if image_size else d.width)
    height = req.height or (image_size[1] if image_size else d.height)
    check_size_multiple(entry, width, height)
    if req.negative_prompt and not entry.family_traits.negative_prompt:
        raise InvalidRequest(
            f"model {entry.id!r} ({entry.pipeline}) reads no negative prompt: leave negative_prompt out "
            f"(got {req.negative_prompt[:80]!r})", param="negative_prompt")
    strength = None
    edits = entry.edit_traits
    reference_batching = None
    if mode != "generate":
        if not isinstance(req, EditRequest):
            raise InvalidRequest(f"mode {mode!r} needs an edit request", param="image")
        if images > edits.max_images:
            raise InvalidRequest(
                f"model {entry.id!r} takes at most {edits.max_images} input image{'s' if edits.max_images > 1 else ''} "
                f"per edit; got {images}", param="image")
    if mode != "generate" and edits.kind == "reference":
        if mode == "inpaint":
            raise InvalidRequest(f"model {entry.id!r} edits by instruction, reading its input image(s) as references: "
                                 "it takes no mask; send the edit without one", param="mask")
        if req.strength is not None:  # type: ignore[attr-defined]
            raise InvalidRequest(
                f"strength does not apply to model {entry.id!r}: it edits by instruction, reading its input image(s) "
                "as references (the image is made anew, not noised and denoised); leave strength out",
                param="strength")
        reference_batching = REFERENCE_PIPELINES[edits.pipeline or entry.family_traits.edit or ""][0]
    elif mode != "generate":
        assert isinstance(req, EditRequest)
        # inpainting repaints the masked area from noise unless told otherwise
        default_strength = 1.0 if mode == "inpaint" else DEFAULT_STRENGTH
        strength = req.strength if req.strength is not None else default_strength
        # img2img runs int(steps * strength) denoising steps: at least one must remain.
        if steps * strength < 1:
            if req.num_inference_steps is not None:
                raise InvalidRequest(
                    f"num_inference_steps * strength must be at least 1 so that one denoising step runs; "
                    f"got {steps} * {strength} = {steps * strength:g}",
                    param="num_inference_steps",
                )
            if strength * MAX_STEPS < 1:
                # the scheduler lays out ``steps`` timesteps to run int(steps * strength) of them: a tiny
                # strength would ask for millions (memory and time without bound)
                raise InvalidRequest(
                    f"strength must be at least {1 / MAX_STEPS:g} (1 / {MAX_STEPS}, the most steps a request "
                    f"may run) for one denoising step to remain; got {strength!r}",
                    param="strength",
                )
            steps = math.ceil(1 / strength)
    speed, tier = speed_tiers.resolve(req.speed, entry.id, entry.speed)
    steps_skipped = 0
    if tier is not None and tier.steps is not None:
        # at least the one step an edit needs (steps * strength >= 1)
        fewer = max(tier.steps_for(steps), math.ceil(1 / strength) if strength else 1)
        steps_skipped, steps = max(0, steps - fewer), min(steps, fewer)
    scheduler = req.scheduler or d.scheduler
    if scheduler is not None:
        check_scheduler(scheduler, entry.pipeline)
    if registry is not None:
        # a masked edit runs on the model's dedicated inpainting checkpoint when the registry names one
        runs_on = registry.get(entry.inpainting) if mode == "inpaint" and entry.inpainting else entry
        refusal = mode_refusal(runs_on.id, runs_on.pipeline, denoiser_channels(runs_on), mode)
        if refusal is not None:
            raise refusal
    return EngineRequest(
        **resolve_addons(req, entry, registry),
        model_defaulted=req.model is None,
        scheduler=scheduler,
        mode=mode,
        model=entry.id,
        prompt=req.prompt,
        negative_prompt=req.negative_prompt or "",
        steps=steps,
        guidance_scale=req.guidance_scale if req.guidance_scale is not None else d.guidance_scale,
        width=width,
        height=height,
        seed=seed,
        strength=strength,
        speed=speed,
        steps_skipped=steps_skipped,
        reference_batching=reference_batching,
        row_guidance=entry.family_traits.guidance == "embedded",
    )


def check_size_multiple(entry: ModelEntry, width: int, height: int) -> None:
    """InvalidRequest naming the side when it is not a multiple of what the model's family needs."""
    multiple = entry.family_traits.size_multiple
    for side, value in (("width", width), ("height", height)):
        if value % multiple:
            raise InvalidRequest(f"{side} must be a multiple of {multiple} for model {entry.id!r} ({entry.pipeline}); "
                                 f"got {value}", param=side)


def nth_image(first: EngineRequest, k: int) -> EngineRequest:
    """The k-th image (0-based) of a request whose first image is ``first``: seed ``seed + k``."""
    return first if k == 0 else first.model_copy(update={"seed": (first.seed + k) % (MAX_SEED + 1)})


def resolve_addons(req: GenerateRequest, entry: ModelEntry, registry: Registry | None) -> dict[str, Any]:
    """The ``EngineRequest`` fields of ``req``'s adapters and ControlNet, with the registry's defaults."""
    out: dict[str, Any] = {}
    if (req.adapters or req.controlnet) and registry is None:
        raise InvalidRequest("adapters and controlnet are not taken on this route", param="adapters")
    if req.adapters:
        found = [(use, registry.adapter(use.id, entry)) for use in req.adapters]
        out["adapters"] = [(use.id, use.weight if use.weight is not None else adapter.weight) for use, adapter in found]
    if req.controlnet:
        controlnet = registry.controlnet(req.controlnet, entry)
        out.update(
            controlnet=controlnet.id,
            control_scale=(req.controlnet_conditioning_scale if req.controlnet_conditioning_scale is not None
                           else controlnet.conditioning_scale),
            control_start=req.control_guidance_start or 0.0,
            control_end=req.control_guidance_end if req.control_guidance_end is not None else 1.0,
        )
        if out["control_start"] >= out["control_end"]:  # one given, the other's default (0 and 1)
            given = "control_guidance_start" if req.control_guidance_end is None else "control_guidance_end"
            raise InvalidRequest(
                f"control_guidance_end must be above control_guidance_start; got {out['control_end']:g} and "
                f"{out['control_start']:g} ({given} given, the other its default)", param=given)
    return out
