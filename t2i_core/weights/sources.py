"""Where weights come from: one parser and one resolver for every source in the registry (models, LoRA
adapters, ControlNets, tiny VAEs).

A source is ``<kind>:<ref>``:

- ``hub:<repo id>``: the Hugging Face hub, read from the local cache only (never downloaded while serving);
- ``local:<path>``: a diffusers folder (or, for an adapter, a ``.safetensors`` file);
- ``bentoml:<tag>``: a model in the BentoML model store;
- ``tiny:<ref>``: a tiny random-weight one built offline (``weights/tiny*.py``): tests and the offline start;
- ``random:<arch>``: a full-size architecture with random weights, for benchmarks (``weights/random_arch.py``).

A model's copy in the BentoML model store (``t2i-<id>``: ``python -m t2i_core pull --to-store``, or
shipped inside a Bento) wins over its source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from t2i_core.common.errors import ModelUnavailable

KINDS = ("hub", "local", "bentoml", "tiny", "random")
#: what a source holds, and the file whose presence says a folder holds it (None: any file or folder)
Usage = Literal["pipeline", "adapter", "controlnet", "vae"]
MARKERS: dict[str, str | None] = {"pipeline": "model_index.json", "adapter": None, "controlnet": "config.json",
                                  "vae": "config.json"}


@dataclass(frozen=True)
class Source:
    kind: str
    ref: str

    @classmethod
    def parse(cls, text: str, kinds: tuple[str, ...] = KINDS, field: str = "source") -> "Source":
        """``<kind>:<ref>`` with a kind of ``kinds``; ValueError naming ``field`` and the value otherwise."""
        kind, _, ref = text.partition(":")
        if kind not in kinds or not ref:
            raise ValueError(f"{field} must be one of {', '.join(k + ':...' for k in kinds)}; got {text!r}")
        return cls(kind, ref)

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"


class SourceFields:
    """The two parts of a registry entry's ``source`` (models, adapters, ControlNets). The entry declares
    ``source`` itself (an annotation here would make pydantic take it as this mixin's field)."""

    if TYPE_CHECKING:
        source: str

    @property
    def parsed_source(self) -> Source:
        return Source.parse(self.source)

    @property
    def source_kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def source_ref(self) -> str:
        return self.source.split(":", 1)[1]


def store_name(model_id: str) -> str:
    """The BentoML model store name of a model's copy (store names allow ``[a-z0-9_.-]``)."""
    return "t2i-" + re.sub(r"[^a-z0-9_.-]+", "-", model_id.lower()).strip("-")


def store_copy(model_id: str) -> str | None:
    """The folder of ``model_id``'s copy in the BentoML model store; None when there is none."""
    try:
        import bentoml
        from bentoml.exceptions import NotFound as StoreNotFound

        return bentoml.models.get(f"{store_name(model_id)}:latest").path
    except (StoreNotFound, ImportError, ValueError):
        return None


def unavailable_reason(source: Source, usage: Usage, label: str, pull_id: str | None = None) -> str | None:
    """Why ``source`` cannot be loaded from disk now (naming ``label``, e.g. "model 'x'"), or None.
    Built sources (tiny, random) are always available: they are built on first use."""
    try:
        _locate(source, usage, label, pull_id, build=False)
    except ModelUnavailable as err:
        return err.message
    return None


def resolve(source: Source, usage: Usage, label: str, param: str = "model", pull_id: str | None = None) -> str:
    """A path that ``from_pretrained(..., local_files_only=True)`` (or ``load_lora_weights``) loads;
    built sources are built now. ModelUnavailable (503, naming ``param``) says why there is none.
    ``pull_id``: the model id that ``python -m t2i_core pull`` takes, for the hint in the message."""
    try:
        return _locate(source, usage, label, pull_id, build=True) or ""
    except ModelUnavailable as err:
        raise ModelUnavailable(err.message, param=param) from None


def _locate(source: Source, usage: Usage, label: str, pull_id: str | None, build: bool) -> str | None:
    kind, ref, marker = source.kind, source.ref, MARKERS[usage]
    if kind in ("tiny", "random"):
        return _build(source, usage) if build else None
    if kind == "local":
        path = Path(ref)
        if (marker is None and path.exists()) or (marker is not None and (path / marker).is_file()):
            return ref
        found = f"{marker} not found" if marker else "it does not exist"
        raise ModelUnavailable(f"{label}: nothing to load at {ref} ({found})")
    if kind == "bentoml":
        try:
            import bentoml

            return bentoml.models.get(ref).path
        except Exception as exc:  # noqa: BLE001 - bentoml raises several kinds for a missing tag
            hint = f"; import a folder with `python -m t2i_core pull {pull_id} --from-folder DIR`" if pull_id else ""
            raise ModelUnavailable(f"{label}: {ref!r} is not in the BentoML model store ({exc}){hint}") from None
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = try_to_load_from_cache(ref, marker) if marker else None
    if usage == "pipeline" and isinstance(cached, str):
        return ref  # from_pretrained(ref, local_files_only=True) reads the cache itself
    if marker is None or isinstance(cached, str):
        try:
            return snapshot_download(ref, local_files_only=True)
        except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and kin: not cached
            pass
    how = f"`python -m t2i_core pull {pull_id}` (or `hf download {ref}`)" if pull_id else f"`hf download {ref}`"
    raise ModelUnavailable(f"{label}: weights are not in the local Hugging Face cache ({HF_HUB_CACHE}); download "
                           f"them once with {how} on a machine that reaches the hub")


def _build(source: Source, usage: Usage) -> str:
    """Build (once, cached) a tiny or random-weight source."""
    if usage == "vae":
        from t2i_core.weights.tiny_vae import ensure_built

        return str(ensure_built(str(source)))
    if usage == "adapter":
        from t2i_core.weights.tiny_addons import ensure_tiny_adapter

        return str(ensure_tiny_adapter(source.ref))
    if usage == "controlnet":
        from t2i_core.weights.tiny_addons import ensure_tiny_controlnet

        return str(ensure_tiny_controlnet(source.ref))
    if source.kind == "random":
        from t2i_core.weights.random_arch import ensure_random_pipeline

        return str(ensure_random_pipeline(source.ref))
    from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline

    return str(ensure_tiny_pipeline(source.ref))
