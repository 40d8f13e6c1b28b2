"""Write a diffusers denoiser to a GGUF file, quantized: for tests, and simple conversions.

Tensor names are the model's own (diffusers) state-dict names, which diffusers' ``from_single_file``
loads without conversion for any class it can load from a single file (it converts only when the names
differ from the model's: loaders/single_file_model.py:246). Published GGUF files of FLUX or SD3 use the
original checkpoints' names instead, which diffusers converts; its FLUX converter assumes FLUX's full
width (``inner_dim = 3072``, loaders/single_file_utils.py:2305), so original names do not fit narrower
test models.

The weights of ``nn.Linear`` layers are quantized (the only layers diffusers' GGUF loader computes
from quantized data: quantizers/gguf/utils.py, ``_replace_with_gguf_linear``); everything else (norms,
convolutions, embeddings, biases, buffers) is written as F32. A row length that is not a multiple of the
type's block falls back to Q8_0 (blocks of 32), and to F32 when not a multiple of 32 either.

The ``gguf`` package quantizes Q8_0 and the other legacy types but no k-quant (``gguf.quants`` raises
NotImplementedError); Q4_K is written here (``quantize_q4_k``) with plain per-sub-block min/max scales,
no search for the best scales as llama.cpp does, so its error is somewhat above a llama.cpp Q4_K's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

QTYPES = ("Q8_0", "Q4_0", "Q5_0", "Q4_K", "BF16", "F16")
QK_K = 256  # values per k-quant super-block
Q4_K_BYTES = 144  # d, dmin (f16 each), 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit values


def quantize_q4_k(rows: np.ndarray) -> np.ndarray:
    """Quantize ``rows`` (n, k), k a multiple of 256, to ggml's Q4_K blocks: (n, k / 256 * 144) bytes.

    A super-block holds 8 sub-blocks of 32 values, each ``x = d * sc * q - dmin * m`` with q in 0..15,
    sc and m 6-bit, d and dmin float16 per super-block."""
    n, k = rows.shape
    if k % QK_K:
        raise ValueError(f"Q4_K rows must be a multiple of {QK_K} long; got {k}")
    sub = rows.astype(np.float32).reshape(-1, 8, 32)
    offset = -np.minimum(sub.min(axis=2), 0)  # ggml's offsets are >= 0 (the sub-block minimum, negated)
    scale = (sub.max(axis=2) + offset) / 15
    d = (scale.max(axis=1) / 63).astype(np.float16)
    dmin = (offset.max(axis=1) / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmin32 > 0, np.rint(offset / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[..., None]
        q = np.where(step > 0, np.rint((sub + (dmin32 * m)[..., None]) / step), 0).clip(0, 15).astype(np.uint8)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)  # sub-block 2j low nibbles, 2j+1 high
    scales = np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        m[:, :4] | ((m[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4),
    ], axis=1)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                             scales, qs], axis=1)
    return blocks.reshape(n, k // QK_K * Q4_K_BYTES)


def _quantize(array: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    if qtype == "Q4_K":
        return quantize_q4_k(array), kind
    return gguf.quants.quantize(array, kind), kind


def _type_for(rows: int, row_length: int, qtype: str) -> str:
    import gguf

    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    if row_length % block == 0:
        return qtype
    return "Q8_0" if row_length % 32 == 0 else "F32"


def write_gguf(transformer: Any, path: str | Path, qtype: str = "Q8_0", arch: str = "diffusers") -> dict[str, str]:
    """Write ``transformer``'s state dict to ``path`` as GGUF, its ``nn.Linear`` weights in ``qtype``
    (one of ``QTYPES``); return the GGML type written for each tensor name."""
    import gguf
    import torch

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}; got {qtype!r}")
    linear_weights = {f"{name}.weight" for name, module in transformer.named_modules()
                      if isinstance(module, torch.nn.Linear)}
    writer = gguf.GGUFWriter(str(path), arch=arch)
    written: dict[str, str] = {}
    for name, tensor in transformer.state_dict().items():
        array = tensor.detach().to(torch.float32).cpu().numpy()
        kind = _type_for(*array.shape, qtype) if name in linear_weights and array.ndim == 2 else "F32"
        if kind == "F32":
            writer.add_tensor(name, np.ascontiguousarray(array))
        elif kind == "F16":
            writer.add_tensor(name, array.astype(np.float16))
        else:
            data, raw = _quantize(array, kind)
            writer.add_tensor(name, data, raw_dtype=raw)
        written[name] = kind
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written
