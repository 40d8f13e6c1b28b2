"""Validated field types shared by every route, with limits in the type.

Each validator's message names the field, the limit and the value received, e.g.
``width must be a multiple of 8 between 64 and 2048; got 513``. The limits also appear in the
OpenAPI document (``minimum``, ``maximum``, ``multipleOf``, ``maxLength``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo

from t2i_core.common.schedulers import SCHEDULERS
from t2i_core.common.speed_tiers import TIERS as SPEED_TIERS

MAX_PROMPT_CHARS = 2000
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_SEED = 2**64 - 1
IMAGE_FORMATS = ("png", "jpeg", "webp")
_FORMAT_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}


def _name(info: ValidationInfo) -> str:
    return info.field_name or "value"


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{name} must be an integer; got {value!r}")


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number; got {value!r}") from None
    else:
        raise ValueError(f"{name} must be a number; got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return number


def _int_in(lo: int, hi: int, multiple: int | None = None):
    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        name = _name(info)
        number = _as_int(value, name)
        if not lo <= number <= hi or (multiple and number % multiple):
            what = f"a multiple of {multiple} " if multiple else "an integer "
            raise ValueError(f"{name} must be {what}between {lo} and {hi}; got {value!r}")
        return number

    return check


def _float_in(lo: float, hi: float, *, lo_open: bool = False):
    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        name = _name(info)
        number = _as_float(value, name)
        low_ok = number > lo if lo_open else number >= lo
        if not (low_ok and number <= hi):
            bound = f"greater than {lo}" if lo_open else f"at least {lo}"
            raise ValueError(f"{name} must be {bound} and at most {hi}; got {value!r}")
        return number

    return check


def _prompt(required: bool):
    def check(value: Any, info: ValidationInfo) -> Any:
        name = _name(info)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string; got {value!r}"[:300])
        if required and not value.strip():
            raise ValueError(f"{name} must not be empty; got {value!r}")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"{name} must be at most {MAX_PROMPT_CHARS} characters; got {len(value)} characters"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\ud800"): no tokenizer takes it
            raise ValueError(
                f"{name} must be valid Unicode text; got a lone surrogate {value[exc.start]!r} at character {exc.start}"
            ) from None
        return value

    return check


def _format(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return None
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in _FORMAT_ALIASES:
        raise ValueError(f"{_name(info)} must be one of {', '.join(IMAGE_FORMATS)}; got {value!r}")
    return _FORMAT_ALIASES[key]


Prompt = Annotated[
    str,
    BeforeValidator(_prompt(required=True)),
    Field(description="What to draw.", json_schema_extra={"minLength": 1, "maxLength": MAX_PROMPT_CHARS}),
]
NegativePrompt = Annotated[
    str | None,
    BeforeValidator(_prompt(required=False)),
    Field(description="What to avoid.", json_schema_extra={"maxLength": MAX_PROMPT_CHARS}),
]
Steps = Annotated[
    int | None,
    BeforeValidator(_int_in(1, MAX_STEPS)),
    Field(description="Denoising steps; the model's default when unset.",
          json_schema_extra={"minimum": 1, "maximum": MAX_STEPS}),
]
Guidance = Annotated[
    float | None,
    BeforeValidator(_float_in(0.0, MAX_GUIDANCE)),
    Field(description="Classifier-free guidance scale; the model's default when unset.",
          json_schema_extra={"minimum": 0, "maximum": MAX_GUIDANCE}),
]
Side = Annotated[
    int | None,
    BeforeValidator(_int_in(MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE)),
    Field(description="Pixels; a multiple of 8. The model's default when unset.",
          json_schema_extra={"minimum": MIN_SIDE, "maximum": MAX_SIDE, "multipleOf": SIDE_MULTIPLE}),
]
Seed = Annotated[
    int | None,
    BeforeValidator(_int_in(0, MAX_SEED)),
    Field(description="Same seed, same image. Drawn at random (and returned) when unset.",
          json_schema_extra={"minimum": 0, "maximum": MAX_SEED}),
]
Strength = Annotated[
    float | None,
    BeforeValidator(_float_in(0.0, 1.0, lo_open=True)),
    Field(description="How much to change the input image: 0 < strength <= 1.",
          # OpenAPI 3.0 (BentoML's document) spells an open bound as a boolean beside minimum
          json_schema_extra={"minimum": 0, "exclusiveMinimum": True, "maximum": 1}),
]
ImageFormat = Annotated[
    str,
    BeforeValidator(_format),
    Field(description="Output image format.", json_schema_extra={"enum": list(IMAGE_FORMATS)}),
]
ModelId = Annotated[
    str | None,
    Field(description="A model id from /v1/models; the server's default when unset.", max_length=200),
]


MAX_N = 10  # OpenAI's own bound; the server's configured maximum may be lower
RESPONSE_FORMATS = ("b64_json", "url")


def _choice(*allowed: str):
    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None or value in allowed:
            return value
        raise ValueError(f"{_name(info)} must be one of {', '.join(allowed)}; got {value!r}")

    return check


def parse_size(value: Any, info: ValidationInfo) -> Any:
    """OpenAI's ``size``: "WIDTHxHEIGHT" (each a multiple of 8 within limits) or "auto"."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str) and value.count("x") == 1:
        w, h = value.lower().split("x")
        try:
            width, height = int(w), int(h)
        except ValueError:
            width = height = -1
        if all(MIN_SIDE <= s <= MAX_SIDE and s % SIDE_MULTIPLE == 0 for s in (width, height)):
            return f"{width}x{height}"
    raise ValueError(
        f"{_name(info)} must be 'WIDTHxHEIGHT' with sides multiples of {SIDE_MULTIPLE} between "
        f"{MIN_SIDE} and {MAX_SIDE}, or 'auto'; got {value!r}"
    )


N = Annotated[
    int,
    BeforeValidator(_int_in(1, MAX_N)),
    Field(description="How many images.", json_schema_extra={"minimum": 1, "maximum": MAX_N}),
]
OutputQuality = Annotated[
    int | None,
    BeforeValidator(_int_in(1, 100)),
    Field(description="JPEG / WebP quality, 1 to 100 (90 when unset); no effect on PNG.",
          json_schema_extra={"minimum": 1, "maximum": 100}),
]
PartialImages = Annotated[
    int,
    BeforeValidator(_int_in(0, 3)),
    Field(description="Partial images to stream while the image is made (with stream).",
          json_schema_extra={"minimum": 0, "maximum": 3}),
]
Size = Annotated[str | None, BeforeValidator(parse_size), Field(description="'WIDTHxHEIGHT' or 'auto'.")]
ResponseFormat = Annotated[str | None, BeforeValidator(_choice(*RESPONSE_FORMATS))]
OptionalImageFormat = Annotated[
    str | None, BeforeValidator(_format), Field(json_schema_extra={"enum": list(IMAGE_FORMATS)})
]
SpeedName = Annotated[
    str | None,
    BeforeValidator(_choice(*SPEED_TIERS)),
    Field(description="Speed tier: quality (the full computation, the default), balanced or fast: a step cache "
                      "or fewer steps, as the model's registry entry says (GET /v1/models lists each model's tiers); "
                      "a tier the model does not offer is a 400.",
          json_schema_extra={"enum": list(SPEED_TIERS)}),
]
SchedulerName = Annotated[
    str | None,
    BeforeValidator(_choice(*SCHEDULERS)),
    Field(description="Sampler for this request; the model's default when unset.",
          json_schema_extra={"enum": list(SCHEDULERS)}),
]
