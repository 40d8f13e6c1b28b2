"""Run each text encoder once per distinct prompt of a batch.

The engine merges requests into one pipeline call, and their prompts often repeat: two requests
for ``n`` images each, clients trying seeds for one prompt, and with classifier-free guidance the
same (usually empty) negative prompt for every image, which the pipeline encodes in a call of its
own. The pipelines encode every row anyway. Wrapped here, a text encoder given a batch of token ids
with repeated rows runs on the distinct rows only (in first-seen order) and hands each row its
copy back, so the pipeline sees the same outputs, shapes and types as before.

At the level of token ids this is pipeline-agnostic: the CLIP and T5 encoders of SD 1.x/2.x,
SDXL and SD3 are all called as ``encoder(input_ids, attention_mask=..., output_hidden_states=...)``,
and every output of theirs (last hidden state, pooled or projected embeddings, the hidden states)
has the batch first. A call in any other form goes to the encoder unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

from t2i_core.common.version_guard import written_for

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
#: the transformers version whose encoders' call form and outputs were checked (see the docstring)
WRITTEN_FOR = "5.23"
#: keyword arguments a wrapped call may carry (anything else: the call is passed through)
_KNOWN_KWARGS = frozenset({"input_ids", "attention_mask", "output_hidden_states", "output_attentions", "return_dict"})
_MARK = "_t2i_dedupes_prompts"


def dedupe_text_encoders(pipe: Any) -> list[str]:
    """Wrap the pipeline's text encoders (once each); returns the names wrapped now. Only on the
    transformers version the call form above was checked against (``WRITTEN_FOR``): on another, the
    encoders run as they are."""
    if not written_for("transformers", WRITTEN_FOR, "dedupe_text_encoders"):
        return []
    wrapped = []
    for name in TEXT_ENCODERS:
        module = getattr(pipe, name, None)
        if module is None or not callable(getattr(module, "forward", None)) or getattr(module, _MARK, False):
            continue
        module.forward = _deduping(module.forward)
        setattr(module, _MARK, True)
        wrapped.append(name)
    return wrapped


def distinct_rows(rows: list[tuple[Any, ...]]) -> tuple[list[int], list[int]]:
    """(index of the first occurrence of each distinct row, in order; each row's distinct number)."""
    first: dict[tuple[Any, ...], int] = {}
    keep: list[int] = []
    which: list[int] = []
    for i, row in enumerate(rows):
        number = first.get(row)
        if number is None:
            number = first[row] = len(keep)
            keep.append(i)
        which.append(number)
    return keep, which


def _deduping(forward: Any) -> Any:
    @functools.wraps(forward)
    def deduped(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 1 or not set(kwargs) <= _KNOWN_KWARGS:
            return forward(*args, **kwargs)
        input_ids = args[0] if args else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if getattr(input_ids, "ndim", 0) != 2 or input_ids.shape[0] < 2:
            return forward(*args, **kwargs)
        if mask is not None and getattr(mask, "shape", None) != input_ids.shape:
            return forward(*args, **kwargs)
        ids = input_ids.tolist()
        rows = [tuple(r) for r in ids] if mask is None else [tuple(r) + tuple(m) for r, m in zip(ids, mask.tolist())]
        keep, which = distinct_rows(rows)
        if len(keep) == len(rows):
            return forward(*args, **kwargs)
        import torch

        kept = torch.tensor(keep, device=input_ids.device)
        call = dict(kwargs, input_ids=input_ids.index_select(0, kept))
        if mask is not None:
            call["attention_mask"] = mask.index_select(0, kept)
        out = forward(**call)
        return _expand(out, torch.tensor(which, device=input_ids.device))

    return deduped


def _expand(value: Any, index: Any) -> Any:
    """``value`` with every batch-first tensor in it gathered back to one row per input row."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device))
    if isinstance(value, dict):  # a transformers ModelOutput (keeps its class and field order)
        return type(value)(**{key: _expand(v, index) for key, v in value.items()})
    if isinstance(value, tuple):
        return tuple(_expand(v, index) for v in value)
    return value
