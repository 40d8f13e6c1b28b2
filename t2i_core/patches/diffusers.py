"""Workarounds for diffusers 0.42 costs found by measuring the engine.

- ``skip_group_offload_lookup_until_used``: every pipeline call asks for its execution device
  (``DiffusionPipeline._execution_device``), and modules for theirs (``ModelMixin.device``); both first
  look for a group-offloading hook by walking every submodule of every component. This server never
  turns group offloading on, and the walk cost 2.5 ms per pipeline call on the tiny model (of ~47 ms
  for a batch of 16 on 2 CPU cores) and 4.6 ms per ``_execution_device`` on SD-Turbo's architecture,
  on the critical path before any kernel is launched. Until a group-offloading hook is registered
  in this process, the lookup answers "none" at once; after one is, it walks as before.
  Upstream: none known (group offloading came with diffusers#10503).

Applied only on diffusers ``WRITTEN_FOR`` (``version_guard``); elsewhere it warns once and changes nothing.
"""

from __future__ import annotations

from typing import Any

from t2i_core.common.version_guard import written_for

WRITTEN_FOR = "0.42"
#: the module whose import installs the patch (``install_patches``)
HOOKS_MODULE = "diffusers.hooks.group_offloading"


def skip_group_offload_lookup_until_used() -> None:
    if not written_for("diffusers", WRITTEN_FOR, "skip_group_offload_lookup_until_used"):
        return
    from diffusers.hooks import group_offloading, hooks

    if getattr(group_offloading._get_top_level_group_offload_hook, "_t2i_patched", False):
        return
    walk = group_offloading._get_top_level_group_offload_hook
    register = hooks.HookRegistry.register_hook
    used = False

    def register_hook(self: Any, hook: Any, name: str) -> None:
        nonlocal used
        if name == group_offloading._GROUP_OFFLOADING:
            used = True
        register(self, hook, name)

    def top_level_group_offload_hook(module: Any) -> Any:
        return walk(module) if used else None

    top_level_group_offload_hook._t2i_patched = True  # type: ignore[attr-defined]
    hooks.HookRegistry.register_hook = register_hook  # type: ignore[method-assign]
    group_offloading._get_top_level_group_offload_hook = top_level_group_offload_hook
