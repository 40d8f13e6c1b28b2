"""Admit a batch only when its activations fit: split it, tile or slice the VAE, or refuse it.

The memory budget (``T2I_MEMORY_BUDGET_BYTES``) holds the loaded weights *and* the activations of
the call in progress. Before a batch runs, its estimated peak (t2i_core/engine/activations.py) is
checked against what is left: the budget less the weights loaded, and the device's free memory now
(CUDA: ``mem_get_info``; CPU: the RAM available and what the container's limit leaves). Then:

- it fits: it runs;
- one image of this size never fits this engine (its budget or device, less the model's weights),
  even with the VAE tiled: every item gets ``image_too_large`` (422), naming the size, the estimate,
  the limit and the largest size that fits; nothing runs;
- an image larger than the VAE decode can take whole on this engine is decoded in tiles (decided by
  the size and the engine, never by what else is in the batch: the same request gives the same pixels);
- a batch that does not fit decodes one image at a time (VAE slicing: same pixels), else runs in
  sub-batches that fit, one after another;
- not even one image fits *now* (other processes hold the memory): idle models are unloaded and the
  caches freed; if that is not enough, ``out_of_memory`` (503, try again), except where what others
  hold does not come and go (one engine on the CPU: the server's API processes), where it is
  ``image_too_large`` against what is free.

On the CPU this is the only guard: past the container's limit the kernel kills the engine, there is
no out-of-memory error to recover from (on CUDA the split-on-error path stays as a second line).
"""

from __future__ import annotations

import ctypes
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from t2i_core.common.errors import ImageTooLarge, OutOfMemory
from t2i_core.common.families import cfg_passes
from t2i_core.common.fields import MIN_SIDE, SIDE_MULTIPLE
from t2i_core.common.memory_limits import free_bytes, total_bytes
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine.activations import Estimate, Shapes, estimate, shapes_of, tile_sizes

log = logging.getLogger("t2i.memory")
GIB = 2**30


class BatchTooLarge(Exception):
    """The batch does not fit now; ``fits`` images at a time do (the engine runs it in sub-batches)."""

    def __init__(self, fits: int, needed: int, available: int):
        super().__init__(f"batch needs {needed} bytes, {available} available; {fits} at a time fit")
        self.fits = fits


@dataclass(frozen=True)
class Plan:
    """How an admitted batch runs: its estimate, and the VAE modes it needs."""

    estimate: Estimate
    tile: int  # decode in tiles of this side (pixels); 0: whole
    sliced: bool
    scale: int  # pixels per latent value, per side


def gib(n: int) -> str:
    """Bytes for a message: GiB from 1 GiB up, else MiB."""
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.1f} MiB"


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc), so that the free memory the next
    check sees includes what the last batch released."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def vae_modes(vae: Any, scale: int, tile: int, sliced: bool, trim: bool) -> Iterator[None]:
    """Decode (and encode) in ``tile`` pixel tiles (0: as the VAE is set) and one image at a time for
    the block; the VAE's own settings come back after. ``trim``: give the heap's free pages back before
    each pass of the decoder (each tile, each image): on the CPU the denoiser's freed activations (10 MB
    tensors at 1024 px) and each tile's stay in the heap otherwise, and the next decode comes on top of
    them (SD-Turbo's architecture at 1024 px, 512 px tiles: 887 MB measured before each decode was
    trimmed, 803 MB after)."""
    names = ("use_tiling", "use_slicing", "tile_sample_min_size", "tile_latent_min_size")
    before = {name: getattr(vae, name) for name in names if hasattr(vae, name)}
    if sliced:
        vae.use_slicing = True
    if tile:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = True, tile, tile // scale
    hook = vae.decoder.register_forward_pre_hook(lambda *_: trim_heap()) if trim else None
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(vae, name, value)
        if hook is not None:
            hook.remove()


