"""Speed tiers: how much of the full computation a request trades for speed.

A request names a tier (``speed``: ``quality`` / ``balanced`` / ``fast``; OpenAI's ``quality`` and an
A1111 ``override_settings`` entry map onto it, see ``tier_for_openai_quality``). ``quality`` is always
the full computation. What ``balanced`` and ``fast`` do is registry data, per model (``ModelEntry.speed``):

- ``cache``: a step cache on the denoiser, one of ``CACHE_KINDS``, with its ``options``. The engine
  turns it on for the batch and off after it (``engine/step_cache.py``), so tiers batch apart and a
  ``quality`` batch never runs with a cache. ``taylorseer`` (TaylorSeer, https://arxiv.org/abs/2503.06923)
  runs each transformer block fully on some steps and predicts its output on the others from a Taylor
  expansion over the steps (a fixed schedule: an image does not depend on its batch-mates);
  ``first_block`` (FirstBlockCache) skips the other blocks of a step when the first block's output
  changed less than ``threshold`` (decided per batch); ``mag`` (MagCache) skips by precomputed
  magnitude ratios of the model (``mag_ratios``); ``pab`` (Pyramid Attention Broadcast) reuses
  self-attention outputs within a timestep range (works on UNets too).
- ``steps``: a factor (0 < f <= 1) on the request's denoising steps: what works for UNet models
  (turbo models at 1 step have nothing to cut: they list no tier, and asking for one is a 400).

New model families add tiers as registry data only: the caches hook the denoiser's transformer
blocks generically (the block lists diffusers' caches know: ``transformer_blocks``,
``single_transformer_blocks``, ``layers``, ...).

Nothing here imports torch or diffusers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from t2i_core.common.errors import InvalidRequest

TIERS = ("quality", "balanced", "fast")
#: the tiers a registry entry may define (``quality`` is always the full computation)
CONFIGURABLE = ("balanced", "fast")
Tier = Literal["quality", "balanced", "fast"]
CacheKind = Literal["taylorseer", "first_block", "mag", "pab"]
CACHE_KINDS: tuple[str, ...] = ("taylorseer", "first_block", "mag", "pab")

#: per cache kind, the options a registry entry may set and their types (checked when the registry
#: loads, so a typo fails at startup rather than on the first request of that tier)
CACHE_OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "taylorseer": {"cache_interval": (int,), "disable_cache_before_step": (int,), "disable_cache_after_step": (int,),
                   "max_order": (int,)},
    "first_block": {"threshold": (float, int)},
    "mag": {"threshold": (float, int), "max_skip_steps": (int,), "retention_ratio": (float, int),
            "mag_ratios": (list,)},
    "pab": {"spatial_attention_block_skip_range": (int,), "spatial_attention_timestep_skip_range": (list,),
            "cross_attention_block_skip_range": (int,), "cross_attention_timestep_skip_range": (list,)},
}
#: OpenAI's ``quality`` -> tier; "auto" and "standard" leave the tier to the request (quality)
OPENAI_QUALITY = {"low": "fast", "medium": "balanced", "high": "quality", "hd": "quality",
                  "standard": None, "auto": None}


class SpeedTier(BaseModel):
    """What one tier of one model does (registry data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: a step cache on the denoiser, or none
    cache: CacheKind | None = None
    #: the cache's settings (see ``CACHE_OPTIONS``)
    options: dict[str, Any] = Field(default_factory=dict)
    #: a factor on the request's denoising steps (at least one step remains); none: the steps as asked
    steps: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _options_fit(self) -> "SpeedTier":
        if self.cache is None and self.options:
            raise ValueError("options need a cache")
        if self.cache is None and self.steps is None:
            raise ValueError("a tier needs a cache or a steps factor")
        allowed = CACHE_OPTIONS.get(self.cache or "", {})
        for name, value in self.options.items():
            if name not in allowed:
                raise ValueError(f"options.{name} is not an option of the {self.cache} cache; "
                                 f"its options: {', '.join(allowed)}")
            if isinstance(value, bool) or not isinstance(value, allowed[name]):
                raise ValueError(f"options.{name} must be {' or '.join(t.__name__ for t in allowed[name])}; got {value!r}")
        if self.cache == "mag" and "mag_ratios" not in self.options:
            raise ValueError("the mag cache needs options.mag_ratios (the model's calibrated magnitude ratios)")
        return self

    def steps_for(self, steps: int) -> int:
        """The denoising steps this tier runs for a request of ``steps``."""
        return steps if self.steps is None else max(1, round(steps * self.steps))


def check_tiers(tiers: dict[str, SpeedTier]) -> dict[str, SpeedTier]:
    """A registry entry's ``speed``: only the configurable tier names."""
    for name in tiers:
        if name not in CONFIGURABLE:
            raise ValueError(f"speed tiers may be {' or '.join(CONFIGURABLE)} (quality is the full computation); "
                             f"got {name!r}")
    return tiers


def resolve(requested: str | None, model_id: str, tiers: dict[str, SpeedTier], *, param: str = "speed",
            fallback: bool = False) -> tuple[str, SpeedTier | None]:
    """(tier name, its settings; None for the full computation) of a request on a model.

    A tier the model does not have is a 400 naming the tiers it has, unless ``fallback`` (OpenAI's
    ``quality``, a preference rather than a demand): then the full computation."""
    name = requested or "quality"
    if name == "quality":
        return "quality", None
    tier = tiers.get(name)
    if tier is not None:
        return name, tier
    if fallback:
        return "quality", None
    has = ", ".join(["quality", *tiers]) if tiers else "quality"
    why = "it lists no faster tier (a model distilled to a few steps has nothing to cut)" if not tiers else \
        f"its tiers: {has}"
    raise InvalidRequest(f"{param} {name!r} is not offered by model {model_id!r}: {why}", param=param)


def tier_for_openai_quality(quality: str) -> str | None:
    """OpenAI's ``quality`` as a tier: low -> fast, medium -> balanced, high / hd -> quality; auto and
    standard: None (the request's own ``speed``, else quality)."""
    key = quality.strip().lower()
    if key not in OPENAI_QUALITY:
        raise InvalidRequest(f"quality must be one of low, medium, high, auto (or standard, hd); got {quality!r}",
                             param="quality")
    return OPENAI_QUALITY[key]
