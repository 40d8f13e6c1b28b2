"""Creative controls in the engine, on the tiny float64 model and its tiny random adapters, ControlNets
and inpainting checkpoint: each control changes the image, images stay a function of their own
request (bit for bit: float64 on CPU), batches never mix control settings, memory is accounted."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.errors import InvalidRequest, UnknownAdapter, UnknownControlNet
from t2i_core.common.registry import TINY_SD_ID, Registry, load_registry_file
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine.core import Engine

SIDE = 64
INK, PASTEL, XL_INK, CANNY = "tiny-ink", "tiny-pastel", "tiny-xl-ink", "tiny-canny"
GRADIENT = np.tile(np.linspace(0, 255, SIDE, dtype=np.uint8)[None, :, None], (SIDE, 1, 3)).tobytes()
CHECKER = ((np.indices((SIDE, SIDE)).sum(0) // 8 % 2) * 255).astype(np.uint8).repeat(3).tobytes()
TOP_HALF = bytes([255] * (SIDE * SIDE // 2) + [0] * (SIDE * SIDE // 2))


def req(seed: int = 1, **kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt="a lighthouse", steps=2, guidance_scale=0.0, width=SIDE, height=SIDE, seed=seed)
    return EngineRequest(**{**base, **kw})


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).reshape(result.height, result.width, 3)


@pytest.fixture()
def fresh() -> Engine:
    """An engine of its own: adapters loaded by other tests must not be there."""
    return Engine(Settings.from_env())


def test_an_adapter_changes_the_image_and_its_weight_matters(engine):
    plain, ink, half = engine.run([req()]), engine.run([req(adapters=[(INK, 1.0)])]), engine.run([req(adapters=[(INK, 0.5)])])
    assert np.abs(pixels(plain[0]).astype(int) - pixels(ink[0])).max() > 5
    assert not np.array_equal(pixels(ink[0]), pixels(half[0]))


def test_an_image_with_adapter_a_is_the_same_whatever_else_was_served(fresh):
    """Alone on a fresh engine, after requests with adapter B, and in one engine call beside B and plain."""
    alone = pixels(fresh.run([req(seed=7, adapters=[(INK, 1.0)])])[0])
    plain_before = pixels(fresh.run([req(seed=7)])[0])
    fresh.run([req(seed=3, adapters=[(PASTEL, 0.8)]), req(seed=4, adapters=[(PASTEL, 0.8), (INK, 1.0)])])
    after_b = pixels(fresh.run([req(seed=7, adapters=[(INK, 1.0)])])[0])
    mixed = fresh.run([req(seed=3, adapters=[(PASTEL, 0.8)]), req(seed=7, adapters=[(INK, 1.0)]), req(seed=7),
                       req(seed=9, adapters=[(INK, 1.0)])])
    assert np.array_equal(alone, after_b)
    assert np.array_equal(alone, pixels(mixed[1]))
    # a plain image is the same with adapters loaded (they are switched off, never fused into the weights)
    assert np.array_equal(plain_before, pixels(mixed[2]))
    # batches never mix adapter sets: the two ink images shared a call, pastel and plain ran alone
    assert [r.batch_size for r in mixed] == [1, 2, 1, 2]


def test_adapters_count_against_the_memory_budget_and_are_evicted_least_recently_used():
    probe = Engine(Settings.from_env())
    model_bytes = probe.load(TINY_SD_ID).bytes
    probe.run([req(adapters=[(INK, 1.0)])])
    adapter_bytes = probe.models.used_bytes() - model_bytes
    assert adapter_bytes > 0
    assert next(a for a in probe.models.adapter_states() if a["id"] == INK)["bytes"] == adapter_bytes
    activations = probe.admission.last_plan.estimate.total  # what one 64 px image's call takes beside
    # room for the model, one adapter and the activations of one image only
    small = Engine(Settings(memory_budget_bytes=model_bytes + adapter_bytes * 3 // 2 + activations))
    first = pixels(small.run([req(seed=5, adapters=[(INK, 1.0)])])[0])
    small.run([req(seed=5, adapters=[(PASTEL, 1.0)])])
    assert f"adapter:{TINY_SD_ID}:{INK}" in small.models.evicted
    assert small.models.used_bytes() <= small.models.budget_bytes
    assert [a["state"] for a in small.models.adapter_states() if a["id"] in (INK, PASTEL)] == ["available", "loaded"]
    again = pixels(small.run([req(seed=5, adapters=[(INK, 1.0)])])[0])  # loaded again: the same image
    assert np.array_equal(first, again)


def test_switching_adapter_sets_is_counted_and_a_repeated_set_costs_nothing(fresh):
    fresh.run([req(adapters=[(INK, 1.0)])])
    before = fresh.stats()["adapter_switches"]
    fresh.run([req(adapters=[(INK, 1.0)])])
    assert fresh.stats()["adapter_switches"] == before
    fresh.run([req()])
    assert fresh.stats()["adapter_switches"] == before + 1


def test_inpainting_repaints_the_masked_area_in_batches(engine):
    edit = pixels(engine.run([req(mode="edit", image=GRADIENT, strength=1.0)])[0])
    out = engine.run([req(mode="inpaint", image=GRADIENT, strength=1.0, mask=TOP_HALF, seed=s) for s in (1, 2)])
    assert [r.batch_size for r in out] == [2, 2]
    first = pixels(out[0]).astype(int)
    assert not np.array_equal(first, edit)
    # the bottom half (mask black) stays close to the input; the top half is repainted
    source = np.frombuffer(GRADIENT, np.uint8).reshape(SIDE, SIDE, 3).astype(int)
    kept = np.abs(first[SIDE // 2 + 4:] - source[SIDE // 2 + 4:]).mean()
    repainted = np.abs(first[:SIDE // 2 - 4] - source[:SIDE // 2 - 4]).mean()
    assert kept < repainted
    assert engine.stats()["batch_sizes_by_kind"]["inpaint"]["max"] >= 2


def test_a_dedicated_inpainting_checkpoint_is_used_when_the_registry_names_one():
    file = load_registry_file()
    models = [m.model_copy(update={"inpainting": "builtin/tiny-sd-inpaint"}) if m.id == TINY_SD_ID else m for m in file.models]
    own = Engine(Settings.from_env(), Registry(models, default=TINY_SD_ID, adapters=file.adapters, controlnets=file.controlnets))
    built = pixels(Engine(Settings.from_env()).run([req(mode="inpaint", image=GRADIENT, strength=1.0, mask=TOP_HALF)])[0])
    result = own.run([req(mode="inpaint", image=GRADIENT, strength=1.0, mask=TOP_HALF)])[0]
    assert "builtin/tiny-sd-inpaint" in own.models.loaded_ids()
    assert not np.array_equal(pixels(result), built)
    # the checkpoint itself cannot make images without a mask: a clear 400
    refused = own.run([req(model="builtin/tiny-sd-inpaint")])[0]
    assert refused.error["code"] == "invalid_value" and "inpainting checkpoint" in refused.error["message"]


def test_controlnet_follows_its_control_image_per_item(engine):
    grad, check = (req(controlnet=CANNY, control_image=c) for c in (GRADIENT, CHECKER))
    alone = pixels(engine.run([grad])[0])
    both = engine.run([grad, check])
    assert [r.batch_size for r in both] == [2, 2]
    assert np.array_equal(alone, pixels(both[0]))  # float64: the batch-mate changes nothing
    assert np.abs(pixels(both[0]).astype(int) - pixels(both[1])).max() > 5
    # a conditioning scale of 0 adds nothing: the image without a ControlNet
    off = engine.run([req(controlnet=CANNY, control_image=CHECKER, control_scale=0.0), req()])
    assert np.array_equal(pixels(off[0]), pixels(off[1]))


def test_controlnet_with_image_to_image_and_inpainting(engine):
    out = engine.run([
        req(mode="edit", image=GRADIENT, strength=0.6, controlnet=CANNY, control_image=CHECKER),
        req(mode="edit", image=GRADIENT, strength=0.6),
        req(mode="inpaint", image=GRADIENT, strength=1.0, mask=TOP_HALF, controlnet=CANNY, control_image=CHECKER),
    ])
    assert not np.array_equal(pixels(out[0]), pixels(out[1]))
    pixels(out[2])
    assert "tiny-canny" in engine.stats()["loaded_controlnets"]


def test_controlnets_are_accounted_and_evicted():
    probe = Engine(Settings.from_env())
    model_bytes = probe.load(TINY_SD_ID).bytes
    probe.run([req(controlnet=CANNY, control_image=CHECKER)])
    controlnet_bytes = probe.models.used_bytes() - model_bytes
    activations = probe.admission.last_plan.estimate.total
    assert controlnet_bytes > 0
    # room for the model, the ControlNet and one image's activations, not for an adapter as well
    small = Engine(Settings(memory_budget_bytes=model_bytes + controlnet_bytes + activations))
    assert small.run([req(controlnet=CANNY, control_image=CHECKER)])[0].error is None
    small.run([req(adapters=[(INK, 1.0)])])  # the next request's adapter needs room: the idle ControlNet goes
    assert f"controlnet:{CANNY}" in small.models.evicted
    assert small.stats()["loaded_controlnets"] == []


def test_the_registry_refuses_unknown_and_ill_fitting_controls():
    reg = Registry()
    tiny = reg.get(TINY_SD_ID)
    with pytest.raises(UnknownAdapter, match="'nope' is not in the registry.*takes: tiny-ink, tiny-pastel"):
        reg.adapter("nope", tiny)
    with pytest.raises(UnknownAdapter, match="'tiny-xl-ink' is for sdxl models"):
        reg.adapter(XL_INK, tiny)
    with pytest.raises(UnknownControlNet, match="'tiny-xl-canny' is for sdxl models"):
        reg.controlnet("tiny-xl-canny", tiny)
    assert reg.adapter(INK, tiny).id == INK and reg.controlnet(CANNY, tiny).id == CANNY
    assert UnknownAdapter("x").status == UnknownControlNet("x").status == 400


def test_sdxl_takes_its_own_adapter_and_controlnet(engine):
    xl = dict(model="builtin/tiny-sdxl")
    out = engine.run([req(**xl), req(**xl, adapters=[(XL_INK, 1.0)]), req(**xl, controlnet="tiny-xl-canny", control_image=CHECKER)])
    plain, ink, control = (pixels(r) for r in out)
    assert not np.array_equal(plain, ink) and not np.array_equal(plain, control)


def test_the_registry_file_checks_control_entries(tmp_path):
    import json

    from t2i_core.common.registry import RegistryError

    from t2i_core.common.registry import DEFAULT_REGISTRY

    data = json.loads(DEFAULT_REGISTRY.read_text())
    data["adapters"].append(dict(data["adapters"][0]))
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RegistryError, match=f"adapters entry {len(data['adapters']) - 1} .*appears twice"):
        load_registry_file(path)
    data["adapters"].pop()
    data["models"][0]["inpainting"] = "missing"
    path.write_text(json.dumps(data))
    with pytest.raises(RegistryError, match="field inpainting must name a model"):
        load_registry_file(path)
    data["models"][0].pop("inpainting")
    data["controlnets"][0]["family"] = "sd3"
    path.write_text(json.dumps(data))
    with pytest.raises(RegistryError, match="family"):
        load_registry_file(path)


def test_request_fields_of_the_controls():
    from t2i_core.api.request_flow import parse
    from t2i_core.common.schemas import GenerateRequest

    ok = parse(GenerateRequest, {"prompt": "x", "adapters": "tiny-ink:0.5, tiny-pastel"})
    assert [(a.id, a.weight) for a in ok.adapters] == [(INK, 0.5), (PASTEL, None)]
    assert parse(GenerateRequest, {"prompt": "x", "adapters": {INK: 1}}).adapters[0].weight == 1.0
    for bad, words in [
        ({"adapters": ["a", "b", "c", "d", "e"]}, "at most 4 adapters; got 5"),
        ({"adapters": [{"id": INK, "weight": 9}]}, "adapters[0].weight must be between -4.0 and 4.0; got 9"),
        ({"adapters": [INK, INK]}, "names adapter 'tiny-ink' twice"),
        ({"controlnet": CANNY}, "control_image is required with controlnet 'tiny-canny'"),
        ({"control_image": "aGk="}, "control_image needs controlnet"),
        ({"controlnet": CANNY, "control_image": "aGk=", "control_guidance_start": 0.8, "control_guidance_end": 0.2},
         "control_guidance_end must be above control_guidance_start; got 0.2 and 0.8"),
        ({"controlnet_conditioning_scale": 5}, "controlnet_conditioning_scale must be at least 0.0 and at most 4.0; got 5"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            parse(GenerateRequest, {"prompt": "x", **bad})
        assert words in err.value.message


def test_a_control_window_emptied_by_a_default_is_a_400():
    """control_guidance_start 1.0 alone (end defaults to 1.0): refused when resolved, naming the field
    given, rather than failing inside the pipeline."""
    from t2i_core.api.request_flow import parse
    from t2i_core.common.schemas import GenerateRequest, to_engine

    registry = Registry()
    entry = registry.get(TINY_SD_ID)
    for given, value in (("control_guidance_start", 1.0), ("control_guidance_end", 0.0)):
        req = parse(GenerateRequest, {"prompt": "x", "controlnet": CANNY, "control_image": "aGk=", given: value})
        with pytest.raises(InvalidRequest, match="control_guidance_end must be above control_guidance_start") as err:
            to_engine(req, entry, seed=1, registry=registry)
        assert err.value.param == given and f"{given} given" in err.value.message
    ok = parse(GenerateRequest, {"prompt": "x", "controlnet": CANNY, "control_image": "aGk=", "control_guidance_start": 0.5})
    resolved = to_engine(ok, entry, seed=1, registry=registry)
    assert (resolved.control_start, resolved.control_end) == (0.5, 1.0)
