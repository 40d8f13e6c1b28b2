"""Split one pipeline call into stages, with forward hooks on the pipeline's own modules.

diffusers runs text encoding, denoising and VAE decoding inside one ``pipe(...)`` call. Hooks on the
denoiser (``unet`` or ``transformer``) and on ``vae.decoder`` mark the stage boundaries:

- ``text_encoding``: from the call to the first denoising step (prompt encoding and latent set-up;
  for an edit, also the input image's VAE encoding);
- ``denoising``: from the first denoiser step to the start of VAE decoding;
- ``vae_decoding``: the VAE decoder (all of it, with slicing too).

On an accelerator the device is synchronized at these three points only (work is asynchronous), so
the split costs a few syncs per batch, not per step.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from t2i_core.engine.speedups import denoiser


class StageTimer:
    def __init__(self, sync: Callable[[], None] = lambda: None):
        self.sync = sync
        self._marks: dict[str, float] | None = None

    def attach(self, pipe: Any) -> None:
        """Hook ``pipe``'s modules once (pipelines made with from_pipe share them)."""
        net = denoiser(pipe)
        decoder = getattr(getattr(pipe, "vae", None), "decoder", None)
        if net is not None and getattr(net, "_t2i_timer", None) is not self:
            net.register_forward_pre_hook(lambda *_: self._mark_once("denoise_start"))
            net._t2i_timer = self
        if decoder is not None and getattr(decoder, "_t2i_timer", None) is not self:
            decoder.register_forward_pre_hook(lambda *_: self._mark_once("vae_start"))
            decoder.register_forward_hook(lambda *_: self._mark("vae_end"))
            decoder._t2i_timer = self

    def start(self) -> None:
        self._marks = {"start": time.perf_counter()}

    def stop(self) -> dict[str, float]:
        """Seconds per stage of the call since ``start`` (stages whose hooks did not fire are left out)."""
        marks, self._marks = self._marks or {}, None
        stages = {}
        for stage, begin, end in (("text_encoding", "start", "denoise_start"),
                                  ("denoising", "denoise_start", "vae_start"),
                                  ("vae_decoding", "vae_start", "vae_end")):
            if begin in marks and end in marks:
                stages[stage] = round(marks[end] - marks[begin], 6)
        return stages

    def _mark_once(self, name: str) -> None:
        if self._marks is not None and name not in self._marks:
            self._mark(name)

    def _mark(self, name: str) -> None:
        if self._marks is not None:
            self.sync()
            self._marks[name] = time.perf_counter()


def device_sync(device: str) -> Callable[[], None]:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    import torch

    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(torch.device(device))
    if device.startswith("mps"):
        return torch.mps.synchronize
    return lambda: None
