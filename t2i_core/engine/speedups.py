"""Opt-in speed options for accelerators, applied to a pipeline when it loads.

- ``T2I_CHANNELS_LAST=1``: the denoiser and the VAE in channels-last memory format (faster
  convolutions on tensor-core GPUs);
- ``T2I_FUSE_QKV=1``: fused query/key/value projections in attention (one matmul instead of three);
- ``T2I_COMPILE=1``: ``torch.compile`` of the denoiser, compiled at startup for the warm-up sizes
  (``T2I_WARMUP_SIZES``, default the model's size) at batch 1, 2 and ``T2I_MAX_BATCH_SIZE``: after the
  second batch size the batch dimension is dynamic, so steady-state batches of any size up to the
  maximum do not recompile (duck sizing is off, so a batch that happens to equal another dimension
  does not either).

All off by default: they are for GPUs, and no GPU was at hand to measure them (docs/performance.md).
Every option keeps the modules in place (compile replaces the denoiser's ``forward``), so the edit
pipeline, which shares the modules, gets them too, and the stage hooks run outside the compiled graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from t2i_core.common.config import warmup_sizes

log = logging.getLogger("t2i.speedups")


@dataclass(frozen=True)
class Speedups:
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False
    #: (width, height) pairs to compile for at startup; empty: the model's default size
    warmup_sizes: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> "Speedups":
        return cls(bool(settings.channels_last), bool(settings.fuse_qkv), bool(settings.compile),
                   warmup_sizes(settings.warmup_sizes))

    @property
    def any(self) -> bool:
        return self.channels_last or self.fuse_qkv or self.compile


def denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def apply(pipe: Any, speedups: Speedups) -> list[str]:
    """Apply ``speedups`` to ``pipe``'s modules; returns what was applied (for the log)."""
    import torch

    applied = []
    net = denoiser(pipe)
    if speedups.fuse_qkv:
        if hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()
        elif net is not None and hasattr(net, "fuse_qkv_projections"):
            net.fuse_qkv_projections()
        applied.append("fused QKV")
    if speedups.channels_last:
        for module in (net, getattr(pipe, "vae", None)):
            if module is not None:
                module.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    if speedups.compile and net is not None:
        # forward only: the module's hooks (the stage timer's) stay outside the compiled graph
        net.forward = torch.compile(net.forward)
        applied.append("torch.compile (denoiser)")
    return applied
