"""Registry entries of the creative controls: LoRA adapters and ControlNets.

They sit in the registry file beside the models (``"adapters": [...]``, ``"controlnets": [...]``),
with the same sources as models: ``hub:<repo>`` (read from the local Hugging Face cache only),
``local:<folder or .safetensors file>``, ``bentoml:<tag>`` and ``tiny:...`` (built offline, for tests
and the offline start). Each names the pipeline family it fits (``sd``, ``sdxl``, ``flux``); a request that
combines it with a model of another family is refused, naming both.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from t2i_core.weights import sources
from t2i_core.weights.sources import Source, SourceFields, Usage

ADDON_SOURCE_KINDS = ("hub", "local", "bentoml", "tiny")
#: weights a request may give an adapter (negative weights invert a "slider" adapter)
MIN_ADAPTER_WEIGHT, MAX_ADAPTER_WEIGHT = -4.0, 4.0
MAX_CONDITIONING_SCALE = 4.0


class AddonEntry(SourceFields, BaseModel):
    """What adapters and ControlNets have in common: an id, the family they fit, where weights are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\s<>:]+$")
    family: Literal["sd", "sdxl", "flux"]
    source: str
    description: str = ""

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str) -> str:
        Source.parse(value, ADDON_SOURCE_KINDS)
        return value

    def unavailable_reason(self) -> str | None:
        """Why the weights cannot be read from disk now, or None when they can."""
        return sources.unavailable_reason(self.parsed_source, self.usage, f"{self.kind_name} {self.id!r}")

    def local_path(self) -> str:
        """A folder (or file) holding the weights, built first for a ``tiny:`` source; ModelUnavailable
        says why there is none."""
        return sources.resolve(self.parsed_source, self.usage, f"{self.kind_name} {self.id!r}", param=self.kind_name)

    #: the request field that names entries of this kind (errors name it), and what the source holds
    kind_name: ClassVar[str] = "addon"
    usage: ClassVar[Usage] = "adapter"


class AdapterEntry(AddonEntry):
    """A LoRA adapter: loaded into its model with diffusers' ``load_lora_weights``."""

    kind_name: ClassVar[str] = "adapters"
    #: the weight used when a request names the adapter without one
    weight: float = Field(default=1.0, ge=MIN_ADAPTER_WEIGHT, le=MAX_ADAPTER_WEIGHT)
    #: words that call up the adapter's concept (listed for clients; not added to prompts)
    trigger_words: list[str] = []
    #: the weights file inside the folder, when it holds several
    weight_name: str | None = None

    def listing(self) -> dict[str, object]:
        return {"id": self.id, "family": self.family, "weight": self.weight,
                "trigger_words": list(self.trigger_words), "description": self.description}


class ControlNetEntry(AddonEntry):
    """A ControlNet: conditions the denoiser on a control image (edges, pose, depth...), used as given."""

    kind_name: ClassVar[str] = "controlnet"
    usage: ClassVar[Usage] = "controlnet"
    #: the conditioning scale used when a request gives none
    conditioning_scale: float = Field(default=1.0, ge=0.0, le=MAX_CONDITIONING_SCALE)

    def listing(self) -> dict[str, object]:
        return {"id": self.id, "family": self.family, "conditioning_scale": self.conditioning_scale,
                "description": self.description}
