"""Choose the torch device and dtype: CUDA (bf16/fp16), Apple MPS (fp16), else CPU."""

from __future__ import annotations

from typing import Any

DTYPES = ("float32", "float16", "bfloat16", "float64")


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(preference: str, device: str, cpu_dtype: str = "float32") -> Any:
    """A torch dtype: ``preference`` unless "auto", else the best one for ``device``."""
    import torch

    if preference != "auto":
        if preference not in DTYPES:
            raise ValueError(f"T2I_DTYPE must be auto or one of {', '.join(DTYPES)}; got {preference!r}")
        return getattr(torch, preference)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return getattr(torch, cpu_dtype)