class Admission:
    def __init__(self, models: Any, device: str, shared: bool = False):
        self.models = models  # the ModelManager: budget, weights loaded, eviction
        self.device = device
        #: what other processes hold of this device's free memory comes and goes: on a GPU (other
        #: programs), or with several engine workers; else (one engine on the CPU: the server's API
        #: processes) what is free with the engine idle is what it will ever have
        self.steady = device == "cpu" and not shared
        self._total = total_bytes(device)
        #: the plan of the last batch admitted (benchmarks and tests read it)
        self.last_plan: Plan | None = None
        self.splits = 0

    # ---- limits ------------------------------------------------------------------------------
    def capacity(self) -> int:
        """What the activations of one call may ever take: the budget (or the device's memory, the
        smaller) less the weights this call needs (those in use now; idle models can be unloaded)."""
        limit = min(self.models.budget_bytes or self._total, self._total)
        return limit - self.models.pinned_bytes()

    def available(self) -> int:
        """What the activations may take now: the budget less every loaded weight, and the device's
        free memory less a headroom (``headroom``)."""
        left = self.models.budget_bytes - self.models.used_bytes() if self.models.budget_bytes else self._total
        free = free_bytes(self.device)
        return left if free is None else min(left, free - self.headroom())

    def headroom(self) -> int:
        """What the device's free memory keeps back for the kernel and the allocator, beside the
        estimate's own margin: a container's limit is a wall. (SD-Turbo's architecture at 1664 px in a
        4 GiB cgroup, admitted with 1.26 GB estimated against 1.28 GB free before the estimate had its
        margin, used 1.14 GB in one run and was killed in the next.) 3% of the device's memory,
        128 MiB to 1 GiB."""
        return int(min(max(0.03 * self._total, 128 * 2**20), GIB))

    # ---- the decision ------------------------------------------------------------------------
    def plan(self, model: Any, pipe: Any, items: list[EngineRequest]) -> Plan:
        """How ``items`` (one batch: same size, model and settings) can run; raises ImageTooLarge
        (never fits), BatchTooLarge (run it in parts) or OutOfMemory (not now)."""
        first = items[0]
        shapes = shapes_of(pipe)
        configured_sliced = bool(getattr(pipe.vae, "use_slicing", False))
        tiles = tile_sizes(shapes)
        # tiling configured in the registry: the VAE's own tiles at least
        whole = [] if getattr(pipe.vae, "use_tiling", False) and tiles else [0]

        family = model.entry.pipeline
        guidance = cfg_passes(family, first.guidance_scale) > 1

        def cost(n: int, tile: int, sliced: bool) -> Estimate:
            return estimate(shapes, first.width, first.height, n, guidance=guidance, edit=first.mode != "generate",
                            tile=tile, sliced=sliced, controlnet=first.controlnet is not None,
                            references=len(first.references))

        # the tile depends on the size and this engine only: the same request gives the same pixels
        capacity = self.capacity()
        candidates = whole + tiles
        tile = next((t for t in candidates if cost(1, t, True).total <= capacity), None)
        if tile is None:
            raise self._too_large(first, shapes, cost(1, candidates[-1], True), capacity, guidance=guidance)
        one = cost(1, tile, True)
        available = self.available()
        if one.total > available:
            available = self._make_room(one.total, model)
            smaller = [t for t in candidates[candidates.index(tile) + 1:] if cost(1, t, True).total <= available]
            if one.total > available and smaller:
                tile, one = smaller[0], cost(1, smaller[0], True)  # made, with more seams blended than usual
                log.warning("%dx%d decoded in %d px tiles: %s free now", first.width, first.height, tile, gib(available))
            if one.total > available and self.steady:
                raise self._too_large(first, shapes, cost(1, candidates[-1], True), available, now=True,
                                      guidance=guidance)
            if one.total > available:
                raise OutOfMemory(
                    f"not enough free memory now for one {first.width}x{first.height} image of model {first.model!r} "
                    f"on {self.device}: it needs about {gib(one.total)} for its activations, {gib(available)} is free "
                    "(other processes hold the rest); try again shortly")
        for sliced in (configured_sliced, True):
            batch = cost(len(items), tile, sliced)
            if batch.total <= available:
                return Plan(batch, tile, sliced, shapes.scale)
        fits = max(n for n in range(1, len(items)) if cost(n, tile, True).total <= available)
        self.splits += 1
        needed = cost(len(items), tile, True).total
        log.info("batch of %d %dx%d images needs about %s, %s available: %d at a time", len(items), first.width,
                 first.height, gib(needed), gib(available), fits)
        raise BatchTooLarge(fits, needed, available)

    @contextmanager
    def admit(self, model: Any, pipe: Any, items: list[EngineRequest]) -> Iterator[Plan]:
        """Run the block only if ``items`` (of the loaded ``model``, run by ``pipe``) fit, with the VAE
        modes they need (see ``plan``)."""
        plan = self.plan(model, pipe, items)
        self.last_plan = plan
        with vae_modes(pipe.vae, plan.scale, plan.tile, plan.sliced, trim=self.device == "cpu"):
            yield plan

    def _make_room(self, need: int, model: Any) -> int:
        """Unload idle models until ``need`` fits the budget and return freed memory; what is available then."""
        self.models.make_room(need, model)
        self.models.free_cache(collect=True)
        trim_heap()
        return self.available()

    def _too_large(self, req: EngineRequest, shapes: Shapes, one: Estimate, capacity: int,
                   now: bool = False, guidance: bool = False) -> ImageTooLarge:
        """``capacity``: the most the activations may take; ``now``: what is free with the engine idle."""
        budget = self.models.budget_bytes
        if now:
            limit = (f"what the server's processes leave free of {self._device_memory()}, less "
                     f"{gib(self.headroom())} of headroom")
        elif budget and budget < self._total:
            limit = (f"the memory budget T2I_MEMORY_BUDGET_BYTES={budget} ({gib(budget)}) less "
                     f"{gib(self.models.pinned_bytes())} of model weights")
        else:
            limit = f"{self._device_memory()} less {gib(self.models.pinned_bytes())} of model weights"
        tiles = [0] + tile_sizes(shapes)
        room = capacity
        if self.steady and not now:  # the size to suggest must also fit what is free beside the other processes
            room = min(capacity, self.available() + self.models.used_bytes() - self.models.pinned_bytes())
        side = _largest_fitting(req.width, req.height, lambda w, h: any(estimate(
            shapes, w, h, 1, guidance=guidance, edit=req.mode != "generate", tile=t, sliced=True,
            controlnet=req.controlnet is not None, references=len(req.references)).total <= room for t in tiles))
        hint = f"; the largest size of these proportions that fits is {side[0]}x{side[1]}" if side else ""
        return ImageTooLarge(
            f"a {req.width}x{req.height} image of model {req.model!r} needs about {gib(one.total)} of memory for its "
            f"activations{' even with the VAE decoding tiles' if one.tile else ''}, more than this engine can ever "
            f"give it: {gib(max(0, capacity))} ({limit}){hint}",
            param="size",
        )

    def _device_memory(self) -> str:
        """The device's memory, for a message: "this container's 4.00 GiB limit", "cuda's 79.19 GiB"..."""
        if self.device == "cpu":
            import psutil

            if self._total < psutil.virtual_memory().total:
                return f"this container's {gib(self._total)} limit"
            return f"the {gib(self._total)} of RAM"
        return f"{self.device}'s {gib(self._total)}"


def _largest_fitting(width: int, height: int, fits: Any) -> tuple[int, int] | None:
    """The largest size of the same proportions (sides multiples of 8, at least 64) that ``fits``."""
    for side in range(max(width, height) - SIDE_MULTIPLE, MIN_SIDE - 1, -SIDE_MULTIPLE):
        w = max(MIN_SIDE, round(side * width / max(width, height) / SIDE_MULTIPLE) * SIDE_MULTIPLE)
        h = max(MIN_SIDE, round(side * height / max(width, height) / SIDE_MULTIPLE) * SIDE_MULTIPLE)
        if fits(w, h):
            return w, h
    return None
