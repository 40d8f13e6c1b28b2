"""The AUTOMATIC1111 web UI API's request and answer shapes (``/sdapi/v1``), mapped onto this server's.

Samplers map to this server's schedulers (``SAMPLERS``); A1111's ``scheduler`` (the sigma schedule)
is accepted as ``automatic`` / ``uniform`` (what the schedulers here do) and refused otherwise. Fields
A1111 has and this server has no use for (``save_images``, ``subseed``, ``restore_faces``, ``styles``,
...) are accepted and ignored, as A1111 ignores unknown ones.

The creative controls come as A1111 spells them: ``<lora:name:weight>`` in the prompt (``split_loras``),
img2img's ``mask`` with ``inpainting_mask_invert`` and ``mask_blur`` (``a1111_mask``), and one unit of
the ControlNet extension in ``alwayson_scripts`` (``controlnet_fields``).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from t2i_core.api.images.codecs import open_image
from t2i_core.common.errors import InvalidRequest
from t2i_core.common.fields import NegativePrompt, Prompt

#: the families whose models denoise by flow matching (their one scheduler here: flow_euler)
FLOW_FAMILIES = ("sd3", "flux", "flux-kontext", "flux2-klein", "qwen-image", "qwen-image-edit", "z-image")
#: A1111 sampler name -> (this server's scheduler per pipeline family; None: the model's own), aliases
SAMPLERS: dict[str, tuple[dict[str, str], list[str]]] = {
    "Euler": ({"sd": "euler", "sdxl": "euler", **{family: "flow_euler" for family in FLOW_FAMILIES}}, ["k_euler"]),
    "Euler a": ({"sd": "euler_a", "sdxl": "euler_a"}, ["k_euler_a", "k_euler_ancestral"]),
    "DPM++ 2M": ({"sd": "dpmpp_2m", "sdxl": "dpmpp_2m"}, ["k_dpmpp_2m"]),
    "DDIM": ({"sd": "ddim", "sdxl": "ddim"}, ["ddim"]),
    "LCM": ({"sd": "lcm", "sdxl": "lcm"}, ["k_lcm"]),
}
#: A1111 schedule types that need no change to the schedulers here
SCHEDULES = {"automatic": "Automatic", "uniform": "Uniform"}
#: A1111's extra-network syntax in prompts, ``<kind:arg:arg...>`` (its ``re_extra_net``)
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
#: the extra-network kinds that name a LoRA adapter (``lyco`` is the LyCORIS extension's older name)
LORA_KINDS = ("lora", "lyco")
#: A1111's default ``mask_blur``
DEFAULT_MASK_BLUR = 4


class Txt2Img(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: Prompt
    negative_prompt: NegativePrompt = None
    steps: int | None = Field(default=None, ge=1, le=100)
    cfg_scale: float | None = Field(default=None, ge=0, le=30)
    width: int | None = None
    height: int | None = None
    seed: int = -1
    sampler_name: str | None = Field(default=None, max_length=64)
    sampler_index: str | None = Field(default=None, max_length=64)
    scheduler: str | None = Field(default=None, max_length=64)
    batch_size: int = Field(default=1, ge=1, le=8)
    n_iter: int = Field(default=1, ge=1, le=8)
    send_images: bool = True
    override_settings: dict[str, Any] = Field(default_factory=dict)
    #: scripts that run on every request; the ControlNet extension's units are read (``controlnet_fields``)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class Img2Img(Txt2Img):
    init_images: list[str] = Field(default_factory=list, max_length=8)
    denoising_strength: float = Field(default=0.75, gt=0, le=1)
    #: inpainting: white (or, in an image with transparency, opaque) where the image is repainted
    mask: str | None = None
    #: 1: repaint where the mask is black instead
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1)
    #: the mask's Gaussian blur (standard deviation in pixels) before it is binarized at one half
    mask_blur: float | None = Field(default=None, ge=0, le=64)
    mask_blur_x: float | None = Field(default=None, ge=0, le=64)
    mask_blur_y: float | None = Field(default=None, ge=0, le=64)
    #: A1111's fill of the masked area (0 fill, 1 original, 2 latent noise, 3 latent nothing): accepted;
    #: here the masked area always starts from the image noised to ``denoising_strength`` (1, original)
    inpainting_fill: int = Field(default=0, ge=0, le=3)
    #: A1111's "only masked" inpainting: accepted and ignored (the whole image is worked at its size)
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = 0


def split_loras(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """A1111's prompt syntax for adapters: the prompt without its ``<kind:...>`` tags (A1111 removes
    every extra-network tag from the text the model reads, and ignores kinds it has no network for) and
    the adapters of its ``<lora:name>`` / ``<lora:name:weight>`` tags (weight 1 when omitted; a
    second weight, A1111's separate UNet weight, is ignored: an adapter here has one weight)."""
    adapters: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        kind, args = match.group(1).lower(), [a.strip() for a in match.group(2).split(":")]
        if kind not in LORA_KINDS:
            return ""
        positional = [a for a in args[1:] if "=" not in a]
        named = dict(a.split("=", 1) for a in args[1:] if "=" in a)
        weight_text = named.get("te", positional[0] if positional else "1")
        try:
            weight = float(weight_text)
        except ValueError:
            raise InvalidRequest(f"the weight of {match.group(0)} in the prompt must be a number; got {weight_text!r}",
                                 param="prompt") from None
        if not args[0]:
            raise InvalidRequest(f"{match.group(0)} in the prompt names no adapter", param="prompt")
        adapters.append({"id": args[0], "weight": weight})
        return ""

    return EXTRA_NETWORK.sub(take, prompt).strip(), adapters


def a1111_mask(data: bytes, req: Img2Img, max_pixels: int) -> bytes:
    """The img2img mask as A1111 prepares it, as a PNG white where the image is repainted: an image with
    transparency gives its alpha (opaque = repaint), else its gray levels, binarized at one half; then
    inverted when ``inpainting_mask_invert`` is 1, then blurred by ``mask_blur`` (Gaussian, as A1111;
    the model repaints where the blurred mask is at least half white)."""
    img = open_image(data, max_pixels=max_pixels, field="mask")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
        alpha = img.getchannel("A")
        mask = alpha if alpha.getextrema() != (255, 255) else img.convert("L")
    else:
        mask = img.convert("L")
    mask = mask.point(lambda v: 255 if v > 128 else 0)
    if req.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    blur = DEFAULT_MASK_BLUR if req.mask_blur is None else req.mask_blur
    blur_x = blur if req.mask_blur_x is None else req.mask_blur_x
    blur_y = blur if req.mask_blur_y is None else req.mask_blur_y
    if blur_x > 0 or blur_y > 0:
        mask = mask.filter(ImageFilter.GaussianBlur((blur_x, blur_y)))
    out = io.BytesIO()
    mask.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def controlnet_fields(req: Txt2Img) -> dict[str, Any]:
    """The native request's ControlNet fields from the ControlNet extension's units in
    ``alwayson_scripts`` (``{"controlnet": {"args": [unit, ...]}}``, the script's name in any case):
    the one enabled unit's ``model`` (an A1111 title's `` [hash]`` dropped), ``image`` (or
    ``input_image``; None: none given), ``weight``, ``guidance_start`` / ``guidance_end``. The control
    image is used as given, whatever the unit's ``module`` (no preprocessing); more than one enabled
    unit is a 400. Empty when no unit is enabled."""
    scripts = {str(k).lower(): v for k, v in req.alwayson_scripts.items()}
    script = scripts.get("controlnet")
    if script is None:
        return {}
    args = script.get("args", []) if isinstance(script, dict) else script
    if not isinstance(args, list):
        raise InvalidRequest("alwayson_scripts.controlnet.args must be a list of ControlNet units",
                             param="alwayson_scripts")
    units = []
    for index, unit in enumerate(args):
        if not isinstance(unit, dict):
            raise InvalidRequest(f"alwayson_scripts.controlnet.args[{index}] must be a ControlNet unit object; "
                                 f"got {type(unit).__name__}", param="alwayson_scripts")
        if unit.get("enabled", True) not in (False, 0, "false", "False"):
            units.append(unit)
    if not units:
        return {}
    if len(units) > 1:
        raise InvalidRequest(f"only one ControlNet unit per request is supported here; got {len(units)} enabled units",
                             param="alwayson_scripts")
    unit = units[0]
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):  # the extension's {"image": b64, "mask": b64}
        image = image.get("image")
    if image is not None and not isinstance(image, str):
        raise InvalidRequest(f"the ControlNet unit's image must be base64 text; got {type(image).__name__}",
                             param="alwayson_scripts")
    model = str(unit.get("model") or "None").split(" [", 1)[0].strip()
    return {"controlnet": model, "control_image": image or None,
            "controlnet_conditioning_scale": unit.get("weight"),
            "control_guidance_start": unit.get("guidance_start"), "control_guidance_end": unit.get("guidance_end")}


