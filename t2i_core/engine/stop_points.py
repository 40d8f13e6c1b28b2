"""Where a batch that nobody waits for any more stops: between blocks, not only between steps.

diffusers calls the step callback after each denoising step, and the VAE decode has no callback at
all. One step of a large batch (8 images at 2048x2048 on a CPU) or its VAE decode takes minutes: a
request that timed out kept the engine busy that long while the requests behind it timed out too.
Forward pre-hooks on the blocks of the denoiser (``down_blocks``, ``mid_block``, ``up_blocks``;
``transformer_blocks`` for SD3) and of the VAE decoder ask the same question as the step callback
("is any image of this batch still wanted?") before each block, and abandon the batch when none is.

A batch stops only when every image in it is unwanted: dropping one request's rows from a running
batch would change the shapes the others run with (and their pixels, in the last bits), so such an
image is computed with its batch-mates and its result dropped. A ``torch.compile``-d denoiser keeps
no hooks inside its graph: there the denoiser stops between steps, the VAE decoder between blocks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from t2i_core.engine.speedups import denoiser

BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks")
SINGLE_BLOCKS = ("mid_block", "conv_in")


class Cancelled(Exception):
    """Raised at a stop point to abandon a batch nobody waits for any more."""


def blocks(module: Any) -> list[Any]:
    """The blocks of a UNet, an SD3 transformer or a VAE decoder, in no particular order."""
    found = []
    for name in BLOCK_LISTS:
        found.extend(getattr(module, name, None) or ())
    for name in SINGLE_BLOCKS:
        block = getattr(module, name, None)
        if block is not None:
            found.append(block)
    return found


class StopPoints:
    """Pre-hooks that raise ``Cancelled`` while ``watching(unwanted)`` and ``unwanted()`` is true."""

    def __init__(self) -> None:
        self._unwanted: Callable[[], bool] | None = None
        self.checks = 0

    def attach(self, pipe: Any, *, denoiser_compiled: bool = False) -> int:
        """Hook ``pipe``'s blocks once (pipelines made with from_pipe share the modules); how many."""
        modules = [getattr(getattr(pipe, "vae", None), "decoder", None)]
        if not denoiser_compiled:
            modules.append(denoiser(pipe))
        hooked = 0
        for module in modules:
            if module is None or getattr(module, "_t2i_stop_points", None) is self:
                continue
            for block in blocks(module):
                block.register_forward_pre_hook(self._check)
                hooked += 1
            module._t2i_stop_points = self
        return hooked

    @contextmanager
    def watching(self, unwanted: Callable[[], bool]) -> Iterator[None]:
        self._unwanted = unwanted
        try:
            yield
        finally:
            self._unwanted = None

    def _check(self, *_: Any) -> None:
        if self._unwanted is not None:
            self.checks += 1
            if self._unwanted():
                raise Cancelled()
