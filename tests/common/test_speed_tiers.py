"""Speed tiers as registry data and as request fields: resolution, refusals, OpenAI's ``quality``."""

from __future__ import annotations

import json

import pytest

from t2i_core.api.request_flow import parse
from t2i_core.common.errors import InvalidRequest
from t2i_core.common.registry import DEFAULT_REGISTRY, Registry, RegistryError, load_registry_file
from t2i_core.common.schemas import EditRequest, GenerateRequest, to_engine
from t2i_core.common.speed_tiers import SpeedTier, tier_for_openai_quality

SD3 = "builtin/tiny-sd3"


def engine_request(model: str, **fields):
    registry = Registry()
    return to_engine(parse(GenerateRequest, {"prompt": "x", "model": model, **fields}), registry.get(model), seed=1,
                     registry=registry)


def test_the_tier_is_carried_to_the_engine_and_batches_apart():
    quality, fast = engine_request(SD3), engine_request(SD3, speed="fast")
    assert quality.speed == "quality" and fast.speed == "fast"
    assert quality.batch_key() != fast.batch_key()
    assert engine_request(SD3, speed="quality").batch_key() == quality.batch_key()


def test_a_steps_tier_cuts_the_steps_and_says_how_many():
    req = engine_request("builtin/tiny-sd", speed="fast", steps=9)
    assert (req.steps, req.steps_skipped) == (4, 5)  # round(9 * 0.5) = 4
    assert engine_request("builtin/tiny-sd", speed="fast", steps=1).steps == 1  # at least one step remains
    assert engine_request(SD3, speed="fast", steps=9).steps == 9  # a cache tier keeps the steps


def test_a_steps_tier_keeps_the_step_an_edit_needs():
    registry = Registry()
    req = parse(EditRequest, {"prompt": "x", "model": "builtin/tiny-sd", "speed": "fast", "steps": 4, "strength": 0.25})
    eng = to_engine(req, registry.get("builtin/tiny-sd"), seed=1, mode="edit", image_size=(64, 64), registry=registry)
    assert eng.steps == 4 and eng.steps_skipped == 0  # 2 steps at strength 0.25 would run none


def test_a_tier_the_model_lacks_is_a_400_naming_the_tiers_it_has():
    with pytest.raises(InvalidRequest) as info:
        engine_request("builtin/tiny-sd", speed="balanced")
    assert info.value.param == "speed" and "'balanced'" in info.value.message and "quality, fast" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        engine_request("builtin/tiny-sdxl", speed="fast")
    assert "no faster tier" in info.value.message


def test_an_unknown_tier_name_is_a_400():
    with pytest.raises(InvalidRequest) as info:
        parse(GenerateRequest, {"prompt": "x", "speed": "ludicrous"})
    assert info.value.param == "speed" and "quality, balanced, fast" in info.value.message


@pytest.mark.parametrize("quality, tier", [("low", "fast"), ("medium", "balanced"), ("high", "quality"), ("hd", "quality"),
                                           ("auto", None), ("standard", None), (" LOW ", "fast")])
def test_openai_quality_maps_to_a_tier(quality, tier):
    assert tier_for_openai_quality(quality) == tier


def test_an_unknown_openai_quality_is_a_400():
    with pytest.raises(InvalidRequest) as info:
        tier_for_openai_quality("ultra")
    assert info.value.param == "quality" and "'ultra'" in info.value.message


def test_openai_quality_picks_the_tier_where_the_model_has_it_else_the_full_computation():
    from t2i_core.api.request_flow import RequestFlow
    from t2i_core.api.surfaces.openai_images import OpenAIImageRequest

    flow = RequestFlow(engine=None)  # type: ignore[arg-type]  (checked only: no engine call)

    def tier(**fields) -> str | None:
        return parse(OpenAIImageRequest, {"prompt": "x", **fields}).checked(flow).native().speed

    assert tier(model=SD3, quality="low") == "fast" and tier(model=SD3, quality="medium") == "balanced"
    assert tier(model="builtin/tiny-sd", quality="medium") is None  # it has no balanced tier: a preference, not a 400
    assert tier(model=SD3, quality="low", speed="balanced") == "balanced"  # speed, when given, wins
    assert tier(model=SD3, quality="high") == "quality"
    assert tier(model=SD3, quality="low", num_inference_steps=5) == "fast"
    # quality no longer changes the steps
    assert parse(OpenAIImageRequest, {"prompt": "x", "quality": "high"}).checked(flow).native().num_inference_steps is None


def write_registry(tmp_path, speed) -> str:
    raw = json.loads(DEFAULT_REGISTRY.read_text())
    raw["models"] = [m for m in raw["models"] if m["id"] == SD3]
    raw["models"][0]["speed"] = speed
    path = tmp_path / "models.json"
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize("speed, message", [
    ({"turbo": {"steps": 0.5}}, "balanced or fast"),
    ({"quality": {"steps": 0.5}}, "quality is the full computation"),
    ({"fast": {"cache": "taylorseer", "options": {"interval": 2}}}, "options.interval is not an option of the taylorseer"),
    ({"fast": {"cache": "first_block", "options": {"threshold": "high"}}}, "options.threshold must be float or int"),
    ({"fast": {"cache": "teacache"}}, "fast.cache"),
    ({"fast": {"steps": 1.5}}, "fast.steps"),
    ({"fast": {}}, "a cache or a steps factor"),
    ({"fast": {"cache": "mag", "options": {"threshold": 0.1}}}, "mag_ratios"),
])
def test_bad_tiers_fail_the_registry_naming_the_entry(tmp_path, speed, message):
    with pytest.raises(RegistryError) as info:
        load_registry_file(write_registry(tmp_path, speed))
    assert f"({SD3!r})" in str(info.value) and message in str(info.value), str(info.value)


def test_the_shipped_tiers_are_valid_and_turbo_models_list_none():
    registry = Registry()
    assert set(registry.get(SD3).speed) == {"balanced", "fast"}
    assert registry.get("stabilityai/sd-turbo").speed == {} and registry.get("stabilityai/sdxl-turbo").speed == {}
    # the DiT families' many-step models have both tiers; models distilled to about 4 steps none
    for model in ("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-Kontext-dev", "Qwen/Qwen-Image",
                  "Qwen/Qwen-Image-Edit", "Qwen/Qwen-Image-Edit-2509", "builtin/tiny-flux", "builtin/tiny-z-image"):
        assert set(registry.get(model).speed) == {"balanced", "fast"}, model
    for model in ("black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.2-klein-4B",
                  "stabilityai/stable-diffusion-3.5-large-turbo"):
        assert registry.get(model).speed == {}, model
    assert SpeedTier(steps=0.5).steps_for(3) == 2 and SpeedTier(steps=0.1).steps_for(3) == 1
