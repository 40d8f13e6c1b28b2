"""``T2I_IMAGE_STORE``: which store keeps the images behind ``response_format: "url"`` links."""

from __future__ import annotations

from typing import Any

from t2i_core.api.image_store import DirectoryImageStore, ImageStore
from t2i_core.api.object_image_store import ObjectImageStore
from t2i_core.api.state_image_store import StateImageStore
from t2i_core.state.store import StateStore


def open_image_store(spec: str, ttl_s: float, max_bytes: int, state: StateStore | None = None) -> Any:
    """``memory`` (this process only), ``dir:<folder>`` (shared by processes), ``fsspec:<url>`` (an
    object store shared by replicas: t2i_core/api/object_image_store.py) or ``state`` (the shared
    state, ``state``: t2i_core/api/state_image_store.py)."""
    kind, _, where = spec.partition(":")
    if kind == "state" and not where and state is not None:
        return StateImageStore(state, ttl_s, max_bytes)
    if kind == "memory" and not where:
        return ImageStore(ttl_s, max_bytes)
    if kind == "dir" and where:
        return DirectoryImageStore(where, ttl_s, max_bytes)
    if kind == "fsspec" and where:
        return ObjectImageStore(where, ttl_s, max_bytes)
    raise ValueError(f"T2I_IMAGE_STORE must be memory, state, dir:<folder> or fsspec:<url>; got {spec!r}")
