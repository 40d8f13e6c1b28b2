"""The arguments of one pipeline call for a batch of engine requests, per pipeline family.

What differs between the families (``t2i_core/common/families.py``):

- guidance: SD, SDXL, SD3, Z-Image and FLUX.2 klein take ``guidance_scale`` (classifier-free guidance);
  FLUX.1 [dev] and Kontext take it as the distilled guidance their transformer embeds (per row, see
  ``row_guidance.py``); Qwen-Image's classifier-free guidance is ``true_cfg_scale``, on when above 1
  with a negative prompt (the engine always passes one, empty by default);
- input images: strength edits take ``image`` (one per row) and ``strength``, inpainting a
  ``mask_image`` too; reference edits take their images as the pipeline wants them: one per prompt row
  (Kontext, Qwen-Image-Edit), one list for the call (FLUX.2 klein), one list for the one prompt of the
  call (Qwen-Image-Edit Plus);
- Kontext scales its output to ``max_area`` (1 MP by default) whatever the size asked, and snaps its
  input to its preferred sizes: told the output's area and not to snap, it makes the size asked and keeps
  the size the API gave the input (the output's);
- arguments a pipeline does not take (FLUX.2 klein has no negative prompt) are left out.
"""

from __future__ import annotations

import inspect
from typing import Any

from t2i_core.common.families import family as family_of
from t2i_core.common.schemas import EngineRequest


def prompt_arguments(items: list[EngineRequest], one_prompt: bool = False) -> dict[str, Any]:
    """The prompt arguments of one pipeline call. When every image of a text-to-image batch has the
    same prompt and negative prompt (``n`` images of one request), the prompt is encoded once and
    repeated (``num_images_per_prompt``) instead of once per image; each image keeps its own generator.
    ``one_prompt``: the pipeline takes one prompt per call (its batch key made them equal)."""
    first = items[0]
    if one_prompt or (len(items) > 1 and first.mode == "generate" and first.controlnet is None and all(
        r.prompt == first.prompt and r.negative_prompt == first.negative_prompt for r in items
    )):
        return {"prompt": [first.prompt], "negative_prompt": [first.negative_prompt], "num_images_per_prompt": len(items)}
    return {"prompt": [r.prompt for r in items], "negative_prompt": [r.negative_prompt for r in items]}


def control_arguments(items: list[EngineRequest]) -> dict[str, Any]:
    """The pipeline arguments of the input images: the image to edit (or the reference images), the
    inpainting mask, the ControlNet's control image and settings (one per item; the settings are the
    batch's, equal by key)."""
    from PIL import Image

    from t2i_core.common.pixels import from_rgb_pixels

    first = items[0]
    out: dict[str, Any] = {}
    if first.references:
        if first.reference_batching == "row":
            out["image"] = [from_rgb_pixels(r.references[0].pixels, r.references[0].width, r.references[0].height)
                            for r in items]
        else:  # one list for the call: equal in every item (batch key)
            out["image"] = [from_rgb_pixels(ref.pixels, ref.width, ref.height) for ref in first.references]
    elif first.mode != "generate":
        out["image"] = [from_rgb_pixels(r.image or b"", r.width, r.height) for r in items]
        out["strength"] = first.strength
    if first.mask is not None:
        out["mask_image"] = [Image.frombytes("L", (r.width, r.height), r.mask or b"") for r in items]
    if first.controlnet is not None:
        controls = [from_rgb_pixels(r.control_image or b"", r.width, r.height) for r in items]
        # text to image takes the control image as ``image``; image to image and inpainting as ``control_image``
        out["control_image" if first.mode != "generate" else "image"] = controls
        out.update(controlnet_conditioning_scale=first.control_scale, control_guidance_start=first.control_start,
                   control_guidance_end=first.control_end)
    return out


def call_arguments(pipe: Any, family: str, items: list[EngineRequest], generators: list[Any]) -> dict[str, Any]:
    """Every argument of ``pipe(...)`` for ``items`` (one batch: equal by batch key) of a ``family`` model,
    but the step callback."""
    first = items[0]
    params = inspect.signature(pipe.__call__).parameters
    kwargs: dict[str, Any] = dict(
        **prompt_arguments(items, one_prompt=first.reference_batching == "one_prompt" and bool(first.references)),
        num_inference_steps=first.steps, generator=generators, output_type="np",
    )
    if family_of(family).guidance == "true_cfg":
        kwargs["true_cfg_scale"] = first.guidance_scale
    else:
        kwargs["guidance_scale"] = first.guidance_scale
    kwargs.update(control_arguments(items))
    if "max_area" in params:  # Kontext scales every output to max_area (1 MP by default), and snaps inputs
        kwargs.update(max_area=first.width * first.height, _auto_resize=False)
    if first.mode == "generate" or "height" in params:
        kwargs["width"], kwargs["height"] = first.width, first.height  # SD3's edit needs them too
    if first.controlnet is not None and first.mode == "generate" and "control_image" in params:
        kwargs["control_image"] = kwargs.pop("image")  # FLUX's ControlNet pipeline names it so
    return {k: v for k, v in kwargs.items() if k in params or k == "num_images_per_prompt"}