def scheduler_for(req: Txt2Img, pipeline: str) -> str | None:
    """This server's scheduler for A1111's sampler (None: the model's default); 400 naming it otherwise."""
    if req.scheduler is not None and req.scheduler.strip().lower() not in SCHEDULES:
        raise InvalidRequest(f"scheduler must be one of {', '.join(SCHEDULES.values())}; got {req.scheduler!r}",
                             param="scheduler")
    name = req.sampler_name or req.sampler_index
    if not name:
        return None
    for sampler, (per_family, aliases) in SAMPLERS.items():
        if name == sampler or name in aliases:
            if pipeline not in per_family:
                fitting = [s for s, (fams, _) in SAMPLERS.items() if pipeline in fams]
                raise InvalidRequest(f"sampler_name {name!r} does not work with {pipeline} models; use one of "
                                     f"{', '.join(fitting)}", param="sampler_name")
            return per_family[pipeline]
    raise InvalidRequest(f"sampler_name must be one of {', '.join(SAMPLERS)}; got {name!r}", param="sampler_name")


def sampler_rows() -> list[dict[str, Any]]:
    return [{"name": name, "aliases": aliases, "options": {}} for name, (_, aliases) in SAMPLERS.items()]


def schedule_rows() -> list[dict[str, Any]]:
    return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for name, label in SCHEDULES.items()]


def answer(images: list[Any], req: Txt2Img, sampler: str) -> dict[str, Any]:
    """A1111's answer: base64 images, the request's parameters, and ``info`` as a JSON string."""
    import base64

    first = images[0]
    info = {
        "prompt": req.prompt, "all_prompts": [req.prompt] * len(images),
        "negative_prompt": req.negative_prompt or "", "all_negative_prompts": [req.negative_prompt or ""] * len(images),
        "seed": first.seed, "all_seeds": [i.seed for i in images], "subseed": -1, "all_subseeds": [-1] * len(images),
        "width": first.width, "height": first.height, "sampler_name": sampler, "cfg_scale": req.cfg_scale,
        "steps": req.steps, "batch_size": req.batch_size, "n_iter": req.n_iter, "sd_model_name": first.model,
        "infotexts": [i.parameters for i in images], "job_timestamp": "", "index_of_first_image": 0,
    }
    return {
        "images": [base64.b64encode(i.data).decode("ascii") for i in images] if req.send_images else [],
        "parameters": req.model_dump(exclude={"init_images", "mask", "alwayson_scripts"}),
        "info": json.dumps(info),
    }
