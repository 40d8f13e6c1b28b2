"""The tiny pipelines of every family, by name: where each is cached and building it when absent
(UNet-era families from ``weights.tiny``, DiT families from ``weights.tiny_dit``)."""

from __future__ import annotations

from pathlib import Path

from t2i_core.weights import tiny_dit
from t2i_core.weights.tiny import BUILDER_VERSION, build_tiny_pipeline, tiny_cache_dir


def tiny_folder(family: str) -> Path:
    """Where the tiny ``family`` pipeline is cached (built or not): a UNet-era family of this module or
    a DiT family of ``weights.tiny_dit``."""
    if family in tiny_dit.DIT_FAMILIES:
        return tiny_cache_dir() / f"{family}-dit-v{tiny_dit.BUILDER_VERSION}"
    return tiny_cache_dir() / f"{family}-v{BUILDER_VERSION}"


def ensure_tiny_pipeline(family: str) -> Path:
    """Return the cached folder of the tiny ``family`` pipeline (any of ``TINY_FAMILIES`` and
    ``tiny_dit.DIT_FAMILIES``), building it first if absent."""
    folder = tiny_folder(family)
    if not (folder / "model_index.json").is_file():
        if family in tiny_dit.DIT_FAMILIES:
            tiny_dit.build_tiny_dit(family, folder, replace=False)
        else:
            build_tiny_pipeline(family, folder, replace=False)
    return folder
