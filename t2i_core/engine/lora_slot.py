"""LoRA adapters on a compiled model (``T2I_COMPILE``): one slot of a fixed rank, swapped in place.

A compiled graph is guarded on what the LoRA layers look like: which adapters are active, their
scales (Python floats), which layers are wrapped. diffusers' ``set_adapters`` changes all three, so
every adapter switch recompiled the denoiser, a stall for every request queued behind it.

Here each layer that any adapter registered for the model's family targets gets one more PEFT adapter,
the slot (``t2i_slot``), of rank ``rank``, with a scale of 1, always active, before the first compiled
call. The registered adapters are read when the model loads (each loaded by diffusers under a
temporary name, its per-layer matrices kept in CPU memory, pinned on CUDA machines, then deleted) and
an adapter set is swapped in by copying into the slot's weights, in place:

    B_slot = [w1 * s1 * B1 | w2 * s2 * B2 | 0 ...],  A_slot = [A1; A2; 0 ...]

so that ``B_slot @ A_slot = sum(w_i * s_i * B_i @ A_i)``: exactly what PEFT computes with those
adapters active at those weights (``s_i``: the adapter's alpha / rank), up to the order of the
float sums. No guard sees a change: zero recompiles across adapter sets and weights (the tests count
dynamo's compiles). The slot is computed for every batch, with or without adapters (rank ``rank``
LoRA matmuls on the targeted layers), and its rank bounds the ranks a request's adapters add up to.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from t2i_core.common.addon_fields import MAX_ADAPTERS
from t2i_core.common.errors import InvalidRequest, ModelUnavailable
from t2i_core.engine.lora import AdapterSlots, LoadedAdapter

log = logging.getLogger("t2i.lora")
SLOT = "t2i_slot"
_STAGING = "t2i_staging"
#: (pipeline component, module name inside it): a LoRA layer
LayerKey = tuple[str, str]


@dataclass
class Harvested:
    """An adapter's matrices per layer: (A, B, scale); its rank (the largest of its layers)."""

    layers: dict[LayerKey, tuple[Any, Any, float]]
    rank: int


def _lora_layers(pipe: Any, name: str) -> dict[LayerKey, Any]:
    import torch
    from peft.tuners.lora import LoraLayer

    found = {}
    for component, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for path, layer in module.named_modules():
                if isinstance(layer, LoraLayer) and name in layer.lora_A:
                    found[(component, path)] = layer
    return found


def _on_host(tensor: Any) -> Any:
    """A copy of ``tensor`` in CPU memory, pinned when CUDA is there (so that copying it into the slot
    does not wait for the GPU): harvested adapters take no device memory."""
    import torch

    host = tensor.detach().to("cpu", copy=True)
    return host.pin_memory() if torch.cuda.is_available() else host


def harvest(pipe: Any, adapter_id: str, path: str, weight_name: str | None) -> Harvested:
    """Load the adapter with diffusers (under a staging name), keep its matrices, delete it again."""
    kwargs = {"weight_name": weight_name} if weight_name else {}
    if path.endswith(".safetensors"):
        import os

        path, kwargs = os.path.dirname(path) or ".", {"weight_name": os.path.basename(path)}
    pipe.load_lora_weights(path, adapter_name=_STAGING, local_files_only=True, **kwargs)
    try:
        layers = {}
        for key, layer in _lora_layers(pipe, _STAGING).items():
            if layer.use_dora.get(_STAGING) or layer.lora_bias.get(_STAGING):
                raise ModelUnavailable(f"adapter {adapter_id!r} uses DoRA or LoRA biases, which a compiled model "
                                       "(T2I_COMPILE=1) cannot swap in", param="adapters")
            a, b = layer.lora_A[_STAGING].weight, layer.lora_B[_STAGING].weight
            layers[key] = (_on_host(a), _on_host(b), float(layer.scaling[_STAGING]))
    finally:
        pipe.delete_adapters([_STAGING])
    return Harvested(layers, max((a.shape[0] for a, _, _ in layers.values()), default=0))


