"""Which models can inpaint (an edit with a mask), decided from the denoiser's input channels.

diffusers' inpainting pipelines (with or without a ControlNet) take one of two denoisers per family: a
plain one, whose input is the latents alone (the pipeline blends the unmasked area back in at every
step), or a dedicated inpainting checkpoint, whose input is the latents, the mask and the masked
image's latents. Each pipeline accepts only those two channel counts (SD and SDXL: 4 or 9; SD3: 16 or
33) and fails in the middle of the call on any other (the tiny SD3's transformer takes 4 channels). A
dedicated checkpoint cannot run without a mask.

The API refuses an impossible request before decoding its images, from the model's denoiser config
on disk (``denoiser_channels``: no torch, no loading); when the config is not on disk yet (a model
never loaded), the engine refuses it from the loaded model, with the same message (``mode_refusal``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from t2i_core.common.errors import InvalidRequest
from t2i_core.weights import sources
from t2i_core.weights.random_arch import random_folder
from t2i_core.weights.tiny_pipelines import tiny_folder

#: the denoiser input channels of each family's inpainting pipelines: (plain, dedicated checkpoint)
INPAINT_CHANNELS: dict[str, tuple[int, int]] = {"sd": (4, 9), "sdxl": (4, 9), "sd3": (16, 33)}
DENOISERS = ("unet", "transformer")
#: seconds before a model whose config was not on disk is looked for again
RETRY_S = 60.0


def mode_refusal(model_id: str, family: str, in_channels: int | None, mode: str) -> InvalidRequest | None:
    """Why ``model_id`` (its denoiser taking ``in_channels``; None: unknown) cannot run ``mode``
    (generate, edit, inpaint), or None when it can (or when it is not known)."""
    if in_channels is None or family not in INPAINT_CHANNELS:
        return None
    plain, dedicated = INPAINT_CHANNELS[family]
    if mode == "inpaint" and in_channels not in (plain, dedicated):
        return InvalidRequest(
            f"model {model_id!r} cannot inpaint: its denoiser takes {in_channels} input channels, and {family} "
            f"inpainting needs {plain} (a plain model) or {dedicated} (an inpainting checkpoint); send the edit "
            "without a mask, or choose another model", param="mask")
    if mode != "inpaint" and in_channels == dedicated:
        return InvalidRequest(f"model {model_id!r} is an inpainting checkpoint: send an image with a mask",
                              param="model")
    return None


def loaded_channels(pipe: Any) -> int | None:
    """The input channels of a loaded pipeline's denoiser."""
    for name in DENOISERS:
        config = getattr(getattr(pipe, name, None), "config", None)
        if config is not None and getattr(config, "in_channels", None) is not None:
            return int(config.in_channels)
    return None


_found: dict[tuple[str, str], tuple[int | None, float]] = {}


def denoiser_channels(entry: Any) -> int | None:
    """The input channels of the registry entry's denoiser, from its config on disk; None when the
    config is not there (weights not downloaded, a built-in model not built yet). Remembered."""
    key = (entry.id, entry.source)
    known = _found.get(key)
    if known is not None and (known[0] is not None or time.monotonic() - known[1] < RETRY_S):
        return known[0]
    channels = None
    for config in _denoiser_configs(entry):
        try:
            channels = int(json.loads(config.read_text(encoding="utf-8"))["in_channels"])
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    _found[key] = (channels, time.monotonic())
    return channels


def _denoiser_configs(entry: Any) -> list[Path]:
    """Where the entry's denoiser config would be on disk, without building or downloading anything."""
    kind, ref = entry.source_kind, entry.source_ref
    folder = entry.store_copy()
    if folder is None and kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = [try_to_load_from_cache(ref, f"{name}/config.json") for name in DENOISERS]
        return [Path(f) for f in found if isinstance(f, str)]
    if folder is None and kind == "tiny":
        folder = tiny_folder(ref)
    elif folder is None and kind == "random":
        folder = random_folder(ref)
    elif folder is None and kind == "local":
        folder = ref
    elif folder is None and kind == "bentoml":
        if sources.unavailable_reason(entry.parsed_source, "pipeline", entry.id) is not None:
            return []
        folder = sources.resolve(entry.parsed_source, "pipeline", entry.id)
    return [Path(folder) / name / "config.json" for name in DENOISERS]
