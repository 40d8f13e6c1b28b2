"""The model registry: public model ids, where their weights come from, metadata and defaults.

A source is one of ``hub:<repo id>`` (Hugging Face hub, read only from the local cache),
``local:<folder>`` (a diffusers folder on disk) or ``tiny:<family>`` (a built-in tiny random-weight
pipeline, built offline). Weights are never downloaded while serving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ModelUnavailable, UnknownModel

SourceKind = Literal["hub", "local", "tiny"]
TINY_SD_ID = "builtin/tiny-sd"
SD_TURBO_ID = "stabilityai/sd-turbo"


@dataclass(frozen=True)
class ModelDefaults:
    steps: int
    guidance_scale: float
    width: int
    height: int


@dataclass(frozen=True)
class ModelEntry:
    id: str
    publisher: str
    family: str  # metadata, as seed 002 reports it ("sdxl", "stable-diffusion", ...)
    version: str
    pipeline: Literal["sd", "sdxl", "sd3"]  # which diffusers pipeline family loads it
    source: str
    defaults: ModelDefaults
    #: dtype on CPU; "float64" makes CPU images bit-identical whatever the batch (fp32 kernels are not).
    cpu_dtype: str = "float32"

    @property
    def source_kind(self) -> SourceKind:
        kind = self.source.split(":", 1)[0]
        if kind not in ("hub", "local", "tiny"):
            raise ValueError(f"model {self.id!r}: source must start with hub:, local: or tiny:; got {self.source!r}")
        return kind  # type: ignore[return-value]

    @property
    def source_ref(self) -> str:
        return self.source.split(":", 1)[1]

    def metadata(self) -> dict[str, str]:
        return {"publisher": self.publisher, "family": self.family, "version": self.version, "id": self.id}

    def unavailable_reason(self) -> str | None:
        """Why the weights cannot be loaded from disk now, or None when they can."""
        kind, ref = self.source_kind, self.source_ref
        if kind == "tiny":
            return None
        if kind == "local":
            if (Path(ref) / "model_index.json").is_file():
                return None
            return f"model {self.id!r}: no diffusers folder at {ref} (model_index.json not found)"
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref, "model_index.json")
        if isinstance(found, str):
            return None
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub"
        )
        return (
            f"model {self.id!r}: weights are not in the local Hugging Face cache ({cache}); "
            f"download them once with `hf download {ref}` on a machine that reaches the hub"
        )

    def local_path(self) -> str:
        """A folder or cached repo id that ``from_pretrained(..., local_files_only=True)`` loads."""
        reason = self.unavailable_reason()
        if reason:
            raise ModelUnavailable(reason, param="model")
        if self.source_kind == "tiny":
            from .tiny import ensure_tiny_pipeline

            return str(ensure_tiny_pipeline(self.source_ref))
        return self.source_ref


BUILTIN_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(
        id=TINY_SD_ID,
        publisher="builtin",
        family="stable-diffusion",
        version="tiny",
        pipeline="sd",
        source="tiny:sd",
        defaults=ModelDefaults(steps=2, guidance_scale=0.0, width=64, height=64),
        cpu_dtype="float64",
    ),
    ModelEntry(
        id=SD_TURBO_ID,
        publisher="stabilityai",
        family="stable-diffusion",
        version="turbo",
        pipeline="sd",
        source=f"hub:{SD_TURBO_ID}",
        defaults=ModelDefaults(steps=1, guidance_scale=0.0, width=512, height=512),
    ),
    ModelEntry(
        id="stabilityai/sdxl-turbo",
        publisher="stabilityai",
        family="sdxl",
        version="turbo",
        pipeline="sdxl",
        source="hub:stabilityai/sdxl-turbo",
        defaults=ModelDefaults(steps=1, guidance_scale=0.0, width=512, height=512),
    ),
)


class Registry:
    """Model entries by id, plus the default model."""

    def __init__(self, entries: tuple[ModelEntry, ...] = BUILTIN_MODELS, default: str = "auto"):
        self._entries = {e.id: e for e in entries}
        self.default_id = self._resolve_default(default)

    def _resolve_default(self, default: str) -> str:
        if default != "auto":
            self.get(default)
            return default
        if SD_TURBO_ID in self._entries and self._entries[SD_TURBO_ID].unavailable_reason() is None:
            return SD_TURBO_ID
        return TINY_SD_ID

    @property
    def using_fallback(self) -> bool:
        """True when "auto" fell back to the tiny model because sd-turbo's weights are absent."""
        return self.default_id == TINY_SD_ID

    def ids(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def get(self, model_id: str | None) -> ModelEntry:
        """The entry for ``model_id`` (the default when None); UnknownModel names the known ids."""
        key = self.default_id if model_id is None else model_id
        try:
            return self._entries[key]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownModel(
                f"model {key!r} is not in the registry; known models: {known}", param="model"
            ) from None
