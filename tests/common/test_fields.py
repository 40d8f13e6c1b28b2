"""Request validation: limits live in the types, messages name the field, the limit and the value."""

from __future__ import annotations

import pytest

from t2i_core.common.errors import InvalidRequest
from t2i_core.api.request_flow import parse
from t2i_core.common.registry import Registry
from t2i_core.common.schemas import EditRequest, GenerateRequest, nth_image, to_engine


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({}, "prompt", ["prompt", "required"]),
        ({"prompt": "   "}, "prompt", ["prompt", "empty"]),
        ({"prompt": "x" * 2001}, "prompt", ["2000", "2001"]),
        ({"prompt": "x", "width": 513}, "width", ["width", "multiple of 8", "2048", "513"]),
        ({"prompt": "x", "height": 32}, "height", ["height", "64", "32"]),
        ({"prompt": "x", "steps": 0}, "steps", ["steps", "between 1 and 100", "0"]),
        ({"prompt": "x", "num_inference_steps": "many"}, "num_inference_steps", ["integer", "'many'"]),
        ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale", ["finite", "nan"]),
        ({"prompt": "x", "seed": 2**64}, "seed", ["seed", str(2**64)]),
        ({"prompt": "x", "seed": -1}, "seed", ["seed", "-1"]),
        ({"prompt": "x", "format": "gif"}, "format", ["png, jpeg, webp", "'gif'"]),
        ({"prompt": "x", "width": True}, "width", ["integer", "True"]),
    ],
)
def test_bad_generate_fields_name_field_and_value(data, field, words):
    with pytest.raises(InvalidRequest) as info:
        parse(GenerateRequest, data)
    assert info.value.param == field
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("strength", [0, 1.5, -0.1, "strong"])
def test_strength_bounds(strength):
    with pytest.raises(InvalidRequest) as info:
        parse(EditRequest, {"prompt": "x", "strength": strength})
    assert info.value.param == "strength" and repr(strength) in info.value.message


def test_aliases_and_normalisation():
    req = parse(GenerateRequest, {"prompt": "x", "steps": 4, "format": "JPG", "width": "72"})
    assert (req.num_inference_steps, req.format, req.width) == (4, "jpeg", 72)
    assert parse(EditRequest, {"prompt": "x", "strength": 1}).strength == 1.0


def test_unset_fields_take_the_model_defaults():
    entry = Registry().get("stabilityai/sd-turbo")
    eng = to_engine(parse(GenerateRequest, {"prompt": "x"}), entry, seed=5)
    d = entry.defaults
    assert (eng.steps, eng.guidance_scale, eng.width, eng.height, eng.seed) == (
        d.steps, d.guidance_scale, d.width, d.height, 5
    )
    eng = to_engine(parse(GenerateRequest, {"prompt": "x", "width": 256, "seed": 7}), entry, seed=7)
    assert (eng.width, eng.height, nth_image(eng, 2).seed) == (256, d.height, 9)
    assert nth_image(eng.model_copy(update={"seed": 2**64 - 1}), 2).seed == 1  # seeds wrap within their range


def test_edit_keeps_one_denoising_step():
    entry = Registry().get("builtin/tiny-sd")
    # default steps (2) * strength 0.3 < 1: steps are raised so that one step runs
    eng = to_engine(parse(EditRequest, {"prompt": "x", "strength": 0.3}), entry, seed=1, mode="edit", image_size=(64, 64))
    assert eng.steps * eng.strength >= 1
    # explicit steps that leave no step are refused, naming both values
    with pytest.raises(InvalidRequest) as info:
        to_engine(parse(EditRequest, {"prompt": "x", "strength": 0.3, "steps": 2}), entry, seed=1, mode="edit", image_size=(64, 64))
    assert "2 * 0.3" in info.value.message


@pytest.mark.parametrize("strength", [1e-8, 1e-300, 5e-324, 0.0099])
def test_a_tiny_strength_is_refused_instead_of_running_unbounded_steps(strength):
    """strength 1e-8 used to lay out 10^8 timesteps (7 s and +2.3 GB for one 64 px edit); 5e-324 overflowed."""
    entry = Registry().get("builtin/tiny-sd")
    with pytest.raises(InvalidRequest) as info:
        to_engine(parse(EditRequest, {"prompt": "x", "strength": strength}), entry, seed=1, mode="edit", image_size=(64, 64))
    assert info.value.param == "strength" and "0.01" in info.value.message and repr(strength) in info.value.message


def test_the_smallest_strength_runs_one_step_within_the_step_limit():
    entry = Registry().get("builtin/tiny-sd")
    eng = to_engine(parse(EditRequest, {"prompt": "x", "strength": 0.01}), entry, seed=1, mode="edit", image_size=(64, 64))
    assert eng.steps == 100 and int(eng.steps * eng.strength) == 1