@dataclass
class CompiledAdapterSlots(AdapterSlots):
    """``AdapterSlots`` for a compiled model: every adapter it can take is read at load, none is loaded
    or evicted later, and an adapter set is swapped into the slot in place (see the module's docstring)."""

    rank: int = 0
    harvested: dict[str, Harvested] = field(default_factory=dict)
    _slot: dict[LayerKey, Any] = field(default_factory=dict)
    #: the model's registered adapters that could not be read at load, with the reason
    missing: dict[str, str] = field(default_factory=dict)
    #: harvested adapters (in CPU memory) stay with the model: the memory budget cannot unload them one by one
    evictable = False

    @classmethod
    def prepare(cls, pipe: Any, adapters: list[tuple[str, str, str | None]], rank: int = 0) -> "CompiledAdapterSlots":
        """Read ``adapters`` (id, path, weight file name) and give ``pipe`` a slot covering their layers,
        of ``rank`` (0: enough for the ``MAX_ADAPTERS`` largest together). Before the first compiled call."""
        slots = cls()
        for adapter_id, path, weight_name in adapters:
            started = time.perf_counter()
            try:
                found = harvest(pipe, adapter_id, path, weight_name)
            except Exception as exc:  # noqa: BLE001 - the model serves without this adapter
                slots.missing[adapter_id] = f"{type(exc).__name__}: {exc}"
                log.warning("adapter %s not read for the compiled model: %s", adapter_id, slots.missing[adapter_id])
                continue
            slots.harvested[adapter_id] = found
            nbytes = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in found.layers.values())
            slots.loaded[adapter_id] = LoadedAdapter(adapter_id, nbytes, time.perf_counter() - started)
        if not slots.harvested:
            return slots
        ranks = sorted((h.rank for h in slots.harvested.values()), reverse=True)
        slots.rank = rank or sum(ranks[:MAX_ADAPTERS])
        slots._make_slot(pipe, {key for h in slots.harvested.values() for key in h.layers})
        log.info("LoRA slot of rank %d on %d layers for %d adapter(s) (compiled model)", slots.rank, len(slots._slot),
                 len(slots.harvested))
        return slots

    def _make_slot(self, pipe: Any, keys: set[LayerKey]) -> None:
        import re

        import torch
        from peft import LoraConfig, inject_adapter_in_model

        for component in sorted({c for c, _ in keys}):
            names = sorted(path for c, path in keys if c == component)
            config = LoraConfig(r=self.rank, lora_alpha=self.rank, lora_dropout=0.0, init_lora_weights=True,
                                target_modules="|".join(re.escape(n) for n in names))
            inject_adapter_in_model(config, pipe.components[component], adapter_name=SLOT)
        self._slot = _lora_layers(pipe, SLOT)
        with torch.no_grad():
            for layer in self._slot.values():
                layer.lora_A[SLOT].weight.zero_()
                layer.lora_B[SLOT].weight.zero_()
            for layer in self._slot.values():  # the slot alone, always on: set once, never changed
                layer._active_adapter = [SLOT]
                layer._disable_adapters = False
        self._layers = list(self._slot.values())

    def bytes(self) -> int:
        """The harvested adapters' bytes where they count against the memory budget: on a CPU model (the
        same RAM); on an accelerator they are in host memory and count nothing. (The slot's own weights
        are parameters of the model's modules: in the model's bytes.)"""
        on_cpu = all(layer.lora_A[SLOT].weight.device.type == "cpu" for layer in self._slot.values())
        return super().bytes() if on_cpu else 0

    def check_loadable(self, adapter_id: str) -> None:
        """A compiled model takes no adapter after its load: refused before anything is unloaded for it."""
        reason = self.missing.get(adapter_id, "it was not registered for this model's family then")
        raise ModelUnavailable(f"adapter {adapter_id!r} was not read when this model loaded with T2I_COMPILE=1 ({reason}); "
                               "a compiled model takes its adapters at load: unload the model and load it again",
                               param="adapters")

    def load(self, pipe: Any, adapter_id: str, path: str, weight_name: str | None) -> LoadedAdapter:
        self.check_loadable(adapter_id)
        raise AssertionError("unreachable: check_loadable refuses every adapter")  # pragma: no cover

    def delete(self, pipe: Any, adapter_id: str) -> None:  # pragma: no cover - evictable is False
        raise AssertionError("a compiled model's adapters are not unloaded one by one")

    def _apply(self, pipe: Any, adapters: tuple[tuple[str, float], ...]) -> None:
        """Copy ``adapters`` into the slot (zero for none), checking that their ranks fit its rank."""
        import torch

        needed = sum(self.harvested[a].rank for a, _ in adapters)
        if needed > self.rank:
            ranks = ", ".join(f"{a} (rank {self.harvested[a].rank})" for a, _ in adapters)
            raise InvalidRequest(f"adapters {ranks} add up to rank {needed}, more than the rank {self.rank} of the "
                                 "compiled model's LoRA slot (T2I_COMPILE_LORA_RANK); send fewer adapters at once",
                                 param="adapters")
        with torch.no_grad():
            for key, layer in self._slot.items():
                slot_a, slot_b = layer.lora_A[SLOT].weight, layer.lora_B[SLOT].weight
                slot_a.zero_()
                slot_b.zero_()
                start = 0
                for adapter_id, weight in adapters:
                    found = self.harvested[adapter_id].layers.get(key)
                    if found is None:
                        continue
                    a, b, scale = found
                    rank = a.shape[0]
                    slot_a[start:start + rank].copy_(a, non_blocking=True)
                    part = slot_b[:, start:start + rank]
                    part.copy_(b, non_blocking=True)
                    part.mul_(weight * scale)  # (on the device, after the copy: the same stream)
                    start += rank
