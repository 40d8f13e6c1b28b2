"""LoRA adapters loaded into a model: diffusers' ``load_lora_weights`` (PEFT layers beside the base
weights), switched with ``set_adapters`` / ``disable_lora``. The base weights are never changed (no
fusing), so an image made without adapters, or with adapter A, is the same whatever other adapters
are loaded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("t2i.lora")


def peft_name(adapter_id: str) -> str:
    """The adapter's name inside the model: PEFT names become module attributes, so no dots or slashes."""
    return "lora_" + hashlib.sha1(adapter_id.encode("utf-8")).hexdigest()[:12]


@dataclass
class LoadedAdapter:
    id: str
    bytes: int
    load_s: float
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class AdapterSlots:
    """The adapters loaded into one model, and which set (with weights) is active now."""

    loaded: dict[str, LoadedAdapter] = field(default_factory=dict)
    active: tuple[tuple[str, float], ...] = ()
    switches: int = 0
    switch_s: float = 0.0
    #: the pipeline's PEFT LoRA layers (found again after an adapter is loaded or deleted)
    _layers: list[Any] | None = None
    #: whether the memory budget may unload these adapters one by one (not those of a compiled model)
    evictable = True

    def bytes(self) -> int:
        return sum(a.bytes for a in self.loaded.values())

    def check_loadable(self, adapter_id: str) -> None:
        """Raise the error ``load`` would raise for ``adapter_id`` whatever its file (before the memory
        budget makes room for it); here none: any adapter of the family can be loaded."""

    def load(self, pipe: Any, adapter_id: str, path: str, weight_name: str | None) -> LoadedAdapter:
        """Load the adapter's weights into ``pipe``'s modules (not active until ``activate``)."""
        started = time.perf_counter()
        name = peft_name(adapter_id)
        kwargs = {"weight_name": weight_name} if weight_name else {}
        if path.endswith(".safetensors"):
            import os

            path, kwargs = os.path.dirname(path) or ".", {"weight_name": os.path.basename(path)}
        try:
            pipe.load_lora_weights(path, adapter_name=name, local_files_only=True, **kwargs)
        except BaseException:
            # diffusers adds the PEFT layers and switches the new adapter on before a later step can fail:
            # take them out again and put the active set back, so later requests run as before
            try:
                pipe.delete_adapters([name])
            except Exception:  # noqa: BLE001 - nothing of it was added
                pass
            self._layers = None
            if self._lora_layers(pipe):
                self._apply(pipe, self.active)
            raise
        self._layers = None
        adapter = LoadedAdapter(adapter_id, adapter_bytes(pipe, name), time.perf_counter() - started)
        self.loaded[adapter_id] = adapter
        self._apply(pipe, self.active)  # loading activates the new adapter alone: put the active set back
        log.info("loaded adapter %s in %.3fs (%d bytes)", adapter_id, adapter.load_s, adapter.bytes)
        return adapter

    def activate(self, pipe: Any, adapters: list[tuple[str, float]]) -> None:
        """Make exactly ``adapters`` (id, weight) active; nothing to do when they already are."""
        wanted = tuple(adapters)
        now = time.monotonic()
        for adapter_id, _ in wanted:
            self.loaded[adapter_id].last_used = now
        if wanted == self.active or not self.loaded:
            return
        started = time.perf_counter()
        self._apply(pipe, wanted)
        self.active = wanted
        self.switches += 1
        self.switch_s += time.perf_counter() - started

    def _apply(self, pipe: Any, adapters: tuple[tuple[str, float], ...]) -> None:
        """Set the active adapters and their weights on each LoRA layer: what diffusers' ``set_adapters`` /
        ``disable_lora`` do, minus the walk over every module of the pipeline and PEFT's ``requires_grad``
        bookkeeping on every adapter weight, which inference never reads (the measured cost of both is in
        docs/performance.md). PEFT's own attributes are written, as its ``set_adapter`` and
        ``enable_adapters`` do last; a PEFT without them gets its public calls."""
        names = [peft_name(a) for a, _ in adapters]
        for layer in self._lora_layers(pipe):
            if hasattr(layer, "_active_adapter") and hasattr(layer, "_disable_adapters"):
                layer._disable_adapters = not names
                if names:
                    layer._active_adapter = names
            else:  # pragma: no cover - another PEFT version
                layer.enable_adapters(bool(names))
                if names:
                    layer.set_adapter(names)
            for name, (_, weight) in zip(names, adapters):
                layer.set_scale(name, weight)

    def _lora_layers(self, pipe: Any) -> list[Any]:
        if self._layers is None:
            import torch
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._layers = [m for c in pipe.components.values() if isinstance(c, torch.nn.Module)
                            for m in c.modules() if isinstance(m, BaseTunerLayer)]
        return self._layers

    def delete(self, pipe: Any, adapter_id: str) -> None:
        pipe.delete_adapters([peft_name(adapter_id)])
        self._layers = None
        del self.loaded[adapter_id]
        if any(a == adapter_id for a, _ in self.active):
            self.active = ()
        if self.loaded:
            self._apply(pipe, self.active)


def adapter_bytes(pipe: Any, name: str) -> int:
    """Bytes of the adapter ``name``'s parameters in all of the pipeline's modules."""
    import torch

    marker = f".{name}."
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for n, p in component.named_parameters() if marker in n)
    return total
