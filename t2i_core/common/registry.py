"""The model registry: public model ids, where their weights come from, metadata and defaults.

The registry is one JSON file (``models.json`` beside ``t2i_core``, or ``$T2I_REGISTRY``). A source is
``hub:<repo id>`` (Hugging Face hub, read only from the local cache), ``local:<folder>`` (a diffusers
folder), ``bentoml:<tag>`` (a model in the BentoML model store), ``tiny:<family>`` (a built-in tiny
random-weight pipeline, built offline) or ``random:<arch>`` (a full-size architecture with random
weights, for GPU benchmarks). Weights are never downloaded while serving.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from t2i_core.common.addon_entries import AdapterEntry, ControlNetEntry
from t2i_core.common.errors import T2IError, UnknownAdapter, UnknownControlNet, UnknownModel, describe_validation_errors
from t2i_core.common.families import FAMILIES, REFERENCE_PIPELINES, EditKind, Family, PipelineFamily
from t2i_core.common.fields import MAX_GUIDANCE, MAX_SIDE, MAX_STEPS, MIN_SIDE, SIDE_MULTIPLE
from t2i_core.common.schedulers import SCHEDULERS, check_scheduler
from t2i_core.weights import sources
from t2i_core.weights.sources import Source, SourceFields
from t2i_core.weights.quantize import Quantization, parse_quantization
from t2i_core.weights.tiny_vae import check_tiny_vae_source

TINY_SD_ID = "builtin/tiny-sd"
SD_TURBO_ID = "stabilityai/sd-turbo"
DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "models.json"
SOURCE_KINDS = sources.KINDS


class RegistryError(ValueError):
    """The registry file cannot be used; the message names the file, the entry and the field."""


class ModelDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(ge=0, le=MAX_GUIDANCE)
    width: int = Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    height: int = Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    scheduler: str | None = None


class MemoryOptions(BaseModel):
    """diffusers memory savers, applied when the model loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_offload: bool = False  # enable_model_cpu_offload (CUDA only): modules visit the GPU in turn
    #: big models on small GPUs (t2i_core/engine/offload.py): "model" (each component visits the device
    #: in turn), "sequential" (each layer), "group" (blocks of ``offload_blocks`` layers); "none"
    offload: Literal["none", "model", "sequential", "group"] = "none"
    offload_blocks: int = Field(default=1, ge=1, le=64)
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False


