"""Opt-in speed options for accelerators, applied to a pipeline when it loads.

- ``T2I_CHANNELS_LAST=1``: the denoiser and the VAE in channels-last memory format (faster
  convolutions on tensor-core GPUs);
- ``T2I_FUSE_QKV=1``: fused query/key/value projections in attention (one matmul instead of three);
- ``T2I_COMPILE=1``: ``torch.compile`` of the denoiser, compiled at startup for the warm-up sizes
  (``T2I_WARMUP_SIZES``, default the model's size) at batch 1, 2 and ``T2I_MAX_BATCH_SIZE``: after the
  second batch size the batch dimension is dynamic, so steady-state batches of any size up to the
  maximum do not recompile (duck sizing is off, so a batch that happens to equal another dimension
  does not either). A UNet is compiled whole; a transformer (DiT) block by block ("regional"
  compilation: the blocks of a list share one compiled graph), so that a speed tier's step cache,
  which hooks the blocks, wraps the compiled code instead of changing it. LoRA adapters go through a
  slot of a fixed rank (``T2I_COMPILE_LORA_RANK``) swapped in place (``lora_slot.py``): switching
  adapters does not recompile either.

All off by default: they are for GPUs, and no GPU was at hand to measure them (docs/performance.md).
Every option keeps the modules in place (compile replaces the denoiser's ``forward``), so the edit
pipeline, which shares the modules, gets them too, and the stage hooks run outside the compiled graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from t2i_core.common.config import warmup_sizes
from t2i_core.engine.lora import AdapterSlots

log = logging.getLogger("t2i.speedups")


@dataclass(frozen=True)
class Speedups:
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False
    #: (width, height) pairs to compile for at startup; empty: the model's default size
    warmup_sizes: tuple[tuple[int, int], ...] = ()
    #: the rank of a compiled model's LoRA slot (0: enough for any request's adapters)
    lora_rank: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> "Speedups":
        return cls(bool(settings.channels_last), bool(settings.fuse_qkv), bool(settings.compile),
                   warmup_sizes(settings.warmup_sizes), int(getattr(settings, "compile_lora_rank", 0)))

    @property
    def any(self) -> bool:
        return self.channels_last or self.fuse_qkv or self.compile


def denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def block_lists(net: Any) -> list[tuple[str, Any]]:
    """A transformer denoiser's top-level block lists (name, ModuleList), as diffusers' caches find them
    (``transformer_blocks``, ``single_transformer_blocks``, ``layers``, ...); none for a UNet."""
    import torch
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return [(name, child) for name, child in net.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList)]


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
        # forward only: the modules' hooks (the stage timer's, a step cache's) stay outside the compiled graph
        blocks = [block for _, listed in block_lists(net) for block in listed]
        if blocks:
            for block in blocks:
                block.forward = torch.compile(block.forward)
            applied.append(f"torch.compile (the denoiser's {len(blocks)} transformer blocks)")
        else:
            net.forward = torch.compile(net.forward)
            applied.append("torch.compile (denoiser)")
    return applied


def adapter_slots(pipe: Any, entry: Any, registry: Any, speedups: Speedups) -> AdapterSlots:
    """Where ``pipe``'s LoRA adapters go: loaded on first use (``AdapterSlots``); with ``T2I_COMPILE``,
    every adapter registered for its family read now into a slot swapped in place (no recompiles)."""
    if not speedups.compile:
        return AdapterSlots()
    from t2i_core.engine.lora_slot import CompiledAdapterSlots

    usable = [a for a in registry.adapters() if a.family == entry.pipeline and a.unavailable_reason() is None]
    return CompiledAdapterSlots.prepare(pipe, [(a.id, a.local_path(), a.weight_name) for a in usable], speedups.lora_rank)
