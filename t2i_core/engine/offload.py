"""Big models on small GPUs: a registry entry's ``memory.offload``, and what it leaves on the device.

- ``model``: diffusers' ``enable_model_cpu_offload`` (accelerate's hooks): each component (text
  encoders, transformer, VAE) moves to the device when it runs and back after: the device holds the
  largest component, at a small cost per call (each component's copy, once per call);
- ``sequential``: each leaf module's weights visit the device for its forward only: the least device
  memory, the slowest (a copy per layer per step). Through diffusers' group offloading at ``leaf_level``,
  its equivalent of ``enable_sequential_cpu_offload``: accelerate 1.15's sequential offload turned the
  CLIP text encoder's token embedding (transformers 5.23) into a plain tensor on the first call, and the
  second call failed (``TypeError: new() received an invalid combination of arguments``);
- ``group``: diffusers' group offloading (``enable_group_offload``, ``block_level``): blocks of
  ``offload_blocks`` layers visit the device in turn: between the two.

The memory budget counts what stays on the device (``resident_bytes``): a cautious figure per mode (the
largest component; the largest leaf module, twice; the largest group of blocks plus a component's
weights outside its blocks). On the CPU the weights stay in the same RAM wherever they are, so the
budget counts them all; the hooks run all the same there (the configuration can be checked on a CPU
before it goes to a GPU: images are the same, tests/engine/test_offload.py).
"""

from __future__ import annotations

from typing import Any, Literal

from t2i_core.weights.quantize import component_bytes

Offload = Literal["none", "model", "sequential", "group"]


def apply_offload(pipe: Any, mode: Offload, device: str, blocks: int = 1) -> None:
    """Set ``pipe``'s components to visit ``device`` as ``mode`` says (their home: the CPU)."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode in ("sequential", "group"):
        import torch

        level = {"offload_type": "leaf_level"} if mode == "sequential" else {
            "offload_type": "block_level", "num_blocks_per_group": blocks}
        pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"), **level)
    elif mode != "none":
        raise ValueError(f"memory.offload must be none, model, sequential or group; got {mode!r}")


def _modules(pipe: Any) -> list[Any]:
    import torch

    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def resident_bytes(pipe: Any, mode: Offload, blocks: int = 1) -> int:
    """What stays on the device under ``mode`` (see the module docstring), in bytes."""
    import torch

    modules = _modules(pipe)
    if mode == "none" or not modules:
        return sum(component_bytes(m) for m in modules)
    if mode == "model":
        return max(component_bytes(m) for m in modules)
    if mode == "sequential":
        leaves = [m for c in modules for m in c.modules() if not list(m.children())]
        return 2 * max((component_bytes(m) for m in leaves), default=0)
    peak = 0
    for component in modules:
        lists = [child for child in component.children() if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential))]
        block_sizes = [component_bytes(block) for group in lists for block in group.children()]
        outside = component_bytes(component) - sum(block_sizes)
        peak = max(peak, max(outside, 0) + blocks * max(block_sizes, default=0))
    return peak
