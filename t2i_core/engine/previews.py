"""Partial images: real intermediate decodes of a request's latents while its batch denoises (OpenAI's
``stream: true`` with ``partial_images``; live previews).

Only the rows of the requests that asked are decoded, with the model's own VAE (a model whose
registry entry names a ``tiny_vae`` decodes with it: the fast way), at steps spread evenly over the
run: ``partial_images`` P over S steps gives the steps round(k * S / (P + 1)) for k = 1..P (fewer
when there are fewer steps than that, as OpenAI allows). The batch-mates of a previewing request wait
for those decodes; their images do not change. A running request's latents can also be decoded on
demand after its next step (``Engine.want_preview``: the task progress route's ``preview=1``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any

KEPT = 64
PER_REQUEST = 4


def preview_steps(partial_images: int, steps: int) -> list[int]:
    """The 1-based steps after which a request asking for ``partial_images`` gets one (the final
    image comes after the last step, so it is never a preview step)."""
    if partial_images <= 0 or steps <= 1:
        return []
    chosen = {round(k * steps / (partial_images + 1)) for k in range(1, partial_images + 1)}
    return sorted(s for s in chosen if 1 <= s < steps)


def decode_rows(pipe: Any, latents: Any, rows: list[int]) -> list[tuple[bytes, int, int]]:
    """RGB bytes, width, height of ``latents[rows]`` decoded as the pipeline decodes its final image."""
    import numpy as np
    import torch

    vae = pipe.vae
    chosen = latents[rows].to(vae.dtype)
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.inference_mode():
        decoded = vae.decode(chosen / scale + shift, return_dict=False)[0]
    images = pipe.image_processor.postprocess(decoded, output_type="np")
    array = (np.asarray(images) * 255.0).round().clip(0, 255).astype(np.uint8)
    return [(np.ascontiguousarray(a).tobytes(), a.shape[1], a.shape[0]) for a in array]


class PreviewStore:
    """``Preview``s by request id, numbered in the order they were made. Bounded: the latest
    ``PER_REQUEST`` of a request (a stream asks for at most 3 and reads each at once; a live preview
    wants the latest) and the latest ``KEPT`` requests (a 512x512 preview is 0.8 MB)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_request: OrderedDict[str, tuple[int, deque[Any]]] = OrderedDict()

    def add(self, request_id: str, preview: Any) -> None:
        with self._lock:
            made, kept = self._by_request.pop(request_id, (0, deque(maxlen=PER_REQUEST)))
            kept.append(preview.model_copy(update={"index": made}))
            self._by_request[request_id] = (made + 1, kept)
            while len(self._by_request) > KEPT:
                self._by_request.popitem(last=False)

    def take(self, request_id: str, since: int = 0) -> list[Any]:
        """The kept previews of ``request_id`` with an index of ``since`` or more."""
        with self._lock:
            _, kept = self._by_request.get(request_id, (0, ()))
            return [p for p in kept if p.index >= since]