class EditTraits(BaseModel):
    """What an edit of this model is (default: its family's, ``t2i_core/common/families.py``):
    ``strength`` (image to image, and inpainting where the family has it) or ``reference``
    (instruction edits from input images, no strength), the most input images one edit takes, and the
    diffusers pipeline that runs it (a reference family's, e.g. ``QwenImageEditPlusPipeline`` for
    Qwen-Image-Edit-2509's multi-image edits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EditKind
    max_images: int = Field(default=1, ge=1, le=16)
    pipeline: str | None = None


class ModelEntry(SourceFields, BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    publisher: str
    family: str  # metadata, as seed 002 reports it ("sdxl", "stable-diffusion", ...)
    version: str
    pipeline: PipelineFamily  # which diffusers pipeline family loads it
    source: str
    defaults: ModelDefaults
    memory: MemoryOptions = MemoryOptions()
    preload: bool = False
    #: dtype on CPU; "auto": bfloat16 where the CPU computes it natively (AMX / AVX512-BF16), else float32,
    #: T2I_CPU_BF16 overriding (t2i_core/engine/devices.py); "float64" makes CPU images bit-identical
    #: whatever the batch (fp32 kernels are not).
    cpu_dtype: Literal["auto", "float32", "float64", "bfloat16"] = "float32"
    #: an AutoencoderTiny (e.g. "hub:madebyollin/taesd") to decode with instead of the model's VAE
    #: (faster, some detail lost; see t2i_core/weights/tiny_vae.py); null: the model's own VAE
    tiny_vae: str | None = None
    #: a dedicated inpainting checkpoint (another entry's id) that runs this model's masked edits;
    #: null: the inpainting pipeline is built from this model's own components
    inpainting: str | None = None
    #: what an edit of this model is; null: its family's (see ``EditTraits``)
    edits: EditTraits | None = None
    #: quantized components (t2i_core/weights/quantize.py): ``{"transformer": "fp8", "text_encoder_2":
    #: "int8"}``; a GGUF denoiser as ``{"method": "gguf", "file": "<path>|hub:<owner>/<repo>/<file>.gguf"}``;
    #: ``nf4`` needs CUDA; null: none
    quantization: dict[str, Any] | None = None
    description: str = ""

    @field_validator("tiny_vae")
    @classmethod
    def _tiny_vae_source(cls, value: str | None) -> str | None:
        return None if value is None else check_tiny_vae_source(value)

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str) -> str:
        Source.parse(value, SOURCE_KINDS)
        return value

    @field_validator("quantization")
    @classmethod
    def _quantization_spec(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        parse_quantization(value)  # QuantizationError (a ValueError) names the field and the value
        return value

    @property
    def quantization_spec(self) -> Quantization:
        return parse_quantization(self.quantization)

    @model_validator(mode="after")
    def _scheduler_fits(self) -> "ModelEntry":
        if self.defaults.scheduler is not None:
            check_scheduler(self.defaults.scheduler, self.pipeline, field="defaults.scheduler")
        return self

    @model_validator(mode="after")
    def _edits_fit(self) -> "ModelEntry":
        if self.edits is not None:
            check_edits(self.edits, self.family_traits)
        multiple = self.family_traits.size_multiple
        for side in ("width", "height"):
            value = getattr(self.defaults, side)
            if value % multiple:
                raise ValueError(f"defaults.{side} must be a multiple of {multiple} for {self.pipeline} models; "
                                 f"got {value}")
        return self

    @property
    def family_traits(self) -> Family:
        return FAMILIES[self.pipeline]

    @property
    def edit_traits(self) -> EditTraits:
        """What an edit of this model is: the entry's ``edits``, else its family's."""
        if self.edits is not None:
            return self.edits
        traits = self.family_traits
        return EditTraits(kind=traits.edits, max_images=traits.max_images, pipeline=traits.edit)

    def metadata(self) -> dict[str, str]:
        return {"publisher": self.publisher, "family": self.family, "version": self.version, "id": self.id}

    def store_copy(self) -> str | None:
        """The folder of this model's copy in the BentoML model store (``pull --to-store``, or shipped
        inside a Bento), which wins over the source; None when there is none."""
        return None if self.source_kind == "bentoml" else sources.store_copy(self.id)

    def unavailable_reason(self) -> str | None:
        """Why the weights cannot be loaded from disk now, or None when they can."""
        if self.store_copy() is not None:
            return None
        return sources.unavailable_reason(self.parsed_source, "pipeline", f"model {self.id!r}", pull_id=self.id)

    def local_path(self) -> str:
        """A folder or cached repo id that ``from_pretrained(..., local_files_only=True)`` loads."""
        if (copy := self.store_copy()) is not None:
            return copy
        return sources.resolve(self.parsed_source, "pipeline", f"model {self.id!r}", param="model", pull_id=self.id)


def check_edits(edits: EditTraits, family: Family) -> None:
    """ValueError naming the field when ``edits`` does not fit ``family``."""
    if edits.kind != family.edits:
        raise ValueError(f"edits.kind must be {family.edits!r} for {family.name} models; got {edits.kind!r}")
    if edits.pipeline is not None and edits.pipeline not in family.edit_pipelines:
        raise ValueError(f"edits.pipeline must be one of {', '.join(family.edit_pipelines) or 'none'} for "
                         f"{family.name} models; got {edits.pipeline!r}")
    pipeline = edits.pipeline or family.edit
    limit = REFERENCE_PIPELINES[pipeline][1] if edits.kind == "reference" and pipeline in REFERENCE_PIPELINES else 1
    if edits.max_images > limit:
        raise ValueError(f"edits.max_images must be at most {limit} for {pipeline or family.name}; "
                         f"got {edits.max_images}")


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str = "auto"
    models: list[ModelEntry] = Field(min_length=1)
    adapters: list[AdapterEntry] = []
    controlnets: list[ControlNetEntry] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> "RegistryFile":
        for kind, entries in (("models", self.models), ("adapters", self.adapters), ("controlnets", self.controlnets)):
            seen: set[str] = set()
            for index, entry in enumerate(entries):
                if entry.id in seen:
                    raise ValueError(f"{kind} entry {index} ({entry.id!r}): id {entry.id!r} appears twice")
                seen.add(entry.id)
        by_id = {e.id: e for e in self.models}
        for entry in self.models:
            if entry.inpainting is not None:
                target = by_id.get(entry.inpainting)
                if target is None or target.pipeline != entry.pipeline:
                    raise ValueError(f"entry {entry.id!r}: field inpainting must name a model of the same pipeline "
                                     f"family ({entry.pipeline}) in this file; got {entry.inpainting!r}")
        return self


def registry_path() -> Path:
    return Path(os.environ.get("T2I_REGISTRY") or DEFAULT_REGISTRY)


def load_registry_file(path: Path | None = None) -> RegistryFile:
    """Read and validate the registry file; RegistryError names the file, the entry and the field."""
    path = Path(path or registry_path())
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"registry file {path}: not found (set T2I_REGISTRY to a models.json)") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registry file {path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return RegistryFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = list(err.get("loc", ()))
            where = ""
            if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
                index = loc[1]
                entry = raw["models"][index] if isinstance(raw.get("models"), list) else {}
                entry_id = entry.get("id") if isinstance(entry, dict) else None
                where = f"entry {index} ({entry_id!r}): " if entry_id else f"entry {index}: "
                loc = loc[2:]
            message, _ = describe_validation_errors([{**err, "loc": loc}])
            value = err.get("input")
            if err.get("type") != "missing" and not isinstance(value, (dict, list)) and repr(value) not in message:
                message += f"; got {value!r}"
            problems.append(where + ("field " + message if loc else message))
        raise RegistryError(f"registry file {path}: " + "; ".join(problems)) from None


class Registry:
    """Model entries by id, plus the default model (changeable at runtime)."""

    def __init__(self, entries: list[ModelEntry] | None = None, default: str | None = None, path: Path | None = None,
                 adapters: list[AdapterEntry] | None = None, controlnets: list[ControlNetEntry] | None = None):
        if entries is None:
            file = load_registry_file(path)
            entries, file_default = file.models, file.default
            adapters = file.adapters if adapters is None else adapters
            controlnets = file.controlnets if controlnets is None else controlnets
        else:
            file_default = "auto"
        self._entries = {e.id: e for e in entries}
        self._adapters = {a.id: a for a in adapters or []}
        self._controlnets = {c.id: c for c in controlnets or []}
        self.auto = (default or file_default) == "auto"
        self.default_id = self._resolve_default(default or file_default)

    def _resolve_default(self, default: str) -> str:
        if default != "auto":
            self.get(default)
            return default
        if SD_TURBO_ID in self._entries and self._entries[SD_TURBO_ID].unavailable_reason() is None:
            return SD_TURBO_ID
        return TINY_SD_ID if TINY_SD_ID in self._entries else next(iter(self._entries))

    def set_default(self, model_id: str) -> None:
        self.get(model_id)
        self.default_id = model_id

    @property
    def using_fallback(self) -> bool:
        """True when "auto" chose the tiny model because sd-turbo's weights are absent."""
        return self.auto and self.default_id == TINY_SD_ID

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

    def adapters(self) -> list[AdapterEntry]:
        return list(self._adapters.values())

    def controlnets(self) -> list[ControlNetEntry]:
        return list(self._controlnets.values())

    def adapter(self, adapter_id: str, model: ModelEntry) -> AdapterEntry:
        """The adapter ``adapter_id`` for ``model``; UnknownAdapter (400) when it is not registered or
        fits another pipeline family, naming the adapters that fit."""
        return _fitting(self._adapters, "adapter", adapter_id, model, UnknownAdapter, "adapters")

    def controlnet(self, controlnet_id: str, model: ModelEntry) -> ControlNetEntry:
        """The ControlNet ``controlnet_id`` for ``model``; UnknownControlNet (400) as for adapters."""
        return _fitting(self._controlnets, "controlnet", controlnet_id, model, UnknownControlNet, "controlnet")


E = TypeVar("E", AdapterEntry, ControlNetEntry)


def _fitting(table: dict[str, E], what: str, wanted: str, model: ModelEntry, error: type[T2IError], param: str) -> E:
    entry = table.get(wanted)
    if entry is not None and entry.family == model.pipeline:
        return entry
    fits = sorted(e.id for e in table.values() if e.family == model.pipeline)
    why = "is not in the registry" if entry is None else f"is for {entry.family} models"
    raise error(f"{what} {wanted!r} {why}; model {model.id!r} ({model.pipeline}) takes: "
                f"{', '.join(fits) or 'none registered'}", param=param)


__all__ = ["Registry", "ModelEntry", "ModelDefaults", "MemoryOptions", "EditTraits", "RegistryError", "SCHEDULERS",
           "PipelineFamily"]
