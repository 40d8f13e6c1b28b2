"""Put a model's weights on disk ahead of serving (the server itself never downloads).

- hub models: download the diffusers files into the local Hugging Face cache, with a progress bar;
- ``--from-folder DIR``: import a diffusers folder into the BentoML model store (``bentoml build``
  can then ship it inside the Bento); the registry source to use is printed;
- ``--to-store``: also copy a downloaded hub model into the BentoML model store;
- built-in tiny models: build them and import them into the BentoML model store.

A model's copy in the store (named ``t2i-<id>``) is what the server loads first, so a Bento that
ships it starts with no download.

Offline, a download fails at once with a message that says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from t2i_core.common.registry import ModelEntry, Registry
from t2i_core.weights.sources import store_name

DIFFUSERS_FILES = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"]


class PullError(RuntimeError):
    pass


def import_folder(model_id: str, folder: Path) -> str:
    """Copy a diffusers folder into the BentoML model store; return its tag."""
    import bentoml

    if not (folder / "model_index.json").is_file():
        raise PullError(f"{folder} is not a diffusers folder (model_index.json not found)")
    with bentoml.models.create(store_name(model_id), labels={"t2i_model_id": model_id.replace("/", "__")}) as model:
        shutil.copytree(folder, model.path, dirs_exist_ok=True)
    return str(model.tag)


def check_hub_reachable(repo_id: str) -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise PullError(f"HF_HUB_OFFLINE is set: cannot download {repo_id}; unset it on a machine that reaches the hub")
    from huggingface_hub import model_info

    try:
        model_info(repo_id, timeout=10)
    except Exception as exc:  # noqa: BLE001 - network, auth and not-found errors all end the pull
        raise PullError(
            f"cannot reach the Hugging Face hub for {repo_id} ({type(exc).__name__}: {exc}); this machine "
            "looks offline. Download on a machine with network (or copy its HF cache), or import a local "
            "folder with --from-folder DIR"
        ) from None


def pull(model_id: str, from_folder: Path | None = None, registry: Registry | None = None, to_store: bool = False) -> str:
    """Do the pull; return a one-line summary of where the weights now are."""
    if from_folder is not None:  # the model may not be in the registry yet: this is how it gets there
        tag = import_folder(model_id, Path(from_folder))
        return f"imported {from_folder} into the BentoML model store as {tag}; registry source: \"bentoml:{tag}\""
    entry: ModelEntry = (registry or Registry()).get(model_id)
    if entry.source_kind == "tiny":
        from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline

        if (copy := entry.store_copy()) is not None:  # tiny models are deterministic: one copy is enough
            return f"{model_id} is already in the BentoML model store ({copy})"
        tag = import_folder(model_id, ensure_tiny_pipeline(entry.source_ref))
        return f"built {model_id} and imported it into the BentoML model store as {tag}"
    if entry.source_kind != "hub":
        raise PullError(f"model {model_id!r} comes from {entry.source!r}: nothing to download")
    check_hub_reachable(entry.source_ref)
    from huggingface_hub import snapshot_download

    path = snapshot_download(entry.source_ref, allow_patterns=DIFFUSERS_FILES)
    if to_store:
        tag = import_folder(model_id, Path(path))
        return f"downloaded {entry.source_ref} and imported it into the BentoML model store as {tag}"
    return f"downloaded {entry.source_ref} to {path}"
