"""Per-request guidance in one batch, for guidance-distilled FLUX.1 [dev] and Kontext.

Their transformer embeds the guidance scale as a per-row input (``guidance``: one value per row of
the batch, diffusers ``FluxTransformer2DModel.forward`` and ``CombinedTimestepGuidanceTextProjEmbeddings``),
but their pipelines take one scalar and expand it over the rows (``torch.full([1], guidance_scale)
.expand(rows)``, pipeline_flux.py and pipeline_flux_kontext.py). There is no second (negative) pass to
batch. So requests that differ only in guidance share a pipeline call (their batch key leaves the scale
out, ``EngineRequest.row_guidance``), and a forward pre-hook on the transformer puts each row's own scale
in place of the expanded scalar: row i is computed exactly as it would be alone with its scale
(tests/engine/test_row_guidance.py compares the two).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from t2i_core.common.schemas import EngineRequest


@contextmanager
def per_row_guidance(pipe: Any, items: list[EngineRequest]) -> Iterator[None]:
    """During the block, ``pipe``'s transformer sees row i's guidance as ``items[i].guidance_scale``
    (when the requests ask for it and differ; otherwise the pipeline's own scalar is the same)."""
    values = [r.guidance_scale for r in items]
    # the transformer, and FLUX's ControlNet, which embeds the guidance as the transformer does
    modules = [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "controlnet", None))
               if getattr(getattr(m, "config", None), "guidance_embeds", False)]
    if not items[0].row_guidance or not modules or len(set(values)) == 1:
        yield
        return
    import torch

    def swap(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        guidance = kwargs.get("guidance")
        if guidance is None:
            return None
        rows = guidance.shape[0]
        if rows % len(values):
            raise ValueError(f"per-row guidance: {rows} transformer rows for {len(values)} images")
        per_row = torch.tensor(values, dtype=guidance.dtype, device=guidance.device).repeat(rows // len(values))
        return args, {**kwargs, "guidance": per_row}

    handles = [m.register_forward_pre_hook(swap, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
