"""Tiny GGUF denoisers, written offline from a tiny pipeline's transformer (``weights.gguf_writer``):
what a registry entry's ``quantization`` names as ``{"method": "gguf", "file": "tiny:<family>/<type>.gguf"}``
(e.g. ``tiny:flux/Q8_0.gguf``), for tests and the offline start. Built once into the tiny cache."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from t2i_core.weights.gguf_writer import QTYPES
from t2i_core.weights.tiny import tiny_cache_dir
from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline, tiny_folder


def parse_ref(ref: str) -> tuple[str, str]:
    """``<family>/<type>.gguf`` -> (family, GGML type); ValueError naming the value otherwise."""
    family, _, name = ref.partition("/")
    qtype = name[: -len(".gguf")] if name.endswith(".gguf") else ""
    if not family or qtype not in QTYPES:
        raise ValueError(f"a tiny gguf file is tiny:<family>/<type>.gguf with a type of {', '.join(QTYPES)}; "
                         f"got tiny:{ref}")
    return family, qtype


def tiny_gguf_path(ref: str) -> Path:
    family, qtype = parse_ref(ref)
    return tiny_cache_dir() / f"{tiny_folder(family).name}-transformer-{qtype}.gguf"


def ensure_tiny_gguf(ref: str) -> Path:
    """The cached GGUF file of ``ref`` (``<family>/<type>.gguf``), written first if absent."""
    import diffusers

    from t2i_core.weights.gguf_writer import write_gguf

    out = tiny_gguf_path(ref)
    if out.is_file():
        return out
    family, qtype = parse_ref(ref)
    folder = ensure_tiny_pipeline(family)
    library, class_name = json.loads((folder / "model_index.json").read_text())["transformer"]
    transformer = getattr(diffusers, class_name).from_pretrained(folder, subfolder="transformer", local_files_only=True)
    handle, staging = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(handle)
    try:
        write_gguf(transformer, staging, qtype)
        os.replace(staging, out)  # whole or not at all, whoever writes it first
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return out
