"""Registry entries of the creative controls: LoRA adapters and ControlNets.

They sit in the registry file beside the models (``"adapters": [...]``, ``"controlnets": [...]``),
with the same sources as models: ``hub:<repo>`` (read from the local Hugging Face cache only),
``local:<folder or .safetensors file>``, ``bentoml:<tag>`` and ``tiny:...`` (built offline, for tests
and the offline start). Each names the pipeline family it fits (``sd``, ``sdxl``); a request that
combines it with a model of another family is refused, naming both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from t2i_core.common.errors import ModelUnavailable

CONTROL_SOURCE_KINDS = ("hub", "local", "bentoml", "tiny")
#: weights a request may give an adapter (negative weights invert a "slider" adapter)
MIN_ADAPTER_WEIGHT, MAX_ADAPTER_WEIGHT = -4.0, 4.0
MAX_CONDITIONING_SCALE = 4.0


def check_source(value: str, kinds: tuple[str, ...]) -> str:
    """A registry entry's ``source``, ``<kind>:<ref>`` with a kind of ``kinds``; ValueError otherwise."""
    kind, _, ref = value.partition(":")
    if kind not in kinds or not ref:
        raise ValueError(f"source must be one of {', '.join(k + ':...' for k in kinds)}; got {value!r}")
    return value


class SourceParts:
    """The two parts of a registry entry's ``source`` (models, adapters, ControlNets). The entry declares
    ``source`` itself (an annotation here would make pydantic take it as this mixin's field)."""

    if TYPE_CHECKING:
        source: str

    @property
    def source_kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def source_ref(self) -> str:
        return self.source.split(":", 1)[1]


class AddonEntry(SourceParts, BaseModel):
    """What adapters and ControlNets have in common: an id, the family they fit, where weights are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\s<>:]+$")
    family: Literal["sd", "sdxl"]
    source: str
    description: str = ""

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str) -> str:
        return check_source(value, CONTROL_SOURCE_KINDS)

    def unavailable_reason(self) -> str | None:
        """Why the weights cannot be read from disk now, or None when they can."""
        try:
            self.local_path()
        except ModelUnavailable as err:
            return err.message
        return None

    def local_path(self) -> str:
        """A folder (or file) holding the weights; ModelUnavailable says why there is none."""
        kind, ref = self.source_kind, self.source_ref
        if kind == "tiny":
            return self._tiny_path()
        if kind == "local":
            if Path(ref).exists():
                return ref
            raise ModelUnavailable(f"{self.id!r}: {ref} does not exist", param=self.kind_name)
        if kind == "bentoml":
            try:
                import bentoml

                return bentoml.models.get(ref).path
            except Exception as exc:  # noqa: BLE001 - bentoml raises several kinds for a missing tag
                raise ModelUnavailable(f"{self.id!r}: {ref!r} is not in the BentoML model store ({exc})",
                                       param=self.kind_name) from None
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return snapshot_download(ref, local_files_only=True)
        except LocalEntryNotFoundError:
            raise ModelUnavailable(
                f"{self.id!r}: {ref} is not in the local Hugging Face cache; download it once with "
                f"`hf download {ref}` on a machine that reaches the hub", param=self.kind_name,
            ) from None

    #: the request field that names entries of this kind (errors name it)
    kind_name: ClassVar[str] = "control"

    def _tiny_path(self) -> str:
        raise NotImplementedError


class AdapterEntry(AddonEntry):
    """A LoRA adapter: loaded into its model with diffusers' ``load_lora_weights``."""

    kind_name: ClassVar[str] = "adapters"
    #: the weight used when a request names the adapter without one
    weight: float = Field(default=1.0, ge=MIN_ADAPTER_WEIGHT, le=MAX_ADAPTER_WEIGHT)
    #: words that call up the adapter's concept (listed for clients; not added to prompts)
    trigger_words: list[str] = []
    #: the weights file inside the folder, when it holds several
    weight_name: str | None = None

    def _tiny_path(self) -> str:
        from t2i_core.devtools.tiny_addons import ensure_tiny_adapter

        return str(ensure_tiny_adapter(self.source_ref))

    def listing(self) -> dict[str, object]:
        return {"id": self.id, "family": self.family, "weight": self.weight,
                "trigger_words": list(self.trigger_words), "description": self.description}


class ControlNetEntry(AddonEntry):
    """A ControlNet: conditions the denoiser on a control image (edges, pose, depth...), used as given."""

    kind_name: ClassVar[str] = "controlnet"
    #: the conditioning scale used when a request gives none
    conditioning_scale: float = Field(default=1.0, ge=0.0, le=MAX_CONDITIONING_SCALE)

    def _tiny_path(self) -> str:
        from t2i_core.devtools.tiny_addons import ensure_tiny_controlnet

        return str(ensure_tiny_controlnet(self.source_ref))

    def listing(self) -> dict[str, object]:
        return {"id": self.id, "family": self.family, "conditioning_scale": self.conditioning_scale,
                "description": self.description}
