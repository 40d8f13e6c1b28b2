"""A speed tier's step cache on the denoiser, on for one pipeline call, with the work it saved counted.

diffusers' caches (``diffusers.hooks``: TaylorSeer, FirstBlockCache, MagCache, Pyramid Attention
Broadcast) are hooks on the denoiser's transformer blocks or attention layers. The tier is per
request and requests of different tiers batch apart, so the hooks go on for a batch and come off
after it (``step_cache``): the modules' ``forward`` attributes are put back exactly as they were, so
a ``quality`` batch, or another tier's, runs the model as loaded. The cost is a walk over the
denoiser's modules per batch (milliseconds), nothing per step.

Counted per batch: calls of the hooked modules, and how many of them the cache answered without
running the module (``CacheCount``). The counting wraps the module's own ``forward`` (inside the
cache's hook) and the hooked call (outside it), so it works for every cache kind.

The hooks are generic over DiT families: they find the block lists diffusers' caches know
(``transformer_blocks``, ``single_transformer_blocks``, ``layers``, ...). TaylorSeer is put on whole
blocks here (diffusers' default is the attention layers): more work saved per predicted step, and with
``T2I_COMPILE`` the blocks are compiled one by one (``speedups.py``), so a cache on blocks wraps the
compiled code instead of changing it (no recompile when tiers change). A block that returns ``None``
for the text stream (SD3's last, ``context_pre_only``) is left out: the cache cannot extrapolate it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from t2i_core.common.speed_tiers import SpeedTier
from t2i_core.engine.speedups import block_lists, denoiser

#: the hook names of the supported caches (diffusers.hooks.*)
CACHE_HOOKS = ("taylorseer_cache", "fbc_leader_block_hook", "fbc_block_hook", "mag_cache_leader_block_hook",
               "mag_cache_block_hook", "pyramid_attention_broadcast")
_ABSENT = object()


@dataclass
class CacheCount:
    """Calls of the modules the cache hooked, and how many ran (the rest were answered from the cache)."""

    calls: int = 0
    computed: int = 0

    @property
    def skipped(self) -> int:
        return self.calls - self.computed


def cache_config(tier: SpeedTier, net: Any, steps: int, timestep: Callable[[], float]) -> Any:
    """The diffusers config of ``tier``'s cache for a call of ``steps`` denoising steps."""
    import torch
    from diffusers.hooks import (FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                                 TaylorSeerCacheConfig)

    options = dict(tier.options)
    if tier.cache == "taylorseer":
        names = [f"{name}.{i}" for name, blocks in block_lists(net) for i, block in enumerate(blocks)
                 if not getattr(block, "context_pre_only", False)]
        if not names:  # (an empty list would make diffusers hook its default, the attention layers)
            raise ValueError("the taylorseer cache found no transformer block to cache in this denoiser")
        dtype = next(net.parameters()).dtype
        return TaylorSeerCacheConfig(**options, cache_identifiers=[re.escape(n) for n in names],
                                     taylor_factors_dtype=torch.float32 if dtype == torch.float64 else dtype)
    if tier.cache == "first_block":
        return FirstBlockCacheConfig(**options)
    if tier.cache == "mag":
        return MagCacheConfig(**options, num_inference_steps=steps)
    if tier.cache == "pab":
        for key in ("spatial_attention_timestep_skip_range", "cross_attention_timestep_skip_range"):
            if key in options:
                options[key] = tuple(options[key])
        return PyramidAttentionBroadcastConfig(**options, current_timestep_callback=timestep)
    raise ValueError(f"unknown cache {tier.cache!r}")


def denoising_steps(steps: int, strength: float | None) -> int:
    """The denoiser steps a call of ``steps`` runs: an image-to-image or inpaint call at ``strength`` runs
    the last ``int(steps * strength)`` of them (diffusers' ``get_timesteps``), the others all."""
    if strength is None:
        return steps
    return max(1, min(int(steps * strength), steps))


def _apply(net: Any, config: Any) -> None:
    from diffusers.hooks import (FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                                 apply_first_block_cache, apply_mag_cache, apply_pyramid_attention_broadcast,
                                 apply_taylorseer_cache)

    if isinstance(config, FirstBlockCacheConfig):
        apply_first_block_cache(net, config)
    elif isinstance(config, MagCacheConfig):
        apply_mag_cache(net, config)
    elif isinstance(config, PyramidAttentionBroadcastConfig):
        apply_pyramid_attention_broadcast(net, config)
    else:
        apply_taylorseer_cache(net, config)


def _counted(fn: Callable[..., Any], count: CacheCount, field: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        setattr(count, field, getattr(count, field) + 1)
        return fn(*args, **kwargs)

    return call


@contextmanager
def step_cache(pipe: Any, tier: SpeedTier | None, steps: int) -> Iterator[CacheCount]:
    """``tier``'s cache on ``pipe``'s denoiser for the block (none: nothing is changed); yields the count."""
    count = CacheCount()
    net = denoiser(pipe)
    if tier is None or tier.cache is None or net is None:
        yield count
        return
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    modules = list(net.modules())
    saved = [(m, m.__dict__.get("forward", _ABSENT)) for m in modules]
    timestep = {"t": 1000.0}
    wrapped: list[tuple[Any, Any]] = []

    def note_timestep(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is not None:
            timestep["t"] = float(t.flatten()[0]) if hasattr(t, "flatten") else float(t)

    handle = net.register_forward_pre_hook(note_timestep, with_kwargs=True)
    root = HookRegistry.check_if_exists_or_initialize(net)
    try:
        _apply(net, cache_config(tier, net, steps, lambda: timestep["t"]))
        for module in modules:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is None:
                continue
            for name in CACHE_HOOKS:
                hook = registry.hooks.get(name)
                if hook is None:
                    continue
                # the cache hook's own reference: other hooks (group offloading's, first when the model is
                # offloaded) may sit before it; they are not touched
                ref = hook.fn_ref
                wrapped.append((ref, ref.original_forward))
                ref.original_forward = _counted(ref.original_forward, count, "computed")
                module.forward = _counted(module.forward, count, "calls")
        root.invalidate_child_registries_cache()
        root.reset_stateful_hooks()
        # pipelines whose denoiser is a CacheMixin set their own context per call (cond / uncond); the
        # others (SD3, Z-Image) call it once per step with classifier-free guidance batched: one context
        _set_cache_context(net, CacheContext("cond"))
        yield count
    finally:
        handle.remove()
        _set_cache_context(net, None)
        for ref, original in wrapped:  # (remove_hook hands this on to the hook after it, if any)
            ref.original_forward = original
        for module in modules:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                for name in CACHE_HOOKS:
                    registry.remove_hook(name, recurse=False)
        for module, forward in saved:
            if forward is _ABSENT:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward
        root.invalidate_child_registries_cache()
