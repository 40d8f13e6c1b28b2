"""Request fields of the creative controls (LoRA adapters, ControlNet), with their limits in the type.

``adapters`` takes what clients naturally send: ``[{"id": "ink", "weight": 0.8}]``, ``["ink:0.8", "pastel"]``
(no weight: the adapter's default), ``{"ink": 0.8}``, or in a form field ``ink:0.8,pastel`` or JSON text. At most ``MAX_ADAPTERS`` per request, each once.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from t2i_core.common.addon_entries import MAX_ADAPTER_WEIGHT, MAX_CONDITIONING_SCALE, MIN_ADAPTER_WEIGHT
from t2i_core.common.fields import _as_float, _float_in

MAX_ADAPTERS = 4
#: base64 text of a control image in JSON (the pixel cap applies once decoded)
MAX_CONTROL_IMAGE_CHARS = 48 * 1024 * 1024


class AdapterUse(BaseModel):
    """One adapter of a request: its registry id and weight (the adapter's default when unset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    weight: float | None = Field(default=None, json_schema_extra={"minimum": MIN_ADAPTER_WEIGHT, "maximum": MAX_ADAPTER_WEIGHT})


def _id_weight(text: str) -> dict[str, Any]:
    """ "ink:0.8" -> {"id": "ink", "weight": "0.8"}; "ink" -> {"id": "ink"}."""
    name, sep, weight = text.rpartition(":")
    return {"id": name.strip(), "weight": weight.strip()} if sep and name.strip() else {"id": text}


def _adapter_list(value: Any, info: ValidationInfo) -> Any:
    name = info.field_name or "adapters"
    if value is None:
        return None
    if isinstance(value, str):  # a form field: JSON, or "id[:weight],id[:weight]"
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"{name} is not valid JSON; got {value!r}"[:300]) from None
        else:
            value = [_id_weight(part.strip()) for part in text.split(",") if part.strip()]
    if isinstance(value, dict):
        value = [{"id": k, "weight": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of {{\"id\", \"weight\"}} objects; got {value!r}"[:300])
    if len(value) > MAX_ADAPTERS:
        raise ValueError(f"{name} must name at most {MAX_ADAPTERS} adapters; got {len(value)}")
    out: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        item = _id_weight(item.strip()) if isinstance(item, str) else item  # "id" or "id:weight"
        if not isinstance(item, dict) or not isinstance(item.get("id", item.get("name")), str):
            raise ValueError(f"{name}[{index}] must be an adapter id or {{\"id\", \"weight\"}}; got {item!r}"[:300])
        item = {"id": item.get("id", item.get("name")), **{k: v for k, v in item.items() if k not in ("id", "name")}}
        weight = item.get("weight")
        if weight is not None:
            weight = _as_float(weight, f"{name}[{index}].weight")
            if not MIN_ADAPTER_WEIGHT <= weight <= MAX_ADAPTER_WEIGHT:
                raise ValueError(f"{name}[{index}].weight must be between {MIN_ADAPTER_WEIGHT} and "
                                 f"{MAX_ADAPTER_WEIGHT}; got {item['weight']!r}")
            item["weight"] = weight
        if any(o["id"] == item["id"] for o in out):
            raise ValueError(f"{name} names adapter {item['id']!r} twice")
        out.append(item)
    return out


Adapters = Annotated[
    list[AdapterUse] | None,
    BeforeValidator(_adapter_list),
    Field(description=f"LoRA adapters from /v1/adapters with their weights (at most {MAX_ADAPTERS}).",
          json_schema_extra={"maxItems": MAX_ADAPTERS}),
]
ControlNetId = Annotated[
    str | None,
    Field(description="A ControlNet id from /v1/controlnets; needs control_image.", max_length=200),
]
ConditioningScale = Annotated[
    float | None,
    BeforeValidator(_float_in(0.0, MAX_CONDITIONING_SCALE)),
    Field(description="How strongly the control image steers (the ControlNet's default when unset).",
          json_schema_extra={"minimum": 0, "maximum": MAX_CONDITIONING_SCALE}),
]
GuidanceFraction = Annotated[
    float | None,
    BeforeValidator(_float_in(0.0, 1.0)),
    Field(description="Fraction of the denoising steps (0-1).", json_schema_extra={"minimum": 0, "maximum": 1}),
]
ControlImageText = Annotated[
    str | None,
    Field(description="The control image as base64 (PNG/JPEG/WebP), used as given (no edge or pose "
                      "detection), resized to the output size.", max_length=MAX_CONTROL_IMAGE_CHARS),
]
