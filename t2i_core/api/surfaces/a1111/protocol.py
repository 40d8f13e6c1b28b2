"""The AUTOMATIC1111 web UI API's request and answer shapes (``/sdapi/v1``), mapped onto this server's.

Samplers map to this server's schedulers (``SAMPLERS``); A1111's ``scheduler`` (the sigma schedule)
is accepted as ``automatic`` / ``uniform`` (what the schedulers here do) and refused otherwise. Fields
A1111 has and this server has no use for (``save_images``, ``subseed``, ``restore_faces``, ``styles``,
...) are accepted and ignored, as A1111 ignores unknown ones.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from t2i_core.common.errors import InvalidRequest
from t2i_core.common.fields import NegativePrompt, Prompt

#: A1111 sampler name -> (this server's scheduler per pipeline family; None: the model's own), aliases
SAMPLERS: dict[str, tuple[dict[str, str], list[str]]] = {
    "Euler": ({"sd": "euler", "sdxl": "euler", "sd3": "flow_euler"}, ["k_euler"]),
    "Euler a": ({"sd": "euler_a", "sdxl": "euler_a"}, ["k_euler_a", "k_euler_ancestral"]),
    "DPM++ 2M": ({"sd": "dpmpp_2m", "sdxl": "dpmpp_2m"}, ["k_dpmpp_2m"]),
    "DDIM": ({"sd": "ddim", "sdxl": "ddim"}, ["ddim"]),
    "LCM": ({"sd": "lcm", "sdxl": "lcm"}, ["k_lcm"]),
}
#: A1111 schedule types that need no change to the schedulers here
SCHEDULES = {"automatic": "Automatic", "uniform": "Uniform"}
MAX_SEED = 2**32 - 1


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


class Img2Img(Txt2Img):
    init_images: list[str] = Field(default_factory=list, max_length=8)
    denoising_strength: float = Field(default=0.75, gt=0, le=1)
    mask: str | None = None


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
        "parameters": req.model_dump(exclude={"init_images", "mask"}),
        "info": json.dumps(info),
    }
