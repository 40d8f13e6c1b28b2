"""Pipelines for inpainting and ControlNet built over a loaded model's modules.

No weights are copied: an inpainting or ControlNet pipeline is a new pipeline object over the same
module objects as the model's text-to-image pipeline (plus the ControlNet module).
"""

from __future__ import annotations

import inspect
from typing import Any

from t2i_core.common.families import FAMILIES


#: pipeline class per (family, mode, with a ControlNet)
#: the ControlNet model class per family
CONTROLNET_CLASSES: dict[str, str] = {"sd": "ControlNetModel", "sdxl": "ControlNetModel", "flux": "FluxControlNetModel"}
PIPELINE_CLASSES: dict[tuple[str, str, bool], str] = {
    ("sd", "inpaint", False): "StableDiffusionInpaintPipeline",
    ("sdxl", "inpaint", False): "StableDiffusionXLInpaintPipeline",
    ("sd3", "inpaint", False): "StableDiffusion3InpaintPipeline",
    ("sd", "generate", True): "StableDiffusionControlNetPipeline",
    ("sd", "edit", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd", "inpaint", True): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "generate", True): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "edit", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
    ("flux", "generate", True): "FluxControlNetPipeline",
    ("flux", "edit", True): "FluxControlNetImg2ImgPipeline",
    ("flux", "inpaint", True): "FluxControlNetInpaintPipeline",
    # the DiT families' inpainting pipelines (t2i_core/common/families.py)
    **{(f.name, "inpaint", False): f.inpaint for f in FAMILIES.values() if f.dit and f.inpaint},
}


def assemble(cls: type, pipe: Any, **overrides: Any) -> Any:
    """A pipeline of class ``cls`` over ``pipe``'s module objects (and ``overrides``).

    Built directly rather than with ``Pipeline.from_pipe``, which casts every shared module to its
    ``dtype`` argument (float32 by default): that would silently change the model under the other
    pipelines (and undo the modules a model keeps in float32).
    """
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in pipe.components.items() if k in params}
    kwargs.update({k: v for k, v in pipe.config.items() if k in params and k not in kwargs and not k.startswith("_")})
    kwargs.update(overrides)
    for name, param in params.items():  # optional components the base pipeline lacks (image_encoder...)
        if name not in kwargs and name != "self" and param.default is inspect.Parameter.empty:
            kwargs[name] = None
    variant = cls(**kwargs)
    variant.set_progress_bar_config(disable=True)
    return variant


def mode_pipeline(pipe: Any, class_name: str | None) -> Any:
    """``pipe`` itself when it is of class ``class_name`` (or none is named), else a pipeline of that
    class over its modules (``assemble``)."""
    if class_name is None or type(pipe).__name__ == class_name:
        return pipe
    import diffusers

    return assemble(getattr(diffusers, class_name), pipe)


def pipeline_class(family: str, mode: str, controlnet: bool) -> type:
    import diffusers

    name = PIPELINE_CLASSES.get((family, mode, controlnet))
    if name is None:
        from t2i_core.common.errors import InvalidRequest

        raise InvalidRequest(f"ControlNet is not available for {family} models", param="controlnet")
    return getattr(diffusers, name)
