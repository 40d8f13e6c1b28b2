"""Choose the torch device and dtype: CUDA (bf16/fp16), Apple MPS (fp16), else CPU.

On CPU, a model whose registry entry leaves its CPU dtype to the server (``cpu_dtype: "auto"``) runs
in bfloat16 where the CPU computes bfloat16 natively (x86 AMX or AVX512-BF16, Arm BF16), and in float32
elsewhere: without those instructions bfloat16 is converted in software and runs slower than float32.
``T2I_CPU_BF16`` (auto | on | off) overrides the detection. A registry entry that names a dtype
(``float32``, ``float64`` for the bit-exact tiny models, ``bfloat16``) and ``T2I_DTYPE`` always win.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from typing import Any, Iterable

from t2i_core.common.config import CPU_BF16_MODES, DTYPES

#: /proc/cpuinfo flags of native bfloat16 arithmetic: x86 AMX and AVX512-BF16; Arm's BF16 extension
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
CPUINFO = "/proc/cpuinfo"


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_flags(path: str | None = None) -> frozenset[str] | None:
    """The CPU feature flags of /proc/cpuinfo (x86 ``flags``, Arm ``Features``); None where it cannot
    be read (not Linux)."""
    try:
        with open(path or CPUINFO, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware. ``flags``: the CPU's feature flags
    (default: read from /proc/cpuinfo, else asked of torch's CPU feature detection)."""
    if flags is None:
        flags = cpu_flags()
    if flags is not None:
        found = BF16_FLAGS & set(flags)
        # "bf16" is Arm's flag; on x86 only amx_bf16 / avx512_bf16 count
        return bool(found - {"bf16"}) or ("bf16" in found and not platform.machine().lower().startswith(("x86", "amd64", "i686")))
    try:
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


@lru_cache(maxsize=1)
def _native_bf16_cached() -> bool:
    return native_bf16()


def cpu_bf16_mode(mode: str = "auto") -> str:
    """The ``T2I_CPU_BF16`` mode (``Settings.cpu_bf16``), checked."""
    mode = mode.strip().lower()
    if mode not in CPU_BF16_MODES:
        raise ValueError(f"T2I_CPU_BF16 must be one of {', '.join(CPU_BF16_MODES)}; got {mode!r}")
    return mode


def cpu_uses_bf16(mode: str = "auto") -> bool:
    """Whether a model left to the server (``cpu_dtype: "auto"``) runs in bfloat16 on this CPU."""
    mode = cpu_bf16_mode(mode)
    return mode == "on" or (mode == "auto" and _native_bf16_cached())


def pick_dtype(preference: str, device: str, cpu_dtype: str = "float32", cpu_bf16: str = "auto") -> Any:
    """A torch dtype: ``preference`` (``T2I_DTYPE``) unless "auto", else the best one for ``device``.

    On CPU that is the registry entry's ``cpu_dtype``; for ``"auto"``, bfloat16 where the CPU has it
    natively (``cpu_bf16``: ``T2I_CPU_BF16``, auto | on | off),
    else float32."""
    import torch

    if preference != "auto":
        if preference not in DTYPES:
            raise ValueError(f"T2I_DTYPE must be auto or one of {', '.join(DTYPES)}; got {preference!r}")
        return getattr(torch, preference)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    if cpu_dtype == "auto":
        return torch.bfloat16 if cpu_uses_bf16(cpu_bf16) else torch.float32
    return getattr(torch, cpu_dtype)
