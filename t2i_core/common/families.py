"""The pipeline families: what each loads with, what its edits are, what its guidance drives.

One table, read by the registry (defaults and checks of an entry), by ``to_engine`` (what a request
may ask of a model) and by the engine (which diffusers pipeline runs which mode, and with which
arguments). No torch or diffusers import: the API process reads it too.

Edits come in two kinds:

- ``strength``: classic image to image: the input image is noised to ``strength`` and denoised
  again (SD, SDXL, SD3, FLUX.1, Qwen-Image, Z-Image); inpainting is the same with a mask;
- ``reference``: instruction edits: the input images are references the model reads beside the
  prompt, and the output is generated from noise (FLUX.1 Kontext, Qwen-Image-Edit, FLUX.2 [klein]).
  ``strength`` does not apply to them.

A reference pipeline takes its images in one of three ways (``REFERENCE_PIPELINES``), which decides
what can share an engine batch: ``row`` (one image per prompt row: any requests batch together, each
with its own image), ``shared`` (one list of images for every row of the call: requests batch with those
of the same images), ``one_prompt`` (one list for one prompt, diffusers refuses more: only the n images
of one request batch together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

PipelineFamily = Literal["sd", "sdxl", "sd3", "flux", "flux-kontext", "flux2-klein", "qwen-image", "qwen-image-edit",
                         "z-image"]
FAMILY_NAMES: tuple[str, ...] = get_args(PipelineFamily)
EditKind = Literal["strength", "reference"]
ReferenceBatching = Literal["row", "shared", "one_prompt"]
#: what a request's ``guidance_scale`` drives:
#: ``cfg``: classifier-free guidance (the denoiser runs on the prompt and on the negative prompt; above 1,
#: or above 0 for Z-Image), one scale per pipeline call;
#: ``embedded``: the guidance-distilled FLUX.1 [dev] / Kontext transformer embeds the scale (no second
#: pass); the transformer takes one value per row, so requests with different scales share a batch;
#: ``true_cfg``: Qwen-Image's ``true_cfg_scale`` (classifier-free guidance against the negative prompt)
Guidance = Literal["cfg", "embedded", "true_cfg"]


@dataclass(frozen=True)
class Family:
    name: str
    #: the diffusers class per mode (generate, edit, inpaint); None: loaded with diffusers'
    #: AutoPipeline for text to image and image to image (SD, SDXL, SD3)
    generate: str | None
    edit: str | None
    inpaint: str | None
    edits: EditKind
    #: the most input images an edit takes by default (a registry entry may say fewer, or more up to its
    #: pipeline's limit)
    max_images: int
    guidance: Guidance
    #: image sides must be multiples of this (the VAE's 8, times the transformer's 2x2 patches)
    size_multiple: int
    #: the registry's ``family`` of LoRA adapters and ControlNets that fit it
    addons: bool = False
    #: edit pipelines an entry may choose (``edits.pipeline``) besides ``edit``
    other_edit_pipelines: tuple[str, ...] = ()

    @property
    def edit_pipelines(self) -> tuple[str, ...]:
        return tuple(p for p in (self.edit, *self.other_edit_pipelines) if p)

    @property
    def dit(self) -> bool:
        """Loaded by the class table (not by AutoPipeline)."""
        return self.generate is not None


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd", None, None, None, "strength", 1, "cfg", 8, addons=True),
    Family("sdxl", None, None, None, "strength", 1, "cfg", 8, addons=True),
    Family("sd3", None, None, None, "strength", 1, "cfg", 16),
    Family("flux", "FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "strength", 1, "embedded", 16,
           addons=True),
    Family("flux-kontext", "FluxKontextPipeline", "FluxKontextPipeline", None, "reference", 1, "embedded", 16),
    Family("flux2-klein", "Flux2KleinPipeline", "Flux2KleinPipeline", None, "reference", 4, "cfg", 16),
    Family("qwen-image", "QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline", "strength", 1,
           "true_cfg", 16),
    Family("qwen-image-edit", "QwenImagePipeline", "QwenImageEditPipeline", None, "reference", 1, "true_cfg", 16,
           other_edit_pipelines=("QwenImageEditPlusPipeline",)),
    Family("z-image", "ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline", "strength", 1, "cfg", 16),
)}
assert set(FAMILIES) == set(FAMILY_NAMES)

#: reference-edit pipelines: how they take their images (see the module docstring) and the most they take
REFERENCE_PIPELINES: dict[str, tuple[ReferenceBatching, int]] = {
    "FluxKontextPipeline": ("row", 1),
    "QwenImageEditPipeline": ("row", 1),
    "QwenImageEditPlusPipeline": ("one_prompt", 4),
    "Flux2KleinPipeline": ("shared", 8),
}


def family(name: str) -> Family:
    return FAMILIES[name]


def cfg_passes(name: str, guidance_scale: float) -> int:
    """How many denoiser passes a step runs per image: 2 with classifier-free guidance, else 1."""
    kind = FAMILIES[name].guidance
    if kind == "embedded":
        return 1
    if name == "z-image":
        return 2 if guidance_scale > 0 else 1
    return 2 if guidance_scale > 1 else 1
