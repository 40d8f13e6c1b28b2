"""Which backend runs a model on the CPU (``T2I_CPU_BACKEND``): torch, or OpenVINO.

"auto" picks OpenVINO when all of these hold, and torch otherwise:

- the ``openvino`` package is installed;
- the model runs on the CPU;
- it is a Stable Diffusion 1.x/2.x model (``"pipeline": "sd"``: CLIP text encoder, UNet, VAE or tiny
  VAE). The other families (SDXL, SD3, FLUX, Qwen-Image, Z-Image) stay in torch: their denoisers take
  extra conditioning (SDXL's added time ids, the DiTs' packed latents, rotary embeddings, several text
  encoders) that this path does not convert;
- its weights are float32 and neither quantized nor offloaded: the bfloat16 CPU fast path already
  uses the CPU's bfloat16 units from torch, and the OpenVINO path is checked against float32 torch;
- no torch speed option is on (``T2I_COMPILE``, ``T2I_CHANNELS_LAST``, ``T2I_FUSE_QKV``): those ask
  for torch. With ``T2I_CPU_BACKEND=openvino`` OpenVINO wins, and the denoiser it runs is not
  ``torch.compile``d (the compiled function would trace into the OpenVINO call).

"openvino" asks for it where it can apply and keeps torch, with a warning naming the reason, where it
cannot: no model is refused. The choice is logged per model and listed as the model's ``backend``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from t2i_core.engine.speedups import Speedups

log = logging.getLogger("t2i.cpu_backend")

#: registry ``pipeline`` values whose modules the OpenVINO path converts
OPENVINO_PIPELINES = frozenset({"sd"})


@dataclass(frozen=True)
class Choice:
    backend: str  # "torch" or "openvino"
    reason: str  # why (for the log)


def choose(setting: str, device: str, entry: Any, dtype: Any, speedups: Speedups | None = None) -> Choice:
    """The backend for ``entry`` loaded on ``device`` in ``dtype`` under ``T2I_CPU_BACKEND=setting``, with
    the torch speed options ``speedups``."""
    import torch

    from t2i_core.engine import openvino_backend

    if setting == "torch":
        return Choice("torch", "T2I_CPU_BACKEND=torch")
    if device != "cpu":
        return Choice("torch", f"the device is {device}, not the CPU")
    if entry.pipeline not in OPENVINO_PIPELINES:
        return Choice("torch", f"OpenVINO is not wired for the {entry.pipeline!r} family (only Stable Diffusion 1.x/2.x)")
    if dtype != torch.float32:
        return Choice("torch", f"the model runs in {str(dtype).removeprefix('torch.')}; OpenVINO is used in float32 only")
    if entry.quantization_spec:
        return Choice("torch", "the model is quantized")
    if entry.memory.offload != "none":
        return Choice("torch", "the model is offloaded")
    if setting == "auto" and speedups is not None and speedups.any:
        return Choice("torch", "a torch speed option is on (T2I_COMPILE, T2I_CHANNELS_LAST or T2I_FUSE_QKV)")
    if not openvino_backend.available():
        return Choice("torch", "the openvino package is not installed")
    return Choice("openvino", f"T2I_CPU_BACKEND={setting}")


def apply(pipe: Any, entry: Any, device: str, dtype: Any, setting: str, speedups: Speedups | None = None) -> str:
    """Put ``pipe`` (loaded, on ``device``) on the backend ``setting`` chooses; returns the backend as the
    model listing shows it: "torch", "openvino", or "openvino" with the components left in torch."""
    choice = choose(setting, device, entry, dtype, speedups)
    if choice.backend == "torch":
        (log.warning if setting == "openvino" else log.info)("%s: CPU backend torch (%s)", entry.id, choice.reason)
        return "torch"
    from t2i_core.engine import openvino_backend

    done = openvino_backend.apply(pipe)
    left = {name: how for name, how in done.items() if how != "openvino"}
    label = "openvino" if not left else "openvino (" + ", ".join(f"{n}: {h}" for n, h in left.items()) + ")"
    log.info("%s: CPU backend %s (%s)", entry.id, label, choice.reason)
    return label


def held_bytes(pipe: Any, backend: str) -> int:
    """Memory the backend holds besides the pipeline's torch modules (counted in the memory budget)."""
    if not backend.startswith("openvino"):
        return 0
    from t2i_core.engine import openvino_backend

    return openvino_backend.held_bytes(pipe)


def speedups_for(speedups: Speedups, backend: str) -> Speedups:
    """The torch speed options to apply to a model on ``backend``: no ``torch.compile`` under OpenVINO."""
    return replace(speedups, compile=False) if backend.startswith("openvino") and speedups.compile else speedups
