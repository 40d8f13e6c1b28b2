"""The per-request scheduler allow-list, and which pipeline families each one suits.

A scheduler is built from the loaded pipeline's own scheduler config, so a model's training
settings (beta schedule, timestep spacing, prediction type) carry over; no weights are involved.
"""

from __future__ import annotations

from typing import Any

from t2i_core.common.errors import InvalidRequest

# name -> (diffusers class, config overrides, pipeline families it works with)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "euler": ("EulerDiscreteScheduler", {}, ("sd", "sdxl")),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, ("sd", "sdxl")),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, ("sd", "sdxl")),
    "ddim": ("DDIMScheduler", {}, ("sd", "sdxl")),
    "lcm": ("LCMScheduler", {}, ("sd", "sdxl")),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {},
                   ("sd3", "flux", "flux-kontext", "flux2-klein", "qwen-image", "qwen-image-edit", "z-image")),
}


def check_scheduler(name: str, pipeline: str, *, field: str = "scheduler") -> str:
    """``name`` when it is allowed and suits the ``pipeline`` family; InvalidRequest otherwise."""
    if name not in SCHEDULERS:
        raise InvalidRequest(f"{field} must be one of {', '.join(SCHEDULERS)}; got {name!r}", param=field)
    families = SCHEDULERS[name][2]
    if pipeline not in families:
        fitting = [n for n, (_, _, fams) in SCHEDULERS.items() if pipeline in fams]
        raise InvalidRequest(
            f"{field} {name!r} does not work with {pipeline} models; use one of {', '.join(fitting)}",
            param=field,
        )
    return name


def build_scheduler(name: str, base_config: Any) -> Any:
    import diffusers

    class_name, overrides, _ = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)
